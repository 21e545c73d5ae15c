"""`UpstreamClient` streams against `httpx.MockTransport`: what is sent, what comes back,
deadlines, abort, shutdown, embeddings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from inferline.client import UpstreamClient, UpstreamConfig, UpstreamTimeouts
from inferline.core import (
    ContentFilteredError,
    DeadlineExceededError,
    GenerationRequest,
    InvalidParameterError,
    RateLimitedError,
    RequestOutput,
    SamplingParams,
    StreamInterruptedError,
    UnknownModelError,
    UpstreamConfigError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

KEY = "sk-test-SECRET-0123456789abcdef"
TIMEOUTS = UpstreamTimeouts(connect_s=0.5, first_token_s=0.5, idle_s=0.3, total_s=2.0)
Step = bytes | float  # bytes to send, or seconds to wait


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    fields = {"content": content} if content is not None else {}
    choice = {"index": 0, "delta": {**fields, **delta}, "finish_reason": finish}
    return event({"object": "chat.completion.chunk", "choices": [choice]})


def event(data: Any) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


USAGE = event(
    {
        "choices": [],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 8},
        },
    }
)
DONE = event("[DONE]")
HELLO = [chunk("", role="assistant"), chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE, DONE]


class Body(httpx.AsyncByteStream):
    """A scripted response body; records whether the client closed it."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps, self.is_closed = steps, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for step in self.steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    yield step
        finally:
            self.is_closed = True

    async def aclose(self) -> None:
        self.is_closed = True


class Upstream:
    """A mock upstream answering every request with ``steps`` (recorded in ``requests``)."""

    def __init__(self, steps: list[Step], status: int = 200) -> None:
        self.steps, self.status = steps, status
        self.requests: list[httpx.Request] = []
        self.bodies: list[Body] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(Body(self.steps))
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(self.status, headers=headers, stream=self.bodies[-1])

    def sent(self, i: int = -1) -> dict[str, Any]:
        return json.loads(self.requests[i].content)  # type: ignore[no-any-return]


def make_client(upstream: Callable[[httpx.Request], Awaitable[httpx.Response]]) -> UpstreamClient:
    config = UpstreamConfig(
        "gpt", "https://upstream.test/v1", model="gpt-4o-mini", api_key=KEY, timeouts=TIMEOUTS
    )
    return UpstreamClient(config, transport=httpx.MockTransport(upstream))


def chat(request_id: str = "req-1", **fields: Any) -> GenerationRequest:
    return GenerationRequest(request_id, messages=[{"role": "user", "content": "hi"}], **fields)


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 5))


async def collect(client: UpstreamClient, request: GenerationRequest) -> list[RequestOutput]:
    return [output async for output in await client.submit(request)]


def stream_error(steps: list[Step], request: GenerationRequest | None = None) -> Exception:
    """The error the stream raises (after `submit` succeeded), within 2 s."""

    async def scenario() -> Exception:
        upstream = Upstream(steps)
        client = make_client(upstream)
        stream = await client.submit(request or chat())
        try:
            async for _ in stream:
                pass
        except Exception as exc:
            assert client.stats()["gpt"].num_running == 0
            assert all(body.is_closed for body in upstream.bodies)
            return exc
        raise AssertionError("the stream ended without an error")

    started = time.monotonic()
    error = run(scenario)
    assert time.monotonic() - started < 2
    return error


def test_chat_stream_outputs_and_what_was_sent() -> None:
    upstream = Upstream(HELLO)
    client = make_client(upstream)
    before = time.time()
    outputs = run(lambda: collect(client, chat(params=SamplingParams(max_tokens=4))))
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
    request = upstream.requests[0]
    assert str(request.url) == "https://upstream.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    sent = upstream.sent()
    assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 4
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert client.stats()["gpt"].num_running == 0


def test_completions_go_to_completions() -> None:
    steps: list[Step] = [
        event({"choices": [{"index": 0, "text": " a time", "finish_reason": "length"}]}),
        DONE,
    ]
    upstream = Upstream(steps)
    client = make_client(upstream)
    outputs = run(lambda: collect(client, GenerationRequest("r", prompt="Once upon")))
    assert upstream.requests[0].url.path == "/v1/completions"
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
    outputs = run(lambda: collect(make_client(Upstream(steps)), chat()))
    [call] = outputs[-1].outputs[0].tool_calls
    assert (call.id, call.name, call.arguments) == ("call_1", "f", '{"a": 1}')
    assert outputs[0].outputs[0].tool_call_deltas[0].name == "f"


def test_continuation_is_sent_only_where_it_can_be() -> None:
    upstream = Upstream(HELLO)
    client = make_client(upstream)
    run(lambda: collect(client, chat(assistant_prefix="Hel")))
    sent = upstream.sent()
    assert sent["messages"][-1] == {"role": "assistant", "content": "Hel"}
    assert sent["continue_final_message"] is True and sent["add_generation_prompt"] is False
    config = UpstreamConfig("gpt", "https://upstream.test/v1", can_continue=False)
    refusing = UpstreamClient(config, transport=httpx.MockTransport(upstream))
    with pytest.raises(UpstreamConfigError) as info:  # another target may continue it
        run(lambda: refusing.submit(chat(assistant_prefix="Hel")))
    assert info.value.code == "cannot_continue" and info.value.param == "assistant_prefix"
    assert len(upstream.requests) == 1


def test_a_request_cannot_change_the_host() -> None:
    upstream = Upstream(HELLO)
    client = make_client(upstream)
    sneaky = chat(user="https://evil.test/v1", metadata={"base_url": "https://evil.test"})

    async def scenario() -> None:
        await collect(client, sneaky)
        with pytest.raises(UnknownModelError):
            await client.submit(chat(model="https://evil.test/v1"))
        await collect(client, chat(request_id="req-2", model="gpt"))

    run(scenario)
    assert [str(r.url) for r in upstream.requests] == [
        "https://upstream.test/v1/chat/completions"
    ] * 2


def test_an_answer_complete_without_done_finishes() -> None:
    steps: list[Step] = [chunk("Hi"), chunk(finish="stop"), USAGE]
    outputs = run(lambda: collect(make_client(Upstream(steps)), chat()))
    assert outputs[-1].finished and outputs[-1].outputs[0].text == "Hi"


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ([chunk("Hi")], "missing_done"),
        ([chunk("Hi"), b"data: {not json\n\n"], "malformed_chunk"),
        ([chunk("Hi"), event({"id": "x", "choices": "many"})], "malformed_chunk"),
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


def test_total_timeout() -> None:
    steps: list[Step] = [*[chunk("a"), 0.1] * 6, DONE]  # events keep coming, too long
    config = UpstreamConfig(
        "gpt", "https://upstream.test/v1", timeouts=UpstreamTimeouts(total_s=0.35, idle_s=0.3)
    )
    client = UpstreamClient(config, transport=httpx.MockTransport(Upstream(steps)))
    with pytest.raises(StreamInterruptedError) as info:
        run(lambda: collect(client, chat()))
    assert info.value.code == "total_timeout"
    slow_start: list[Step] = [chunk("", role="assistant"), 1.0, chunk("a")]
    config = UpstreamConfig(
        "gpt", "https://upstream.test/v1", timeouts=UpstreamTimeouts(total_s=0.3)
    )
    client = UpstreamClient(config, transport=httpx.MockTransport(Upstream(slow_start)))
    with pytest.raises(UpstreamTimeoutError) as timeout:  # nothing received: a timeout
        run(lambda: collect(client, chat()))
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


def test_abort_ends_the_stream_and_closes_the_response() -> None:
    upstream = Upstream([chunk("Hi")] + [0.05, chunk(" more")] * 100)
    client = make_client(upstream)

    async def scenario() -> list[RequestOutput]:
        stream = await client.submit(chat())
        outputs = [await stream.__anext__()]
        assert client.stats()["gpt"].num_running == 1
        await client.abort("req-1")
        outputs += [o async for o in stream]
        await asyncio.sleep(0.01)
        return outputs

    started = time.monotonic()
    outputs = run(scenario)
    assert time.monotonic() - started < 0.5
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "abort"
    assert outputs[-1].outputs[0].text.startswith("Hi")
    assert upstream.bodies[0].is_closed and client.stats()["gpt"].num_running == 0


def test_abort_while_waiting_for_the_status() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3)
        return httpx.Response(200)

    client = make_client(slow)

    async def scenario() -> list[RequestOutput]:
        asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future, client.abort("req-1"))
        return await collect(client, chat())

    outputs = run(scenario)
    assert len(outputs) == 1 and outputs[0].outputs[0].finish_reason == "abort"


def test_closing_an_unread_stream_releases_it() -> None:
    upstream = Upstream([chunk("Hi"), 3.0])
    client = make_client(upstream)

    async def scenario() -> None:
        stream = await client.submit(chat())
        assert client.stats()["gpt"].num_running == 1
        await stream.aclose()
        assert client.stats()["gpt"].num_running == 0

    run(scenario)
    assert upstream.bodies[0].is_closed


def test_shutdown_drains_then_ends_streams() -> None:
    client = make_client(Upstream([chunk("Hi"), 3.0]))

    async def scenario() -> None:
        stream = await client.submit(chat())
        await stream.__anext__()
        await client.shutdown(drain_timeout_s=0.1)
        with pytest.raises(StreamInterruptedError) as info:
            await stream.__anext__()
        assert info.value.code == "shutdown"
        with pytest.raises(UpstreamUnavailableError) as refused:
            await client.submit(chat("req-2"))
        assert refused.value.code == "shutting_down"

    run(scenario)


def test_duplicate_request_ids_and_protocol_basics() -> None:
    client = make_client(Upstream([chunk("Hi"), 3.0]))

    async def scenario() -> None:
        stream = await client.submit(chat())
        with pytest.raises(InvalidParameterError):
            await client.submit(chat())
        await stream.aclose()

    run(scenario)
    [info] = client.models()
    assert (info.name, info.kind, info.max_model_len) == ("gpt", "model", None)
    assert client.health().is_live and client.health().is_ready


def test_embeddings() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = {"object": "list", "data": [{"embedding": [0.1]}], "model": "upstream-name"}
        return httpx.Response(200, json=body)

    client = make_client(handler)
    answer = run(lambda: client.embeddings({"model": "gpt", "input": "hello"}))
    assert answer["model"] == "gpt" and answer["data"][0]["embedding"] == [0.1]
    assert str(seen[0].url) == "https://upstream.test/v1/embeddings"
    assert json.loads(seen[0].content) == {"model": "gpt-4o-mini", "input": "hello"}


def test_embeddings_errors_are_mapped() -> None:
    async def limited(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "2"}, json={"error": {"message": KEY}})

    with pytest.raises(RateLimitedError) as info:
        run(lambda: make_client(limited).embeddings({"input": "x"}))
    assert info.value.retry_after_s == 2.0 and KEY not in str(info.value)


def test_embeddings_time_out() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3)
        return httpx.Response(200, json={})

    with pytest.raises(UpstreamTimeoutError) as info:
        run(lambda: make_client(slow).embeddings({"input": "x"}))
    assert info.value.code == "first_token_timeout" and info.value.target == "gpt"
