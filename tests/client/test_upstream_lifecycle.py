"""`UpstreamClient`'s lifecycle against a local scripted upstream
(`tests.client.scripted_upstream`): abort, closing, shutdown, the connection pool, and
embeddings."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from inferline.client import UpstreamClient, UpstreamTimeouts, flight
from inferline.core import (
    InvalidParameterError,
    RateLimitedError,
    RequestOutput,
    StreamInterruptedError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from tests.client.scripted_upstream import (
    HELLO,
    HOST,
    KEY,
    Handler,
    Script,
    Upstream,
    after,
    answer,
    chat,
    chunk,
    collect,
    run,
)


def test_abort_ends_the_stream_and_closes_the_response() -> None:
    script = Script([chunk("Hi")] + [0.05, chunk(" more")] * 100)

    async def scenario(client: UpstreamClient, _: Upstream) -> list[RequestOutput]:
        stream = await client.submit(chat())
        outputs = [await stream.__anext__()]
        assert client.stats()["gpt"].num_running == 1
        await client.abort("req-1")
        outputs += [o async for o in stream]
        assert client.stats()["gpt"].num_running == 0
        assert await script.wait_all_ended()
        return outputs

    started = time.monotonic()
    outputs = run(script, scenario)
    assert time.monotonic() - started < 0.5
    assert outputs[-1].finished and outputs[-1].outputs[0].finish_reason == "abort"
    assert outputs[-1].outputs[0].text.startswith("Hi")


def test_abort_while_waiting_for_the_status() -> None:
    async def scenario(client: UpstreamClient, _: Upstream) -> list[RequestOutput]:
        asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future, client.abort("req-1"))
        return await collect(client, chat())

    started = time.monotonic()
    outputs = run(after(3, answer(200)), scenario)
    assert time.monotonic() - started < 0.4
    assert len(outputs) == 1 and outputs[0].outputs[0].finish_reason == "abort"


def test_closing_an_unread_stream_releases_it() -> None:
    script = Script([chunk("Hi"), 3.0])

    async def scenario(client: UpstreamClient, _: Upstream) -> None:
        stream = await client.submit(chat())
        assert client.stats()["gpt"].num_running == 1
        await stream.aclose()
        assert client.stats()["gpt"].num_running == 0
        assert await script.wait_all_ended()

    run(script, scenario)


def test_shutdown_drains_then_ends_streams() -> None:
    async def scenario(client: UpstreamClient, _: Upstream) -> None:
        stream = await client.submit(chat())
        await stream.__anext__()
        await client.shutdown(drain_timeout_s=0.1)
        with pytest.raises(StreamInterruptedError) as info:
            await stream.__anext__()
        assert info.value.code == "shutdown"
        with pytest.raises(UpstreamUnavailableError) as refused:
            await client.submit(chat("req-2"))
        assert refused.value.code == "shutting_down"

    run(Script([chunk("Hi"), 3.0]), scenario)


def test_shutdown_ends_a_request_waiting_for_its_status() -> None:
    async def scenario(client: UpstreamClient, _: Upstream) -> None:
        asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future, client.shutdown(0))
        with pytest.raises(StreamInterruptedError) as info:
            await client.submit(chat())
        assert info.value.code == "shutdown"

    run(after(3, answer(200)), scenario)


def test_duplicate_request_ids_and_protocol_basics() -> None:
    async def scenario(client: UpstreamClient, _: Upstream) -> None:
        stream = await client.submit(chat())
        with pytest.raises(InvalidParameterError):
            await client.submit(chat())
        await stream.aclose()
        [info] = client.models()
        assert (info.name, info.kind, info.max_model_len) == ("gpt", "model", None)
        assert client.health().is_live and client.health().is_ready

    run(Script([chunk("Hi"), 3.0]), scenario)


def embed(handler: Handler, body: dict[str, Any], **fields: Any) -> tuple[dict[str, Any], Upstream]:
    async def scenario(client: UpstreamClient, upstream: Upstream) -> tuple[Any, Upstream]:
        return await client.embeddings(body), upstream

    return run(handler, scenario, **fields)


def test_embeddings() -> None:
    body = {"object": "list", "data": [{"embedding": [0.1]}], "model": "upstream-name"}
    answer_, upstream = embed(answer(200, body), {"model": "gpt", "input": "hello"})
    assert answer_["model"] == "gpt" and answer_["data"][0]["embedding"] == [0.1]
    [seen] = upstream.requests
    assert (seen.path, seen.host.split(":")[0]) == ("/v1/embeddings", HOST)
    assert seen.json() == {"model": "gpt-4o-mini", "input": "hello"}
    assert seen.headers["authorization"] == f"Bearer {KEY}"


def test_embeddings_errors_are_mapped() -> None:
    limited = answer(429, {"error": {"message": KEY}}, headers={"Retry-After": "2"})
    with pytest.raises(RateLimitedError) as info:
        embed(limited, {"input": "x"})
    assert info.value.retry_after_s == 2.0 and KEY not in str(info.value)
    with pytest.raises(UpstreamError) as malformed:
        embed(answer(200, [1, 2]), {"input": "x"})
    assert malformed.value.code == "malformed_response"


def test_embeddings_time_out() -> None:
    with pytest.raises(UpstreamTimeoutError) as info:
        embed(after(3, answer(200, {})), {"input": "x"})
    assert info.value.code == "first_token_timeout" and info.value.target == "gpt"

    async def slow_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"data": ')
        await asyncio.sleep(3)
        return response

    timeouts = UpstreamTimeouts(first_token_s=0.5, total_s=0.6)
    with pytest.raises(UpstreamTimeoutError) as info:
        embed(slow_body, {"input": "x"}, timeouts=timeouts)
    assert info.value.code == "total_timeout"


def test_the_connection_is_reused_once_the_body_ends_after_done() -> None:
    script = Script([*HELLO, 0.1])  # the body's end comes 0.1 s after [DONE]

    async def scenario(client: UpstreamClient, upstream: Upstream) -> Upstream:
        for i in range(2):
            await collect(client, chat(f"req-{i}"))
            await asyncio.sleep(0.2)
        return upstream

    upstream = run(script, scenario)
    assert len({seen.client_port for seen in upstream.requests}) == 1


def test_a_body_that_never_ends_after_done_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flight, "DRAIN_AFTER_DONE_S", 0.1)
    script = Script([*HELLO, 3.0])

    async def scenario(client: UpstreamClient, upstream: Upstream) -> Upstream:
        assert (await collect(client, chat()))[-1].finished
        assert script.num_ended == 0
        assert await script.wait_all_ended(0.5)  # the client closed the connection
        await collect(client, chat("req-2"))  # on a new connection
        return upstream

    upstream = run(script, scenario)
    assert len({seen.client_port for seen in upstream.requests}) == 2
