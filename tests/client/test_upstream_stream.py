"""`UpstreamClient` streams against a local scripted upstream
(`tests.client.scripted_upstream`): what is sent, what comes back, each way a stream
fails, and the deadlines."""

from __future__ import annotations

import time
from typing import Any

import pytest

from inferline.client import UpstreamClient, UpstreamTimeouts
from inferline.core import (
    ContentFilteredError,
    DeadlineExceededError,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
    StreamInterruptedError,
    UnknownModelError,
    UpstreamConfigError,
    UpstreamTimeoutError,
)
from tests.client.scripted_upstream import (
    DONE,
    HELLO,
    HOST,
    KEY,
    USAGE,
    Script,
    Step,
    Upstream,
    chat,
    chunk,
    collect,
    event,
    outputs_of,
    resolver_for,
    run,
)


def stream_error(
    steps: list[Step], request: GenerationRequest | None = None, **fields: Any
) -> Exception:
    """The error the stream raises (after `submit` succeeded), within 2 s; the response is
    closed by then (the upstream sees it go). ``fields`` go to the `UpstreamConfig`."""
    script = Script(steps)

    async def scenario(client: UpstreamClient, upstream: Upstream) -> Exception:
        stream = await client.submit(request or chat())
        try:
            async for _ in stream:
                pass
        except Exception as exc:
            assert client.stats()["gpt"].num_running == 0
            assert await script.wait_all_ended()
            return exc
        raise AssertionError("the stream ended without an error")

    started = time.monotonic()
    error = run(script, scenario, **fields)
    assert time.monotonic() - started < 2
    return error


async def outputs_and_upstream(
    client: UpstreamClient, upstream: Upstream, request: GenerationRequest | None = None
) -> tuple[list[RequestOutput], Upstream]:
    outputs = await collect(client, request or chat())
    assert client.stats()["gpt"].num_running == 0
    return outputs, upstream


def test_chat_stream_outputs_and_what_was_sent() -> None:
    before = time.time()
    request = chat(params=SamplingParams(max_tokens=4))
    outputs, upstream = run(Script(HELLO), lambda c, u: outputs_and_upstream(c, u, request))
    assert [o.outputs[0].text_delta for o in outputs] == ["Hel", "lo", "", ""]
    final = outputs[-1]
    assert final.finished and not any(o.finished for o in outputs[:-1])
    assert final.outputs[0].text == "Hello" and final.outputs[0].finish_reason == "stop"
    assert final.outputs[0].num_tokens == 2 and final.num_prompt_tokens == 11
    assert final.metrics.num_cached_prompt_tokens == 8 and final.prompt_token_ids == []
    assert final.model == "gpt" and final.request_id == "req-1"
    metrics = final.metrics
    assert (
        metrics.first_token_s is not None and before <= metrics.arrival_s <= metrics.first_token_s
    )
    [seen] = upstream.requests
    assert (seen.method, seen.path, seen.host.split(":")[0]) == (
        "POST",
        "/v1/chat/completions",
        HOST,
    )
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["accept"] == "text/event-stream"
    assert seen.headers["content-type"] == "application/json"
    assert "cookie" not in seen.headers
    sent = upstream.sent()
    assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 4
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_completions_go_to_completions() -> None:
    steps: list[Step] = [
        event({"choices": [{"index": 0, "text": " a time", "finish_reason": "length"}]}),
        DONE,
    ]
    request = GenerationRequest("r", prompt="Once upon")
    outputs, upstream = run(Script(steps), lambda c, u: outputs_and_upstream(c, u, request))
    assert upstream.requests[0].path == "/v1/completions"
    assert upstream.sent()["prompt"] == "Once upon" and outputs[-1].prompt == "Once upon"
    assert outputs[-1].outputs[0].finish_reason == "length"


def test_streamed_tool_calls() -> None:
    start = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    steps: list[Step] = [
        chunk(tool_calls=[start]),
        chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"a": 1}'}}]),
        chunk(finish="tool_calls"),
        DONE,
    ]
    outputs = outputs_of(Script(steps))
    [call] = outputs[-1].outputs[0].tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "f", '{"a": 1}')
    assert outputs[0].outputs[0].tool_call_deltas[0].name == "f"


def test_continuation_is_sent_only_where_it_can_be() -> None:
    _, upstream = run(
        Script(HELLO), lambda c, u: outputs_and_upstream(c, u, chat(assistant_prefix="Hel"))
    )
    sent = upstream.sent()
    assert sent["messages"][-1] == {"role": "assistant", "content": "Hel"}
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False

    async def refused(client: UpstreamClient, upstream: Upstream) -> Upstream:
        with pytest.raises(UpstreamConfigError) as info:  # another target may continue it
            await client.submit(chat(assistant_prefix="Hel"))
        assert info.value.code == "cannot_continue" and info.value.param == "assistant_prefix"
        return upstream

    assert run(Script(HELLO), refused, can_continue=False).requests == []


def test_a_request_cannot_change_the_host() -> None:
    sneaky = chat(user="https://evil.test/v1", metadata={"base_url": "https://evil.test"})
    resolver = resolver_for("evil.test")

    async def scenario(client: UpstreamClient, upstream: Upstream) -> Upstream:
        await collect(client, sneaky)
        with pytest.raises(UnknownModelError):
            await client.submit(chat(model="https://evil.test/v1"))
        await collect(client, chat(request_id="req-2", model="gpt"))
        return upstream

    upstream = run(Script(HELLO), scenario, resolver)
    assert [(r.path, r.host.split(":")[0]) for r in upstream.requests] == [
        ("/v1/chat/completions", HOST)
    ] * 2
    assert set(resolver.asked) == {HOST}


def test_an_answer_complete_without_done_finishes() -> None:
    outputs = outputs_of(Script([chunk("Hi"), chunk(finish="stop"), USAGE]))
    assert outputs[-1].finished and outputs[-1].outputs[0].text == "Hi"


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ([chunk("Hi")], "missing_done"),
        ([chunk("Hi"), b"data: {not json\n\n"], "malformed_chunk"),
        ([chunk("Hi"), event({"id": "x", "choices": "many"})], "malformed_chunk"),
        ([chunk("Hi"), b"data: \xff\xfe\n\n"], "malformed_chunk"),
        ([chunk("Hi"), event({"error": {"message": "engine died"}})], "upstream_error_event"),
        ([chunk("Hi"), b"event: error\ndata: overloaded\n\n"], "upstream_error_event"),
        ([chunk("Hi"), 1.0, chunk("late")], "stream_stalled"),
        ([chunk("Hi")] + [b": keep-alive\n\n", 0.1] * 10, "stream_stalled"),
    ],
)
def test_stream_errors(steps: list[Step], code: str) -> None:
    error = stream_error(steps)
    assert isinstance(error, StreamInterruptedError) and error.code == code
    assert error.target == "gpt" and error.retryable
    if code == "upstream_error_event":
        assert "engine died" in error.message or "overloaded" in error.message


def test_a_stall_ends_the_stream_in_time() -> None:
    """The idle deadline, earlier than the first token's, is kept (the timer moves)."""
    timeouts = UpstreamTimeouts(first_token_s=1.5, idle_s=0.2, total_s=3.0)
    started = time.monotonic()
    steps: list[Step] = [chunk("", role="assistant"), 0.05, chunk("Hi"), 0.05, chunk("!"), 1.8]
    error = stream_error(steps, timeouts=timeouts)
    assert isinstance(error, StreamInterruptedError) and error.code == "stream_stalled"
    assert 0.25 <= time.monotonic() - started < 1.0  # idle_s after the last event, not 1.5


def test_total_timeout() -> None:
    steps: list[Step] = [*[chunk("a"), 0.1] * 6, DONE]  # events keep coming, too long
    with pytest.raises(StreamInterruptedError) as info:
        outputs_of(Script(steps), timeouts=UpstreamTimeouts(total_s=0.35, idle_s=0.3))
    assert info.value.code == "total_timeout"
    slow_start: list[Step] = [chunk("", role="assistant"), 1.0, chunk("a")]
    with pytest.raises(UpstreamTimeoutError) as timeout:  # nothing received: a timeout
        outputs_of(Script(slow_start), timeouts=UpstreamTimeouts(total_s=0.3))
    assert timeout.value.code == "total_timeout"


def test_no_content_within_the_first_token_timeout_after_the_status() -> None:
    error = stream_error([chunk("", role="assistant"), 1.5, chunk("late")])
    assert isinstance(error, UpstreamTimeoutError) and error.code == "first_token_timeout"


def test_the_request_deadline_applies() -> None:
    error = stream_error([chunk("a"), 0.2, chunk("b"), 1.5], chat(deadline=time.monotonic() + 0.3))
    assert isinstance(error, DeadlineExceededError)


def test_content_filter_on_a_200() -> None:
    error = stream_error([chunk("", role="assistant"), chunk(finish="content_filter"), DONE])
    assert isinstance(error, ContentFilteredError) and error.target == "gpt"


def test_mid_stream_messages_are_redacted() -> None:
    error = stream_error([chunk("Hi"), event({"error": {"message": f"bad key {KEY}"}})])
    assert KEY not in str(error) and "bad key ***" in str(error)
