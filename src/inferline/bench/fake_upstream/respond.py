"""Carrying out one completion request under its fault: healthy, an error, or misbehaving."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from inferline.bench.fake_upstream.faults import Fault, Pick
from inferline.bench.fake_upstream.request import Call
from inferline.bench.fake_upstream.wire import DONE, MALFORMED, Wire, Writer, error_body

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_JSON = [(b"content-type", b"application/json")]
TOOL_CALL_TOKENS = 10
REFUSE_PREFIX = "continuing a final assistant message (continue_final_message) is not supported"


class Dropped(Exception):
    """Raised out of the app to make the server drop the connection mid-response."""


class _Abort(Exception):
    """The client went away, or the server is shutting down, during a pause."""


@dataclass
class Context:
    """What every exchange of one app shares: the words, the pace, the shutdown signal."""

    wire: Wire
    delay: float
    closing: bool = False
    waiters: set[asyncio.Future[None]] = field(default_factory=set)

    def close(self) -> None:
        """Ends every pause in progress (call on the app's event loop)."""
        self.closing = True
        for gone in self.waiters:
            if not gone.done():
                gone.set_result(None)


class Exchange:
    """One completion request's response, written under the fault it drew (if any)."""

    def __init__(
        self, ctx: Context, call: Call, entry: dict[str, Any], send: Send, receive: Receive
    ) -> None:
        self.ctx, self.call, self.entry, self.send, self.receive = ctx, call, entry, send, receive
        self.writer = Writer(
            ctx.wire, chat=call.chat, model=call.model, rid=entry["id"], created=int(entry["time"])
        )
        self._gone: asyncio.Future[None] | None = None
        self._watch: asyncio.Future[None] | None = None

    async def run(self, pick: Pick | None) -> None:
        """Answers the request, recording status, words sent and outcome in the log entry."""
        try:
            await self._dispatch(pick)
            self.entry["outcome"] = "error" if self.entry["status"] >= 400 else "ok"
        except _Abort:
            if self.ctx.closing:
                self.entry["outcome"] = "cut"
                raise Dropped("the fake upstream is shutting down") from None
            self.entry["outcome"] = "client_closed"
        except Dropped:
            self.entry["outcome"] = "cut"
            raise
        finally:
            if self._watch is not None:
                self._watch.cancel()
            if self._gone is not None:
                self.ctx.waiters.discard(self._gone)

    async def _dispatch(self, pick: Pick | None) -> None:
        fault = pick.fault if pick else None
        kind = fault.kind if fault else "ok"
        if kind == "flap" and pick:
            kind = "status" if pick.fault.down_at(pick.since, time.monotonic()) else "ok"
        if kind == "refuse_prefix":
            kind = "status" if self.call.continuation else "ok"
        await getattr(self, "_" + kind)(fault)

    # -- primitives

    async def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.entry["status"] = status
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def _body(self, data: bytes, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def _json(self, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
        length = [(b"content-length", str(len(body)).encode())]
        await self._start(status, _JSON + length + extra)
        await self._body(body, more=False)

    async def _pause(self, seconds: float | None) -> None:
        """Waits ``seconds`` (None: forever); raises `_Abort` if the client leaves first."""
        if seconds is not None and seconds <= 0:
            return
        gone = self._gone or self._watch_disconnect()
        done, _ = await asyncio.wait({gone}, timeout=seconds)
        if done:
            raise _Abort

    def _watch_disconnect(self) -> asyncio.Future[None]:
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            while (await self.receive())["type"] != "http.disconnect":
                pass
            if not gone.done():
                gone.set_result(None)

        self._gone, self._watch = gone, asyncio.ensure_future(watch())
        self.ctx.waiters.add(gone)
        if self.ctx.closing:
            gone.set_result(None)
        return gone

    def _span(self, after: int | None = None) -> tuple[int, int, int]:
        """``(start, mid, stop)``: the words to send and where a fault strikes (``after``)."""
        lo, hi = self.call.start, self.call.stop
        k = (hi - lo) * 2 // 3 if after is None else after
        return lo, min(hi, lo + k), hi

    async def _words(self, lo: int, hi: int) -> None:
        first, spaced, word = self.call.start, self.call.spaced, self.writer.word
        if self.ctx.delay <= 0:
            if hi > lo:
                await self._body(b"".join([word(i, i > first or spaced) for i in range(lo, hi)]))
                self.entry["words_sent"] += hi - lo
            return
        for i in range(lo, hi):
            if i > first:
                await self._pause(self.ctx.delay)
            await self._body(word(i, i > first or spaced))
            self.entry["words_sent"] += 1

    def _tail(self, reason: str | None, completion: int, done: bool = True) -> bytes:
        parts = [self.writer.finish(reason)] if reason else []
        if self.call.include_usage:
            parts.append(self.writer.usage(self.call.prompt_words, completion))
        if done:
            parts.append(DONE)
        return b"".join(parts)

    def _full(self, lo: int, hi: int, finish: str | None) -> bytes:
        joined = " ".join(self.ctx.wire.canon.words[lo:hi])
        text = " " + joined if joined and self.call.spaced else joined
        return self.writer.body(text, finish, self.call.prompt_words, hi - lo)

    # -- one method per fault kind (and "ok")

    async def _ok(self, _: Fault | None) -> None:
        lo, hi, call = self.call.start, self.call.stop, self.call
        if not call.stream:
            self.entry["words_sent"] = hi - lo
            await self._json(200, self._full(lo, hi, call.finish), [])
            return
        await self._start(200, _SSE)
        if self.ctx.delay <= 0:
            words = [self.writer.word(i, i > lo or call.spaced) for i in range(lo, hi)]
            self.entry["words_sent"] = hi - lo
            tail = self._tail(call.finish, hi - lo)
            await self._body(b"".join([self.writer.role(), *words, tail]), more=False)
            return
        await self._body(self.writer.role())
        await self._words(lo, hi)
        await self._body(self._tail(call.finish, hi - lo), more=False)

    async def _status(self, fault: Fault | None) -> None:
        assert fault is not None
        status = fault.status or (503 if fault.kind == "flap" else 400)
        message = fault.message or (REFUSE_PREFIX if fault.kind == "refuse_prefix" else None)
        body = error_body(status, code=fault.code, message=message, tokens=self.call.prompt_words)
        extra: list[tuple[bytes, bytes]] = []
        if fault.retry_after is not None:
            extra.append((b"retry-after", str(math.ceil(fault.retry_after)).encode()))
            extra.append((b"retry-after-ms", str(round(fault.retry_after * 1000)).encode()))
        await self._json(status, body, extra)

    async def _hang(self, _: Fault | None) -> None:
        await self._pause(None)

    async def _first_token_delay(self, fault: Fault | None) -> None:
        assert fault is not None
        if self.call.stream:
            await self._start(200, _SSE)
            await self._body(b"")
        await self._pause(fault.delay)
        lo, hi = self.call.start, self.call.stop
        if not self.call.stream:
            self.entry["words_sent"] = hi - lo
            await self._json(200, self._full(lo, hi, self.call.finish), [])
            return
        await self._body(self.writer.role())
        await self._words(lo, hi)
        await self._body(self._tail(self.call.finish, hi - lo), more=False)

    async def _interrupted(self, fault: Fault, between: Callable[[], Awaitable[bool]]) -> None:
        """Streams up to ``fault.after`` words, runs ``between``, then (if True) the rest."""
        lo, mid, hi = self._span(fault.after)
        if not self.call.stream:
            body = self._full(lo, hi, self.call.finish)
            length = [(b"content-length", str(len(body)).encode())]
            await self._start(200, _JSON + length)
            await self._body(body[: len(body) // 2])
            if await between():
                self.entry["words_sent"] = hi - lo
                await self._body(body[len(body) // 2 :], more=False)
            return
        await self._start(200, _SSE)
        await self._body(self.writer.role())
        await self._words(lo, mid)
        if await between():
            await self._words(mid, hi)
            await self._body(self._tail(self.call.finish, hi - lo), more=False)

    async def _cut(self, fault: Fault | None) -> None:
        assert fault is not None

        async def drop() -> bool:
            raise Dropped("cut")

        await self._interrupted(fault, drop)

    async def _stall(self, fault: Fault | None) -> None:
        assert fault is not None

        async def stall() -> bool:
            await self._pause(fault.duration)
            return True

        await self._interrupted(fault, stall)

    async def _malformed(self, fault: Fault | None) -> None:
        assert fault is not None
        if not self.call.stream:
            await self._json(200, b"{not json", [])
            return

        async def garble() -> bool:
            await self._body(MALFORMED, more=fault.then == "continue")
            return fault.then == "continue"

        await self._interrupted(fault, garble)

    async def _no_done(self, fault: Fault | None) -> None:
        assert fault is not None
        lo, hi = self.call.start, self.call.stop
        finish = self.call.finish if fault.finish else None
        if not self.call.stream:
            self.entry["words_sent"] = hi - lo
            await self._json(200, self._full(lo, hi, finish), [])
            return
        await self._start(200, _SSE)
        await self._body(self.writer.role())
        await self._words(lo, hi)
        await self._body(self._tail(finish, hi - lo, done=False), more=False)

    async def _content_filter_200(self, _: Fault | None) -> None:
        if not self.call.stream:
            await self._json(
                200, self.writer.body("", "content_filter", self.call.prompt_words, 0), []
            )
            return
        await self._start(200, _SSE)
        await self._body(self.writer.role() + self._tail("content_filter", 0), more=False)

    async def _tool_call(self, fault: Fault | None) -> None:
        assert fault is not None
        if not self.call.chat:
            body = error_body(400, message="tool_call faults need /v1/chat/completions")
            await self._json(400, body, [])
            return
        prompt, tokens = self.call.prompt_words, TOOL_CALL_TOKENS
        if not self.call.stream:
            body = self.writer.tool_call_body(fault.name, fault.arguments, prompt, tokens)
            await self._json(200, body, [])
            return
        await self._start(200, _SSE)
        chunks = self.writer.tool_call_chunks(fault.name, fault.arguments)
        await self._body(self.writer.role() + chunks + self._tail("tool_calls", tokens), False)
