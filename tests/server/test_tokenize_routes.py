"""``/tokenize`` and ``/detokenize`` over HTTP (the echo generator tokenizes one id per word),
their statuses in ``/openapi.json``, a key's routes, and the 400s of ``logit_bias`` and
``min_tokens`` on the generation routes."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from inferline.server import ServerConfig, create_app
from tests.router.fakes import ScriptedGenerator
from tests.server.fakes import EchoGenerator
from tests.server.test_app import assert_error
from tests.server.test_tenants_app import make_key, setup  # noqa: F401  (a fixture)

MESSAGES = [{"role": "user", "content": "one two three"}]
app = create_app(EchoGenerator(), ServerConfig())


@pytest.fixture
def client() -> Any:
    with TestClient(app) as c:
        yield c


def test_tokenize_a_prompt_or_messages_and_back(client: TestClient) -> None:
    body = client.post("/tokenize", json={"model": "echo", "prompt": "a bb ccc"}).json()
    assert body == {"count": 3, "max_model_len": 64, "tokens": [1, 2, 3]}
    chat = client.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False})
    assert chat.json()["tokens"] == [3, 3, 5]  # the default model; the last message echoed
    back = client.post("/detokenize", json={"model": "echo", "tokens": [1, 3]})
    assert back.json() == {"prompt": "x xxx"}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/tokenize", {"model": "echo"}, 400, "messages"),
        ("/tokenize", {"prompt": "a", "messages": MESSAGES}, 400, "messages"),
        ("/tokenize", {"prompt": "a", "model": "nope"}, 404, "model"),
        ("/tokenize", {"messages": []}, 400, "messages"),
        ("/detokenize", {"tokens": [-1]}, 400, "tokens[0]"),
        ("/detokenize", {"tokens": "abc"}, 400, "tokens"),
        ("/detokenize", {"tokens": [1], "model": "nope"}, 404, "model"),
    ],
)
def test_bad_requests_name_the_field(
    client: TestClient, path: str, body: dict[str, Any], status: int, param: str
) -> None:
    assert_error(client.post(path, json=body), status, param)


def test_a_generator_that_cannot_tokenize_is_a_400_naming_model() -> None:
    with TestClient(create_app(ScriptedGenerator("remote"), ServerConfig())) as client:
        response = client.post("/tokenize", json={"prompt": "hi"})
        assert_error(response, 400, "model", "model_cannot_tokenize")
        assert_error(client.post("/detokenize", json={"tokens": [1]}), 400, "model")


def test_a_key_may_tokenize_only_on_its_routes(setup: Any) -> None:  # noqa: F811
    client = setup["client"]
    _, secret = make_key(client, routes=["bot"])
    headers = {"authorization": f"Bearer {secret}"}
    refused = client.post("/tokenize", json={"model": "other", "prompt": "hi"}, headers=headers)
    assert_error(refused, 403, "model")
    assert client.post("/tokenize", json={"model": "bot", "prompt": "hi"}).status_code == 401
    # allowed, but these scripted targets cannot tokenize: the 400, not a 500
    allowed = client.post("/tokenize", json={"model": "bot", "prompt": "hi"}, headers=headers)
    assert_error(allowed, 400, "model")


def test_the_document_lists_every_status() -> None:
    with TestClient(app) as client:
        paths = client.get("/openapi.json").json()["paths"]
    # tests/server/test_fuzz_openapi.py fuzzes every operation of this document, these too
    for path in ("/tokenize", "/detokenize"):
        assert {"200", "400", "401", "403", "404", "413", "500"} <= set(
            paths[path]["post"]["responses"]
        )


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"min_tokens": 4, "max_tokens": 3}, "min_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
    ],
)
def test_bias_and_min_tokens_errors_are_400s(
    client: TestClient, fields: dict[str, Any], param: str
) -> None:
    for path, body in (
        ("/v1/chat/completions", {"model": "echo", "messages": MESSAGES}),
        ("/v1/completions", {"model": "echo", "prompt": "a b"}),
    ):
        assert_error(client.post(path, json={**body, **fields}), 400, param)
