"""Chat Completions details against a real `inferline serve` with the real ``openai`` SDK:
``logit_bias`` and ``min_tokens`` (local, and passed through a remote upstream: the server
is its own upstream, ``relay``), ``/tokenize`` and ``/detokenize``, and sampling defaults
from a real model directory's ``generation_config.json``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inferline.models import resolve_model_path
from tests.e2e.conftest import ServerProcess, free_port, start_server, stop_server

pytestmark = pytest.mark.e2e
YES_NO = [{"role": "user", "content": "Reply with one word, yes or no: is the sky blue?"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """``small`` (local SmolLM2) and ``relay``: the same server as a remote upstream."""
    directory = Path(tmp_path_factory.mktemp("details"))
    port = free_port()
    path = directory / "gateway.yaml"
    path.write_text(f"""models:
  - {{name: small, kind: llm, source: smollm2-135m, weight_format: int8}}
  - name: relay
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    model: small
    timeouts: {{connect_s: 2, first_token_s: 60, idle_s: 60, total_s: 120}}
""")
    running = start_server(directory, "--config", str(path), port=port)
    yield running
    stop_server(running)


@pytest.fixture
def client(gateway: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0) as c:
        yield c


def tokenize(server: ServerProcess, **body: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}/tokenize", json=body, timeout=30)


def ask(client: openai.OpenAI, model: str = "small", **fields: Any) -> Any:
    fields.setdefault("max_tokens", 6)
    return client.chat.completions.create(model=model, messages=YES_NO, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["small", "relay"])
def test_a_bias_of_100_makes_greedy_output_that_token(client, gateway, model) -> None:  # type: ignore[no-untyped-def]
    (hello,) = tokenize(gateway, model="small", prompt=" hello", add_special_tokens=False).json()[
        "tokens"
    ]
    plain = ask(client, model, temperature=0)
    assert "hello" not in plain.choices[0].message.content
    biased = ask(client, model, temperature=0, logit_bias={str(hello): 100})
    assert biased.choices[0].message.content == " hello" * 6
    banned = ask(client, model, temperature=0, logit_bias={str(hello): -100, "0": -100})
    assert banned.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("model", ["small", "relay"])
def test_min_tokens_keeps_a_short_answer_going(client, model) -> None:  # type: ignore[no-untyped-def]
    short = ask(client, model, temperature=0, max_tokens=60)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 10
    held = ask(client, model, temperature=0, max_tokens=60, extra_body={"min_tokens": 20})
    assert held.usage.completion_tokens >= 20


def test_structured_output_still_applies_with_a_bias(client, gateway) -> None:  # type: ignore[no-untyped-def]
    (hello,) = tokenize(gateway, prompt=" hello", add_special_tokens=False).json()["tokens"]
    reply = ask(
        client,
        temperature=0,
        max_tokens=30,
        logit_bias={str(hello): 100},
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_bad_values_are_400s_naming_the_field(client) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"logit_bias": {"not-a-token": 1}}, "logit_bias"),
        ({"logit_bias": {"10000000": 1}}, "logit_bias"),  # outside the vocabulary
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        ({"extra_body": {"min_tokens": 7}, "max_tokens": 6}, "min_tokens"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as info:
            ask(client, **fields)
        assert info.value.body["param"] == param, info.value.body  # type: ignore[index]


def test_tokenize_counts_what_generation_counts_and_detokenize_inverts(client, gateway) -> None:  # type: ignore[no-untyped-def]
    chat = tokenize(gateway, model="small", messages=YES_NO).json()
    assert chat["max_model_len"] == 8192 and chat["count"] == len(chat["tokens"])
    assert chat["count"] == ask(client, temperature=0, max_tokens=1).usage.prompt_tokens
    back = httpx.post(f"{gateway.base_url}/detokenize", json={"tokens": chat["tokens"]})
    assert back.json()["prompt"].startswith("<|im_start|>system\n")
    assert back.json()["prompt"].endswith("<|im_start|>assistant\n")
    text = tokenize(gateway, prompt="Hello world").json()
    assert text["count"] == 2 and text["tokens"] == [19556, 905]


def test_tokenize_on_a_remote_model_or_unknown_one(gateway) -> None:  # type: ignore[no-untyped-def]
    remote = tokenize(gateway, model="relay", prompt="hi")
    assert remote.status_code == 400 and remote.json()["error"]["param"] == "model"
    assert "remote" in remote.json()["error"]["message"]
    assert tokenize(gateway, model="nope", prompt="hi").status_code == 404
    spec = httpx.get(f"{gateway.base_url}/openapi.json").json()["paths"]
    assert {"400", "403", "404"} <= set(spec["/tokenize"]["post"]["responses"])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, cache_dir) -> Path:  # type: ignore[no-untyped-def]
    """SmolLM2 as a Hugging Face directory; its own generation_config.json (written by
    transformers from the checkpoint) has no sampling values, so some are added: top_k 1
    makes a request that leaves the sampling fields out greedy."""
    from tests.models.hf_reference import load_reference, save_as_hf_directory

    directory = Path(tmp_path_factory.mktemp("smollm2-hf"))
    save_as_hf_directory(load_reference(resolve_model_path("smollm2-135m", cache_dir)), directory)
    config_path = directory / "generation_config.json"
    generation = json.loads(config_path.read_text())
    assert not {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"} & set(generation)
    config_path.write_text(json.dumps({**generation, "top_k": 1, "temperature": 0.7}))
    return directory


def test_sampling_defaults_come_from_the_models_generation_config(model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(tmp_path, "--model", str(model_dir), "--weight-format", "int8")
    try:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0) as c:
            model = c.models.list().data[0].id
            prompt = "Once upon a time"

            def text(**fields: Any) -> str:
                out = c.completions.create(model=model, prompt=prompt, max_tokens=12, **fields)
                return out.choices[0].text

            greedy = text(temperature=0)
            assert [text(seed=s) for s in range(3)] == [greedy] * 3  # top_k 1 from the model
            free = {text(seed=s, extra_body={"top_k": -1}) for s in range(4)}  # the request wins
            assert len(free) > 1
    finally:
        stop_server(server)
