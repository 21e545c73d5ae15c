"""``/v1/messages`` over HTTP against `EchoGenerator` (it echoes the last user message word
by word). Bodies are checked by the anthropic SDK's own types, and streams by its own
accumulator, so a shape the SDK cannot read fails here (the SDK's transport is not httpx,
so the SDK itself runs against a real server in tests/e2e/test_anthropic_sdk.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message
from fastapi.testclient import TestClient

from inferline.server import ServerConfig, create_app
from tests.server.fakes import EchoGenerator

CALLS = 'Checking. <tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
TOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}}]


@pytest.fixture
def generator() -> EchoGenerator:
    return EchoGenerator(max_model_len=256)


def make_client(generator: EchoGenerator, **config: Any) -> TestClient:
    return TestClient(create_app(generator, ServerConfig(**config)))


@pytest.fixture
def client(generator: EchoGenerator):  # type: ignore[no-untyped-def]
    with make_client(generator) as c:
        yield c


def post(  # type: ignore[no-untyped-def]
    client: TestClient,
    text: str = "hello there",
    path: str = "/v1/messages",
    headers: dict[str, str] | None = None,
    **extra: Any,
):
    body = {"model": "echo", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    return client.post(path, json={**body, **extra}, headers=headers)


def events_of(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event; the name must be the data's type."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append((lines["event"], data))
    return events


def accumulated(events: list[tuple[str, dict[str, Any]]]) -> Any:
    snapshot, json_bufs = None, {}  # type: ignore[var-annotated]
    for name, data in events:
        if name not in ("ping", "error"):
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=json_bufs)  # type: ignore[arg-type]
    return snapshot


def test_a_message_is_the_sdks_message_with_usage(
    client: TestClient, generator: EchoGenerator
) -> None:
    generator.last_finish = "stop"
    response = post(client, system="Be brief.", metadata={"user_id": "u-7"}, temperature=0.2)
    assert response.status_code == 200, response.text
    reply = Message.model_validate(response.json())
    assert reply.id.startswith("msg_") and response.headers["x-request-id"] == reply.id
    assert [b.type for b in reply.content] == ["text"] and reply.content[0].text == "hello there"
    assert (reply.role, reply.model, reply.stop_reason) == ("assistant", "echo", "end_turn")
    assert reply.usage.output_tokens == 2 and reply.usage.input_tokens == 2
    assert reply.usage.cache_read_input_tokens == 0
    assert reply.usage.cache_creation_input_tokens == 0
    request = generator.requests[-1]
    assert request.messages == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]  # fmt: skip
    assert (request.user, request.params.temperature, request.params.max_tokens) == ("u-7", 0.2, 64)


def test_max_tokens_and_tool_use(client: TestClient, generator: EchoGenerator) -> None:
    assert post(client, max_tokens=1).json()["stop_reason"] == "max_tokens"
    generator.last_finish = "stop"
    reply = Message.model_validate(post(client, CALLS, tools=TOOLS).json())
    assert reply.stop_reason == "tool_use"
    assert [b.type for b in reply.content] == ["text", "tool_use"]
    call = reply.content[1]
    assert (
        call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    )


def test_a_stream_accumulates_to_the_same_message(
    client: TestClient, generator: EchoGenerator
) -> None:
    generator.last_finish = "stop"
    whole = post(client, CALLS, tools=TOOLS).json()
    response = post(client, CALLS, tools=TOOLS, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.text)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "[DONE]" not in response.text
    assert {"text_delta", "input_json_delta"} <= {
        data["delta"]["type"] for name, data in events if name == "content_block_delta"
    }
    final = accumulated(events)
    assert (
        final.stop_reason == "tool_use"
        and final.usage.output_tokens == whole["usage"]["output_tokens"]
    )
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[0].text.strip() == whole["content"][0]["text"].strip()
    assert final.content[1].input == {"city": "Paris"} and final.content[1].id.startswith("call")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
         "messages[0].content[0].type"),
        ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ],
)  # fmt: skip
def test_bad_bodies_are_anthropic_400s(
    client: TestClient, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "echo", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    body.update(extra)
    response = client.post("/v1/messages", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error"
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and param in error["message"]


def test_unknown_model_bad_key_and_overload(generator: EchoGenerator) -> None:
    with make_client(generator, api_keys=("s3cret",)) as client:
        response = post(client, model="nope")
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
        response = post(client, model="nope", headers={"x-api-key": "s3cret"})
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
        generator.overloaded = True
        response = post(client, headers={"x-api-key": "s3cret"})
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "overloaded_error"


def test_a_stream_that_fails_after_it_started_ends_with_an_error_event(
    client: TestClient, generator: EchoGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = generator._stream

    async def cut(*args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        async for output in original(*args, **kwargs):
            yield output
            raise RuntimeError("cut")

    monkeypatch.setattr(generator, "_stream", cut)
    events = events_of(post(client, "one two three", stream=True).text)
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "error"
    assert "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "api_error"


def test_count_tokens_estimates_without_a_local_tokenizer(client: TestClient) -> None:
    response = post(client, path="/v1/messages/count_tokens", system="Be brief.", tools=TOOLS)
    assert response.status_code == 200, response.text
    assert response.json()["input_tokens"] > 0
    assert response.headers["x-inferline-token-count"] == "estimate"
    assert post(client, path="/v1/messages/count_tokens", model="nope").status_code == 404


def test_count_tokens_asks_a_chat_tokenizer(generator: EchoGenerator) -> None:
    seen: list[Any] = []

    async def tokenize_chat(model: str, messages: list[Any], tools: Any) -> list[int]:
        seen.append((model, messages, tools))
        return [1, 2, 3]

    generator.tokenize_chat = tokenize_chat  # type: ignore[attr-defined]
    with make_client(generator) as client:
        response = post(client, path="/v1/messages/count_tokens", tools=TOOLS)
    assert response.json() == {"input_tokens": 3}
    assert response.headers["x-inferline-token-count"] == "exact"
    assert seen[0][0] == "echo" and seen[0][1] == [{"role": "user", "content": "hello there"}]
    assert seen[0][2][0]["function"]["name"] == "get_weather"


def test_the_openapi_document_lists_every_status_in_anthropics_shape(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    operation = document["paths"]["/v1/messages"]["post"]
    assert {"200", "400", "401", "403", "404", "413", "429", "500", "502", "503", "504"} <= set(
        operation["responses"]
    )
    schema = operation["responses"]["400"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["type", "error"]
    assert "/v1/messages/count_tokens" in document["paths"]
