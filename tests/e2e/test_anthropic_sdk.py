"""The Messages API through the real `anthropic` SDK against a real `inferline serve`
process: the local SmolLM2 and our fault-injecting upstream behind a fallback route, with
an API key configured.

Tool calls are forced (``tool_choice``) so the round trip is deterministic on a 135M model;
the engine's grammar keeps the call's ``input`` valid for its schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e
KEY = "e2e-anthropic-key"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: Any = [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER}]
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
# the SDK has no sampling fields any more; older clients send them, and so does extra_body
GREEDY: Any = {"temperature": 0}


@pytest.fixture(scope="module")
def server(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[ServerProcess]:
    directory = Path(tmp_path_factory.mktemp("anthropic"))
    path = directory / "gateway.yaml"
    path.write_text(f"""models:
  - {{name: local, kind: llm, source: smollm2-135m, weight_format: int8}}
  - {{name: up, kind: openai, base_url: "{upstream.api_base}", model: up}}
routes:
  - {{name: main, targets: [up, local]}}
  - {{name: remote, targets: [up], retry: {{attempts: 1}}}}
""")
    running = start_server(directory, "--config", str(path), "--api-key", KEY)
    yield running
    stop_server(running)


@pytest.fixture
def client(server: ServerProcess, upstream: FakeUpstreamHandle) -> Iterator[anthropic.Anthropic]:
    upstream.reset()
    with anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


def test_create_with_usage_and_prefix_cache_reads(client: anthropic.Anthropic) -> None:
    ask: Any = {"model": "local", "max_tokens": 24, "messages": ASK, "system": "Be brief.",
                "extra_body": GREEDY}  # fmt: skip
    first = client.messages.create(**ask)
    assert first.id.startswith("msg_") and first.type == "message" and first.role == "assistant"
    assert first.model == "local" and first.stop_reason in ("end_turn", "max_tokens")
    assert first.content[0].type == "text" and first.content[0].text.strip()
    assert first.usage.input_tokens > 5 and 0 < first.usage.output_tokens <= 24
    again = client.messages.create(**ask)
    assert again.content[0].text == first.content[0].text  # temperature 0
    assert again.usage.cache_read_input_tokens and again.usage.cache_read_input_tokens > 0
    total = again.usage.input_tokens + again.usage.cache_read_input_tokens
    assert total == first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)


def test_stop_sequences_are_reported(client: anthropic.Anthropic) -> None:
    ask: Any = {"model": "local", "max_tokens": 32, "messages": ASK, "extra_body": GREEDY}
    text = client.messages.create(**ask).content[0].text
    words = text.split()
    assert len(words) > 3, text
    stop = words[3]
    reply = client.messages.create(**ask, stop_sequences=["@@never@@", stop])
    assert (reply.stop_reason, reply.stop_sequence) == ("stop_sequence", stop)
    assert reply.content[0].text == text[: text.index(stop)]


def test_stream_text_and_final_message(client: anthropic.Anthropic) -> None:
    ask: Any = {"model": "local", "max_tokens": 24, "messages": ASK, "extra_body": GREEDY}
    whole = client.messages.create(**ask)
    with client.messages.stream(**ask) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == whole.content[0].text
    assert final.content[0].type == "text" and final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_a_tool_use_round_trip_through_a_fallback_route(
    client: anthropic.Anthropic, upstream: FakeUpstreamHandle
) -> None:
    upstream.script("up", {"kind": "status", "status": 503, "times": None})
    raw = client.messages.with_raw_response.create(
        model="main", max_tokens=64, extra_body=GREEDY, messages=ASK, tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"},
    )  # fmt: skip
    assert raw.headers["x-inferline-target"] == "local"  # the upstream failed first
    assert raw.headers["x-inferline-fallback-reason"]
    call_message = raw.parse()
    assert call_message.stop_reason == "tool_use" and call_message.model == "local"
    call = next(block for block in call_message.content if block.type == "tool_use")
    assert call.name == "get_weather"
    jsonschema.validate(call.input, WEATHER)
    conversation: Any = [
        *ASK,
        {"role": "assistant", "content": call_message.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 degrees."}
        ]},
    ]  # fmt: skip
    with client.messages.stream(
        model="main", max_tokens=48, extra_body=GREEDY, messages=conversation, tools=TOOLS,
        tool_choice={"type": "none"},
    ) as stream:  # fmt: skip
        answer = stream.get_final_message()
    assert answer.stop_reason in ("end_turn", "max_tokens") and answer.model == "local"
    assert [block.type for block in answer.content] == ["text"]
    assert answer.content[0].text.strip()


def test_a_forced_call_streams_as_input_json_deltas(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="local", max_tokens=64, extra_body=GREEDY, messages=ASK, tools=TOOLS,
        tool_choice={"type": "any"},
    ) as stream:  # fmt: skip
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds and final.stop_reason == "tool_use"
    call = final.content[-1]
    assert call.type == "tool_use" and call.id
    jsonschema.validate(call.input, WEATHER)


def test_a_stream_cut_after_it_started_raises_the_error_event(
    client: anthropic.Anthropic, upstream: FakeUpstreamHandle
) -> None:
    upstream.script("up", {"kind": "cut", "after": 5})
    stream = client.messages.stream(model="remote", max_tokens=60, messages=ASK)
    with pytest.raises(anthropic.APIStatusError) as info, stream as events:
        for _ in events.text_stream:
            pass
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_errors_are_the_sdks_error_classes(server: ServerProcess) -> None:
    bad = anthropic.Anthropic(base_url=server.base_url, api_key="wrong", max_retries=0)
    with bad, pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="local", max_tokens=8, messages=ASK)
    with anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0) as sdk:
        with pytest.raises(anthropic.NotFoundError) as missing:
            sdk.messages.create(model="no-such-model", max_tokens=8, messages=ASK)
        assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
            sdk.post("/v1/messages", cast_to=anthropic.types.Message,
                     body={"model": "local", "messages": ASK})  # fmt: skip
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}}  # fmt: skip
        with pytest.raises(anthropic.BadRequestError, match=r"messages\[0\]\.content\[0\]"):
            sdk.messages.create(model="local", max_tokens=8,
                                messages=[{"role": "user", "content": [image]}])  # fmt: skip


def test_count_tokens_on_the_local_model(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model="local", messages=ASK, system="Be brief.")
    reply = client.messages.create(
        model="local", max_tokens=4, extra_body=GREEDY, messages=ASK, system="Be brief."
    )
    assert counted.input_tokens == reply.usage.input_tokens + (
        reply.usage.cache_read_input_tokens or 0
    )


@pytest.mark.slow
def test_a_tool_use_round_trip_on_qwen(qwen_server: ServerProcess) -> None:
    """Qwen2.5-Coder renders the tools with its own template (SmolLM2 gets the fallback)."""
    with anthropic.Anthropic(base_url=qwen_server.base_url, api_key="x", max_retries=0) as sdk:
        first = sdk.messages.create(
            model="qwen2.5-coder-0.5b", max_tokens=64, messages=ASK, tools=TOOLS,
            tool_choice={"type": "any"}, extra_body=GREEDY,
        )  # fmt: skip
        assert first.stop_reason == "tool_use"
        call = next(block for block in first.content if block.type == "tool_use")
        jsonschema.validate(call.input, WEATHER)
        result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 C."}
        conversation: Any = [*ASK, {"role": "assistant", "content": first.content},
                             {"role": "user", "content": [result]}]  # fmt: skip
        answer = sdk.messages.create(
            model="qwen2.5-coder-0.5b", max_tokens=48, messages=conversation, tools=TOOLS,
            extra_body=GREEDY,
        )  # fmt: skip
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert answer.content[0].type == "text" and answer.content[0].text.strip()


def test_a_prefilled_answer_holds_only_the_new_text(client: anthropic.Anthropic) -> None:
    turns: Any = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is"},
    ]
    reply = client.messages.create(model="local", max_tokens=8, messages=turns, extra_body=GREEDY)
    text = reply.content[0].text
    assert "Paris" in text and "capital of France" not in text, text
