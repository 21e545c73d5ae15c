"""The HTTP layer against `EchoGenerator`: shapes, errors, auth, limits, health, metrics."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from inferline.server import ServerConfig, create_app
from tests.server.fakes import EchoGenerator

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "one two three four"}]}


@pytest.fixture
def generator() -> EchoGenerator:
    return EchoGenerator()


def make_client(generator: EchoGenerator, **config) -> TestClient:  # type: ignore[no-untyped-def]
    app = create_app(generator, ServerConfig(**config))
    return TestClient(app)


@pytest.fixture
def client(generator):  # type: ignore[no-untyped-def]
    with make_client(generator) as c:
        yield c


def assert_error(response, status: int, param: str | None = None, code: str | None = None) -> dict:  # type: ignore[no-untyped-def, type-arg]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def test_chat_completion_shape_and_usage(client) -> None:  # type: ignore[no-untyped-def]
    body = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3}).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "one two three",
    }  # tool_calls omitted, not [], without calls (as OpenAI does)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 3


def test_stream_has_role_content_finish_usage_done(client) -> None:  # type: ignore[no-untyped-def]
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "one two three four"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


def test_completions_with_several_prompts_and_n(client) -> None:  # type: ignore[no-untyped-def]
    payload = {"model": "echo", "prompt": ["a b", "c d e"], "n": 2, "max_tokens": 5}
    body = client.post("/v1/completions", json=payload).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [c["text"] for c in body["choices"]] == ["a b", "a b", "c d e", "c d e"]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "top_p": 0}, "top_p"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "max_tokens": "ten"}, "max_tokens"),
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({**CHAT, "presence_penalty": -3}, "presence_penalty"),
        ({**CHAT, "top_logprobs": 3}, "top_logprobs"),
        ({**CHAT, "response_format": {"type": "xml"}}, "response_format.type"),
        (
            {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({**CHAT, "guided_choice": ["a"], "guided_regex": "a+"}, "guided_choice"),
        ({**CHAT, "guided_choice": []}, "guided_choice"),
        ({"messages": CHAT["messages"]}, "model"),
    ],
)
def test_bad_values_are_400_naming_the_field(client, payload, param) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.post("/v1/chat/completions", json=payload), 400, param=param)


def test_unknown_fields_are_ignored(client) -> None:  # type: ignore[no-untyped-def]
    payload = {**CHAT, "metadata": {"a": "1"}, "store": False, "service_tier": "auto"}
    assert client.post("/v1/chat/completions", json=payload).status_code == 200


def test_malformed_json_and_non_object_bodies(client) -> None:  # type: ignore[no-untyped-def]
    headers = {"content-type": "application/json"}
    error = assert_error(
        client.post("/v1/chat/completions", content=b"{nope", headers=headers), 400
    )
    assert "parse the JSON body" in error["message"]
    assert_error(client.post("/v1/chat/completions", content=b"[1, 2]", headers=headers), 400)


def test_unknown_model_is_404(client) -> None:  # type: ignore[no-untyped-def]
    assert_error(
        client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}),
        404,
        "model",
        "model_not_found",
    )
    assert_error(client.get("/v1/models/gpt-9"), 404, "model")
    assert client.get("/v1/models/echo").json()["id"] == "echo"


def test_context_overflow_is_400_with_both_numbers(client) -> None:  # type: ignore[no-untyped-def]
    error = assert_error(
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100}),
        400,
        code="context_length_exceeded",
    )
    assert "64" in error["message"] and "104" in error["message"]


def test_body_over_the_limit_is_413(generator) -> None:  # type: ignore[no-untyped-def]
    with make_client(generator, max_body_bytes=2048) as client:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
        assert_error(client.post("/v1/chat/completions", json=big), 413)

        def chunked():  # type: ignore[no-untyped-def]
            yield json.dumps(big).encode()

        response = client.post(
            "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}
        )
        assert_error(response, 413)


def test_overload_is_503_with_retry_after(client, generator) -> None:  # type: ignore[no-untyped-def]
    generator.overloaded = True
    response = client.post("/v1/chat/completions", json=CHAT)
    assert_error(response, 503, code="overloaded")
    assert response.headers["retry-after"] == "3"


def test_api_key_required_except_health(generator) -> None:  # type: ignore[no-untyped-def]
    with make_client(generator, api_keys=("s3cret",)) as client:
        assert_error(client.get("/v1/models"), 401, code="invalid_api_key")
        assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert_error(client.get("/metrics"), 401)
        assert (
            client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
        assert client.get("/health").status_code == 200


def test_cors_is_off_unless_configured(generator) -> None:  # type: ignore[no-untyped-def]
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with make_client(generator) as client:
        response = client.options("/v1/chat/completions", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with make_client(generator, cors_origins=("https://app.example",)) as client:
        response = client.options("/v1/chat/completions", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"


def test_health_and_ready_follow_the_generator(client, generator) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/health").json() == {"status": "ok", "reason": "ok"}
    assert client.get("/ready").status_code == 200
    generator.dead = True
    assert client.get("/health").status_code == 503
    assert client.get("/ready").status_code == 503
    assert_error(client.post("/v1/chat/completions", json=CHAT), 503, code="engine_dead")


def test_unknown_route_is_an_openai_shaped_404(client) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.get("/v1/nothing-here"), 404)


def test_metrics_count_tokens_and_statuses(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    client.post("/v1/chat/completions", json={**CHAT, "temperature": 9})
    text = client.get("/metrics").text
    assert 'inferline:generation_tokens_total{model_name="echo"} 2.0' in text
    assert (
        'inferline:http_requests_total{route="/v1/chat/completions",status_code="400"} 1.0' in text
    )
    assert "inferline:time_to_first_token_seconds_count" in text
    assert "inferline:num_requests_running" in text and "inferline:prefix_cache_hits" in text
    assert "inferline:spec_decode_num_accepted_tokens_total" in text


def test_openapi_spec_lists_the_endpoints(client) -> None:  # type: ignore[no-untyped-def]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(paths)


def test_draining_refuses_new_requests_with_503(client) -> None:  # type: ignore[no-untyped-def]
    client.app.state.inferline.is_draining = True
    response = client.post("/v1/chat/completions", json=CHAT)
    assert_error(response, 503, code="shutting_down")
    assert response.headers["retry-after"] == "5"
    assert client.get("/ready").status_code == 503
    assert client.get("/health").status_code == 200  # alive, just not admitting
