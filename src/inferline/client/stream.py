"""The stream `UpstreamClient.submit` returns: a `Flight`'s events -> `RequestOutput`s,
under the attempt's deadlines (first token, idle, total, and the request's own).

A class rather than an ``async def`` generator so that closing it releases the upstream
request even when it was never iterated (a generator that never started runs no
``finally``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from inferline.client.config import UpstreamTimeouts
from inferline.client.errors import redact
from inferline.client.flight import Aborted, BodyEnd, Flight, Item, Started
from inferline.client.sse import SSEEvent
from inferline.core.errors import (
    DeadlineExceededError,
    InferlineError,
    StreamInterruptedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from inferline.core.outputs import RequestOutput
from inferline.openai.upstream import ChunkAccumulator


@dataclass
class Deadlines:
    """When the attempt must have progressed, in ``time.monotonic()`` seconds.

    Before the first content, ``first_token`` applies; after, ``idle_s`` since the last
    event (comments do not count: keep-alives are not progress). ``total`` and the
    request's own ``request`` deadline apply throughout.
    """

    first_token: float
    total: float
    request: float | None
    idle_s: float
    last_event: float

    @classmethod
    def starting_now(cls, timeouts: UpstreamTimeouts, request: float | None) -> Deadlines:
        """The deadlines of an attempt that starts now."""
        now = time.monotonic()
        return cls(
            now + timeouts.first_token_s, now + timeouts.total_s, request, timeouts.idle_s, now
        )

    def next(self, has_content: bool) -> tuple[float, str]:
        """The nearest deadline and its kind (``first_token``, ``idle``, ``total``, ``request``)."""
        phase = (
            (self.last_event + self.idle_s, "idle")
            if has_content
            else (self.first_token, "first_token")
        )
        candidates = [phase, (self.total, "total")]
        if self.request is not None:
            candidates.append((self.request, "request"))
        return min(candidates)

    @staticmethod
    def error(kind: str, has_content: bool, target: str) -> InferlineError:
        """The error for deadline ``kind`` passing: a timeout until content arrived (retry
        it anywhere), an interrupted stream after (continue it elsewhere)."""
        if kind == "request":
            return DeadlineExceededError(f"{target}: the request's deadline passed")
        if kind == "idle":
            message = f"{target}: no event from the upstream within the idle timeout"
            return StreamInterruptedError(message, target=target, code="stream_stalled")
        if kind == "first_token":
            message = f"{target}: no answer from the upstream within the first-token timeout"
            return UpstreamTimeoutError(message, target=target, code="first_token_timeout")
        message = f"{target}: the answer did not end within the total timeout"
        cls = StreamInterruptedError if has_content else UpstreamTimeoutError
        return cls(message, target=target, code="total_timeout")


class UpstreamStream(AsyncGenerator[RequestOutput, None]):
    """The outputs of one upstream request; ends with a ``finished`` output or raises.

    Its end, an error or closing it releases the request (``on_release``); an error or
    closing it before the end also cancels the request, closing its HTTP response.
    """

    def __init__(
        self,
        flight: Flight,
        accumulator: ChunkAccumulator,
        deadlines: Deadlines,
        on_release: Callable[[], None],
    ) -> None:
        self.flight, self.accumulator, self.deadlines = flight, accumulator, deadlines
        self._on_release = on_release
        self._is_done = False

    async def wait_started(self) -> None:
        """Waits for the upstream's status; raises its error (or a timeout) if not 2xx. An
        abort meanwhile is not an error: the stream then yields the abort output."""
        item = await self._next_item()
        if isinstance(item, InferlineError):
            raise item
        if isinstance(item, Started):
            self.accumulator.metrics.first_scheduled_s = time.time()

    async def __anext__(self) -> RequestOutput:
        if self._is_done:
            raise StopAsyncIteration
        try:
            output = await self._next_output()
        except asyncio.CancelledError:
            self.close_now()  # no waiting while being cancelled
            raise
        except BaseException:
            await self.aclose()
            raise
        if output.finished:
            # the flight finishes reading the body's end by itself, so that its connection
            # goes back to the pool (an aborted flight was cancelled already)
            self._is_done = True
            self._on_release()
        return output

    async def asend(self, value: None) -> RequestOutput:
        """Same as ``__anext__`` (a stream takes no values)."""
        return await self.__anext__()

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> RequestOutput:
        """Closes the stream and raises the exception given."""
        await self.aclose()
        if isinstance(typ, BaseException):
            raise typ
        raise val if isinstance(val, BaseException) else typ()

    async def aclose(self) -> None:
        """Cancels the upstream request (if not finished), releases it, waits until its
        response is closed."""
        if not self._is_done:
            self.close_now()
            await self.flight.close()

    def close_now(self) -> None:
        """Cancels the upstream request and releases it without waiting."""
        if not self._is_done:
            self._is_done = True
            self.flight.cancel()
            self._on_release()

    async def _next_output(self) -> RequestOutput:
        while True:
            item = await self._next_item()
            now_s = time.time()
            if isinstance(item, Aborted):
                return self.accumulator.aborted(now_s)
            if isinstance(item, InferlineError):
                raise item
            if isinstance(item, BodyEnd):
                return self._at_body_end(now_s)
            if isinstance(item, SSEEvent) and item.data.strip():
                self.deadlines.last_event = time.monotonic()
                output = self._on_event(item, now_s)
                if output is not None:
                    return output

    async def _next_item(self) -> Item:
        deadline, kind = self.deadlines.next(self.accumulator.has_content)
        try:
            return await self.flight.next_item(deadline)
        except TimeoutError:
            pass
        raise self.deadlines.error(kind, self.accumulator.has_content, self.flight.target)

    def _on_event(self, event: SSEEvent, now_s: float) -> RequestOutput | None:
        data = event.data.strip()
        if data == "[DONE]":
            return self.accumulator.finish(now_s)
        try:
            chunk = _parsed(data, is_error=event.event == "error")
            return self.accumulator.feed(chunk, now_s)
        except UpstreamError as exc:
            raise _redacted(exc, self.flight.secrets) from None
        except ValueError:
            target = self.flight.target
            raise _redacted(
                StreamInterruptedError(
                    f"{target}: the upstream sent a chunk that is not JSON: {data[:100]!r}",
                    target=target,
                    code="malformed_chunk",
                ),
                self.flight.secrets,
            ) from None

    def _at_body_end(self, now_s: float) -> RequestOutput:
        """A body that ends without ``[DONE]`` is complete if every completion finished."""
        if self.accumulator.is_complete:
            return self.accumulator.finish(now_s)
        target = self.flight.target
        raise StreamInterruptedError(
            f"{target}: the stream ended before the answer did (no [DONE])",
            target=target,
            code="missing_done",
        )


def _redacted(exc: UpstreamError, secrets: tuple[str, ...]) -> UpstreamError:
    exc.message = redact(exc.message, secrets)
    exc.args = (exc.message,)
    return exc


def _parsed(data: str, is_error: bool) -> Any:
    """The chunk an event carries; an ``error`` event's data, JSON or not, is an error."""
    if not is_error:
        return json.loads(data)
    try:
        value = json.loads(data)
    except ValueError:
        value = data
    return value if isinstance(value, dict) and "error" in value else {"error": value}
