"""Local upstreams for the client's tests, served in the test's own event loop: an
``aiohttp.web`` app whose answers are scripted per test (recording every request), a
resolver that maps test host names to it, raw sockets that misbehave; and the scripts'
vocabulary (chunks, `run` a scenario against a handler)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from inferline.client import UpstreamClient, UpstreamConfig, UpstreamTimeouts
from inferline.core import GenerationRequest, RequestOutput

KEY = "sk-test-SECRET-0123456789abcdef"
TIMEOUTS = UpstreamTimeouts(connect_s=0.5, first_token_s=0.5, idle_s=0.3, total_s=2.0)
HOST = "upstream.test"  # resolved to the local server by `MapResolver`
Step = bytes | float  # bytes to send, or seconds to wait
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Seen:
    """One request as the upstream received it."""

    method: str
    host: str  # the Host header
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    client_port: int  # equal ports: one connection

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


class Upstream:
    """Records every request, then answers it with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Seen] = []

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        headers = {name.lower(): value for name, value in request.headers.items()}
        body = await request.read()
        assert request.transport is not None
        port = request.transport.get_extra_info("peername")[1]
        seen = Seen(request.method, request.host, request.path, headers, body, port)
        self.requests.append(seen)
        return await self.handler(request)

    def sent(self, i: int = -1) -> Any:
        """The JSON body of request ``i``."""
        return self.requests[i].json()


class Script:
    """A handler that answers ``status`` and streams ``steps``. ``num_ended`` counts the
    responses that are over: all sent, or the client went away (the handler is cancelled)."""

    def __init__(self, steps: Sequence[Step], status: int = 200) -> None:
        self.steps, self.status = steps, status
        self.num_started = self.num_ended = 0

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        self.num_started += 1
        try:
            response = web.StreamResponse(
                status=self.status, headers={"Content-Type": "text/event-stream"}
            )
            await response.prepare(request)
            for step in self.steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                else:
                    await response.write(step)
            await response.write_eof()
            return response
        finally:
            self.num_ended += 1

    async def wait_all_ended(self, timeout_s: float = 1.0) -> bool:
        """Whether every response is over within ``timeout_s``."""
        return await until(lambda: self.num_ended == self.num_started, timeout_s)


def answer(status: int, body: Any = b"", headers: dict[str, str] | None = None) -> Handler:
    """A handler answering ``status`` with ``body`` (bytes, or JSON) at once."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=content, headers=headers or {})

    return handler


def after(delay_s: float, handler: Handler) -> Handler:
    """``handler``, ``delay_s`` late."""

    async def late(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay_s)
        return await handler(request)

    return late


async def until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Polls ``condition`` until true (True) or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


class MapResolver(AbstractResolver):
    """Resolves the names in ``hosts`` to their IPv4 address, any other name fails as DNS
    does; records every name asked."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self.hosts = hosts
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The address of ``host``, or ``OSError`` (name not known)."""
        self.asked.append(host)
        if host not in self.hosts:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(
                hostname=host, host=self.hosts[host], port=port, family=socket.AF_INET,
                proto=0, flags=socket.AI_NUMERICHOST,
            )
        ]  # fmt: skip

    async def close(self) -> None:
        """Nothing to release."""


def make_client(
    base_url: str, resolver: MapResolver | None = None, **fields: Any
) -> UpstreamClient:
    """A client named ``gpt`` for ``base_url`` (through ``resolver``, if given)."""
    fields = {"model": "gpt-4o-mini", "api_key": KEY, "timeouts": TIMEOUTS, **fields}
    config = UpstreamConfig("gpt", base_url, **fields)
    if resolver is None:
        return UpstreamClient(config)
    return UpstreamClient(config, connector=lambda: aiohttp.TCPConnector(resolver=resolver))


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[Upstream, str]]:
    """``handler`` served on a free local port: the recording `Upstream` and its base URL
    (``http://upstream.test:PORT/v1``, for a client made with `resolver_for`)."""
    upstream = Upstream(handler)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream)
    server = TestServer(app)
    await server.start_server(shutdown_timeout=0.2)
    try:
        yield upstream, f"http://{HOST}:{server.port}/v1"
    finally:
        await server.close()


def resolver_for(*names: str) -> MapResolver:
    """A resolver that sends ``upstream.test`` and ``names`` to 127.0.0.1."""
    return MapResolver(dict.fromkeys((HOST, *names), "127.0.0.1"))


@asynccontextmanager
async def raw_server(ending: str) -> AsyncIterator[int]:
    """A TCP server that reads a request, then ends the connection without an answer:
    ``reset`` (a TCP RST, "connection reset by peer") or ``hang_up`` (a plain FIN, "server
    disconnected"); yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if ending == "reset":
            linger = struct.pack("ii", 1, 0)
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            writer.transport.abort()
        else:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def free_port() -> int:
    """A port where nothing listens (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def unanswered_port() -> AsyncIterator[int]:
    """A port whose accept queue is full: a connection attempt there hangs (SYN dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    await asyncio.sleep(0.05)
    try:
        yield port
    finally:
        for sock in (*fillers, listener):
            sock.close()


T = TypeVar("T")
Scenario = Callable[[UpstreamClient, Upstream], Awaitable[T]]


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    """A ``chat.completion.chunk`` event of one choice."""
    fields = {"content": content} if content is not None else {}
    choice = {"index": 0, "delta": {**fields, **delta}, "finish_reason": finish}
    return event({"object": "chat.completion.chunk", "choices": [choice]})


def event(data: Any) -> bytes:
    """An event whose data is ``data`` (a string as is, else JSON)."""
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


def run(
    handler: Handler, scenario: Scenario[T], resolver: MapResolver | None = None, **fields: Any
) -> T:
    """``scenario`` with a client of ``handler`` served locally (``fields`` go to its
    `UpstreamConfig`), within 5 s; the client is shut down after."""

    async def main() -> T:
        async with serving(handler) as (upstream, base_url):
            client = make_client(base_url, resolver or resolver_for(), **fields)
            try:
                return await scenario(client, upstream)
            finally:
                await client.shutdown(0)

    return asyncio.run(asyncio.wait_for(main(), 5))


def chat(request_id: str = "req-1", **fields: Any) -> GenerationRequest:
    """A one-message chat request."""
    return GenerationRequest(request_id, messages=[{"role": "user", "content": "hi"}], **fields)


async def collect(client: UpstreamClient, request: GenerationRequest) -> list[RequestOutput]:
    """Every output of ``request``."""
    return [output async for output in await client.submit(request)]


def outputs_of(
    handler: Handler, request: GenerationRequest | None = None, **fields: Any
) -> list[RequestOutput]:
    """Every output of ``request`` (default: `chat`) against ``handler``."""
    return run(handler, lambda client, _: collect(client, request or chat()), **fields)
