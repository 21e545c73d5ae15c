"""The load client: a minimal asyncio HTTP/1.1 client and closed-loop runners.

One client for every system. Each worker owns one keep-alive connection and sends its next
request as soon as the previous answer has ended (closed loop). Times are taken in
``data_received``, when the bytes reach this process, not when the waiting coroutine
resumes, so the client's own event-loop backlog (64 connections on one loop) adds as
little as possible. Why not httpx: `httpx_closed_loop` runs the same requests through
``httpx.AsyncClient`` so the report can show what each client costs against the direct
upstream (latency and client CPU per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

PROMPT = "Write one short sentence about a fox."
API_KEY = "sk-gateway-overhead-0123456789abcdef0123456789abcdef"  # both gateways require it
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Target:
    """A system under test: ``host:port`` and the ``model`` name its clients ask for."""

    name: str
    host: str
    port: int
    model: str


@dataclass
class Exchange:
    """One request's outcome. ``t_first``: the first non-empty content arrived (streams)."""

    status: int
    t_sent: float
    t_end: float
    t_first: float | None = None
    ok: bool = False
    close: bool = False  # the server asked to close the connection


@dataclass
class CellResult:
    """The measured requests of one run: latencies (non-streaming: whole answer; streaming:
    time to first content), whole-stream times, errors by kind, and the measured span."""

    latencies_s: list[float] = field(default_factory=list)
    totals_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_sent: float = float("inf")
    last_end: float = 0.0
    issued: int = 0  # requests sent in the run, warm-up and tail included

    @property
    def wall_s(self) -> float:
        """From the first measured request's start to the last one's end."""
        return max(0.0, self.last_end - self.first_sent)

    def add(self, result: Exchange | str, stream: bool) -> None:
        """Records one outcome (a string: the exception that ended it)."""
        if isinstance(result, str):
            self.errors[result] += 1
            return
        self.first_sent = min(self.first_sent, result.t_sent)
        self.last_end = max(self.last_end, result.t_end)
        if not result.ok:
            self.errors[f"status {result.status}" if result.status != 200 else "bad body"] += 1
        elif stream and result.t_first is not None:
            self.latencies_s.append(result.t_first - result.t_sent)
            self.totals_s.append(result.t_end - result.t_sent)
        else:
            self.latencies_s.append(result.t_end - result.t_sent)


def chat_body(model: str, *, stream: bool, max_tokens: int = 64) -> bytes:
    """The JSON body of a short chat completion request."""
    message = {"role": "user", "content": PROMPT}
    payload = {"model": model, "messages": [message], "max_tokens": max_tokens, "stream": stream}
    return json.dumps(payload).encode()


def chat_request(target: Target, *, stream: bool) -> bytes:
    """The whole HTTP/1.1 request (head and body), encoded once per run."""
    body = chat_body(target.model, stream=stream)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
        f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """Status, Content-Length (None if absent), chunked?, Connection: close? of a response."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked, close = None, False, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    return status, length, chunked, close


def has_content(data: bytes) -> bool:
    """Whether an SSE ``data:`` payload is a chunk with non-empty ``delta.content``."""
    try:
        choices = json.loads(data).get("choices") or []
    except ValueError:
        return False
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


def message_content(body: bytes) -> str:
    """``choices[0].message.content`` of a chat completion body ('' if absent or invalid)."""
    try:
        return json.loads(body)["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


class SseScan:
    """Reads a decoded SSE body piece by piece: notes the first content chunk and [DONE]."""

    def __init__(self) -> None:
        self.pending = b""
        self.found = False
        self.done = False

    def feed(self, piece: bytes) -> bool:
        """Takes the next piece; True when it completed the first content event."""
        self.pending += piece.replace(b"\r\n", b"\n")
        *events, self.pending = self.pending.split(b"\n\n")
        found_now = False
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    self.done = True
                elif not self.found and has_content(data):
                    self.found = found_now = True
        return found_now


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.arrivals: list[tuple[int, float]] = []  # (buffer length after, time) per read
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # noqa: D102
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:  # noqa: D102
        self.buf += data
        self.arrivals.append((len(self.buf), time.perf_counter()))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def close(self) -> None:
        """Closes the socket."""
        if self.transport is not None:
            self.transport.close()

    def time_at(self, offset: int) -> float:
        """When the byte at buffer ``offset`` (exclusive end) arrived."""
        for end, t in self.arrivals:
            if end >= offset:
                return t
        return time.perf_counter()

    async def _need(self, size: int) -> None:
        """Waits until the buffer holds ``size`` bytes."""
        while len(self.buf) < size:
            if self.closed:
                raise ConnectionError("closed by the server")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None

    async def _find(self, needle: bytes, start: int) -> int:
        """Waits until ``needle`` is in the buffer after ``start``; returns its offset."""
        while (at := self.buf.find(needle, start)) < 0:
            await self._need(len(self.buf) + 1)
        return at

    async def exchange(self, request: bytes, stream: bool) -> Exchange:
        """Sends ``request``, reads the whole answer, and times it."""
        assert self.transport is not None
        t_sent = time.perf_counter()
        self.transport.write(request)
        head_end = await self._find(b"\r\n\r\n", 0)
        status, length, chunked, close = parse_head(bytes(self.buf[:head_end]))
        scan = SseScan() if stream else None
        if chunked:
            end, body, first_at = await self._read_chunked(head_end + 4, scan)
        else:
            end = head_end + 4 + (length or 0)
            await self._need(end)
            body, first_at = bytes(self.buf[head_end + 4 : end]), None
            if scan is not None and scan.feed(body + b"\n\n"):
                first_at = end
        result = Exchange(status, t_sent, self.time_at(end), close=close)
        result.t_first = None if first_at is None else self.time_at(first_at)
        if scan is not None:
            result.ok = status == 200 and scan.found and scan.done
        else:
            result.ok = status == 200 and bool(message_content(body))
        self._consume(end)
        return result

    async def _read_chunked(self, pos: int, scan: SseScan | None) -> tuple[int, bytes, int | None]:
        """Decodes a chunked body from ``pos``: (end offset, body, first content offset)."""
        pieces, first_at = [], None
        while True:
            eol = await self._find(b"\r\n", pos)
            size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
            start = eol + 2
            await self._need(start + size + 2)
            if size == 0:
                return start + 2, b"".join(pieces), first_at
            piece = bytes(self.buf[start : start + size])
            if scan is None:
                pieces.append(piece)
            elif scan.feed(piece):
                first_at = start + size
            pos = start + size + 2

    def _consume(self, end: int) -> None:
        """Drops one answer from the buffer (anything after it stays)."""
        del self.buf[:end]
        last = self.arrivals[-1][1] if self.arrivals else time.perf_counter()
        self.arrivals = [(len(self.buf), last)] if self.buf else []


async def connect(target: Target) -> Connection:
    """Opens a connection (TCP_NODELAY is asyncio's default for TCP sockets)."""
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Connection, target.host, target.port)
    return conn


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """No garbage-collector pauses in the client while it measures; collects afterwards."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


async def _drive(
    target: Target,
    stream: bool,
    concurrency: int,
    next_ticket: Callable[[], int | None],
    on_result: Callable[[int, Exchange | str], None],
) -> None:
    """Runs ``concurrency`` closed-loop workers while ``next_ticket`` gives tickets."""
    request = chat_request(target, stream=stream)
    conns = await asyncio.gather(*(connect(target) for _ in range(concurrency)))

    async def worker(conn: Connection) -> None:
        while (ticket := next_ticket()) is not None:
            result: Exchange | str
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    result = await conn.exchange(request, stream)
            except (OSError, TimeoutError, ValueError) as exc:
                result = type(exc).__name__
            if isinstance(result, str) or result.close:
                conn.close()
                conn = await connect(target)
            on_result(ticket, result)
        conn.close()

    await asyncio.gather(*(worker(c) for c in conns))


async def closed_loop(
    target: Target, *, stream: bool, concurrency: int, requests: int, warmup: int
) -> CellResult:
    """``warmup`` requests (discarded), ``requests`` measured, then ``concurrency`` more
    (discarded) so that every measured request ran at full concurrency."""
    cell = CellResult()
    tickets = itertools.count()
    total = warmup + requests + concurrency

    def next_ticket() -> int | None:
        ticket = next(tickets)
        return ticket if ticket < total else None

    def on_result(ticket: int, result: Exchange | str) -> None:
        if warmup <= ticket < warmup + requests:
            cell.add(result, stream)

    with no_gc():
        await _drive(target, stream, concurrency, next_ticket, on_result)
    cell.issued = total
    return cell


async def closed_loop_for(
    target: Target, *, concurrency: int, seconds: float, warmup_s: float
) -> CellResult:
    """Non-streaming closed loop for ``warmup_s + seconds``; keeps the answers that end
    within the last ``seconds`` (its latencies: those that ended OK)."""
    cell = CellResult()
    window = [0.0, 0.0]  # set once the collector ran: its pause is not in the window
    tickets = itertools.count()

    def next_ticket() -> int | None:
        return next(tickets) if time.perf_counter() < window[1] else None

    def on_result(ticket: int, result: Exchange | str) -> None:
        if isinstance(result, str) or window[0] <= result.t_end <= window[1]:
            cell.add(result, stream=False)

    with no_gc():
        start = time.perf_counter()
        window[:] = [start + warmup_s, start + warmup_s + seconds]
        await _drive(target, False, concurrency, next_ticket, on_result)
    cell.issued = next(tickets)  # tickets drawn so far: requests sent
    return cell


async def httpx_closed_loop(
    target: Target, *, concurrency: int, requests: int, warmup: int
) -> CellResult:
    """`closed_loop` (non-streaming) through one ``httpx.AsyncClient`` with a keep-alive
    pool of ``concurrency`` connections: the alternative client, for comparison."""
    import httpx

    cell = CellResult()
    tickets = itertools.count()
    total = warmup + requests + concurrency
    body = chat_body(target.model, stream=False)
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    base_url = f"http://{target.host}:{target.port}"
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=TIMEOUT_S, trust_env=False
    ) as http:

        async def worker() -> None:
            while (ticket := next(tickets)) < total:
                t_sent = time.perf_counter()
                response = await http.post("/v1/chat/completions", content=body, headers=headers)
                result = Exchange(response.status_code, t_sent, time.perf_counter())
                result.ok = response.status_code == 200 and bool(message_content(response.content))
                if warmup <= ticket < warmup + requests:
                    cell.add(result, stream=False)

        with no_gc():
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    cell.issued = total
    return cell
