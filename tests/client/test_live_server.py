"""`UpstreamClient` against another server stack in another thread: a Starlette app under
uvicorn (cuts, stalls, slow starts, abort, connection reuse) and raw sockets (refused,
reset before a response)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from inferline.client import UpstreamClient, UpstreamConfig, UpstreamTimeouts
from inferline.core import (
    GenerationRequest,
    RequestOutput,
    StreamInterruptedError,
    UpstreamError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

TIMEOUTS = UpstreamTimeouts(connect_s=0.5, first_token_s=0.5, idle_s=0.3, total_s=3.0)


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = {"object": "chat.completion.chunk", "choices": [choice]}
    return f"data: {json.dumps(body)}\n\n".encode()


async def scripted(script: str) -> AsyncIterator[bytes]:
    """The body each test asks for by the user message's content."""
    yield chunk("Hi")
    if script == "cut":
        raise ConnectionError("the server dies mid-stream")  # uvicorn drops the connection
    if script == "stall":
        await asyncio.sleep(2)
    if script == "trickle":
        for _ in range(100):
            await asyncio.sleep(0.05)
            yield chunk(" more")
    yield chunk(finish="stop")
    yield b"data: [DONE]\n\n"


CLIENT_PORTS: list[int] = []  # the client's port of each request: equal = one connection


async def chat_completions(request: Request) -> Response:
    CLIENT_PORTS.append(request.client.port if request.client else -1)
    body = await request.json()
    script = body["messages"][-1]["content"]
    if script == "slow":
        await asyncio.sleep(1.5)
    return StreamingResponse(scripted(script), media_type="text/event-stream")


APP = Starlette(routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"])])


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """The app served by uvicorn on a free port, for the whole module."""
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(APP, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(5)
    sock.close()


def client_for(base_url: str) -> UpstreamClient:
    return UpstreamClient(UpstreamConfig("local", base_url, timeouts=TIMEOUTS))


def ask(script: str) -> GenerationRequest:
    return GenerationRequest("req-1", messages=[{"role": "user", "content": script}])


def run_stream(base_url: str, script: str) -> list[RequestOutput] | Exception:
    """Every output, or the error raised (by `submit` or the stream); within 2 s."""

    async def scenario() -> list[RequestOutput] | Exception:
        client = client_for(base_url)
        try:
            return [o async for o in await client.submit(ask(script))]
        except UpstreamError as exc:
            assert client.stats()["local"].num_running == 0
            return exc
        finally:
            await client.shutdown(0)

    started = time.monotonic()
    result = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert time.monotonic() - started < 2
    return result


def test_a_real_stream(server_url: str) -> None:
    outputs = run_stream(server_url, "hello")
    assert isinstance(outputs, list) and outputs[-1].finished
    assert outputs[-1].outputs[0].text == "Hi" and outputs[-1].model == "local"


def test_connections_are_reused(server_url: str) -> None:
    async def scenario() -> None:
        client = client_for(server_url)
        for i in range(3):
            request = GenerationRequest(f"r{i}", messages=[{"role": "user", "content": "hi"}])
            outputs = [o async for o in await client.submit(request)]
            assert outputs[-1].finished
            await asyncio.sleep(0.05)  # the body's end may follow [DONE]
        await client.shutdown(0)

    del CLIENT_PORTS[:]
    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert len(CLIENT_PORTS) == 3 and len(set(CLIENT_PORTS)) == 1


def test_a_cut_stream(server_url: str) -> None:
    error = run_stream(server_url, "cut")
    assert isinstance(error, StreamInterruptedError) and error.code == "stream_cut"
    assert error.target == "local" and error.retryable


def test_a_stalled_stream(server_url: str) -> None:
    error = run_stream(server_url, "stall")
    assert isinstance(error, StreamInterruptedError) and error.code == "stream_stalled"


def test_no_status_in_time(server_url: str) -> None:
    error = run_stream(server_url, "slow")
    assert isinstance(error, UpstreamTimeoutError) and error.code == "first_token_timeout"


def test_abort_a_real_stream(server_url: str) -> None:
    async def scenario() -> tuple[RequestOutput, float]:
        client = client_for(server_url)
        stream = await client.submit(ask("trickle"))
        await stream.__anext__()
        started = time.monotonic()
        await client.abort("req-1")
        outputs = [o async for o in stream]
        assert client.stats()["local"].num_running == 0
        await client.shutdown(0)
        return outputs[-1], time.monotonic() - started

    last, elapsed_s = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert last.finished and last.outputs[0].finish_reason == "abort" and elapsed_s < 0.5


def test_connection_refused() -> None:
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    error = run_stream(f"http://127.0.0.1:{port}/v1", "hello")
    assert isinstance(error, UpstreamUnavailableError) and error.code == "connect_error"


@pytest.fixture
def resetting_url() -> Iterator[str]:
    """A server that reads the request, then resets the connection (no response)."""
    listener = free_socket()
    listener.listen()
    listener.settimeout(5)

    def serve() -> None:
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        connection.recv(65536)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # linger 0: RST

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    thread.join(5)
    listener.close()


def test_connection_reset_before_a_response(resetting_url: str) -> None:
    error: Any = run_stream(resetting_url, "hello")
    assert isinstance(error, UpstreamUnavailableError) and error.code == "connect_error"
    assert error.retryable and error.target == "local"
