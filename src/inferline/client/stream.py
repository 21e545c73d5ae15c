"""The stream `UpstreamClient.submit` returns: a `Flight`'s events -> `RequestOutput`s,
under the attempt's deadlines (first token, idle, total, and the request's own; the flight
keeps them).

A class rather than an ``async def`` generator so that closing it releases the upstream
request even when it was never iterated (a generator that never started runs no
``finally``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from inferline.client.errors import redact
from inferline.client.flight import Aborted, Flight
from inferline.client.sse import SSEEvent
from inferline.core.errors import StreamInterruptedError, UpstreamError
from inferline.core.outputs import RequestOutput
from inferline.openai.upstream_chunks import ChunkAccumulator


class UpstreamStream(AsyncGenerator[RequestOutput, None]):
    """The outputs of one upstream request; ends with a ``finished`` output or raises.

    Its end, an error or closing it releases the request (``on_release``); an error or
    closing it before the end also cancels the request, closing its HTTP response.
    """

    def __init__(
        self, flight: Flight, accumulator: ChunkAccumulator, on_release: Callable[[], None]
    ) -> None:
        self.flight, self.accumulator = flight, accumulator
        self._on_release = on_release
        self._is_done = False

    async def wait_started(self) -> None:
        """Sends the request and waits for the upstream's status; raises its error (or a
        timeout) if not 2xx. An abort meanwhile is not an error: the stream then yields the
        abort output."""
        if await self.flight.start():
            self.accumulator.metrics.first_scheduled_s = time.time()

    async def __anext__(self) -> RequestOutput:
        if self._is_done:
            raise StopAsyncIteration
        try:
            output = await self._next_output()
        except BaseException:  # an error, a deadline, or the reader cancelled
            self.close_now()
            raise
        if output.finished:
            self._is_done = True
            self.flight.finish()  # its connection goes back to the pool
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
        """Cancels the upstream request (if not finished) and releases it; its response is
        closed at once."""
        self.close_now()

    def close_now(self) -> None:
        """Cancels the upstream request and releases it (never waits)."""
        if not self._is_done:
            self._is_done = True
            self.flight.close()
            self._on_release()

    async def _next_output(self) -> RequestOutput:
        flight, accumulator = self.flight, self.accumulator
        while True:
            item = await flight.next_event(accumulator.has_content)
            if isinstance(item, SSEEvent):
                data = item.data.strip()
                if data:  # an event with no data is no progress
                    flight.deadlines.last_event = time.monotonic()
                    output = self._on_event(item, data, time.time())
                    if output is not None:
                        return output
            elif isinstance(item, Aborted):
                return accumulator.aborted(time.time())
            else:
                return self._at_body_end(time.time())

    def _on_event(self, event: SSEEvent, data: str, now_s: float) -> RequestOutput | None:
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
