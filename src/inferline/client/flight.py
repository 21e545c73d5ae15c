"""One upstream request in flight: its HTTP response, read by the stream's own task under
one timer per request.

No reader task and no queue: `Flight.start` sends the request and waits for the status in
the caller's task (under one ``asyncio.timeout``, which `Flight.stop` expires at once);
`Flight.next_event` reads the body where the stream is read. The deadlines (`Deadlines`)
are kept by one ``loop.call_later`` timer, armed when the reader is about to wait for
bytes and re-armed when it fires early (events moved the idle deadline); an event only
moves ``Deadlines.last_event``. When a deadline passes while the reader waits, or on
`Flight.stop` (abort, shutdown), the response is closed: aiohttp wakes the waiting read
with an error, the reader raises the deadline's (or the stop's) own outcome, and the
upstream sees its connection go.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass

import aiohttp

from inferline.client.deadlines import Deadlines
from inferline.client.errors import error_from_response, error_from_transport
from inferline.client.sse import SSEError, SSEEvent, SSEParser
from inferline.core.errors import InferlineError, StreamInterruptedError

MAX_ERROR_BODY_BYTES = 64 * 1024
DRAIN_AFTER_DONE_S = 1.0


@dataclass(frozen=True)
class BodyEnd:
    """The response body ended (with or without ``[DONE]``)."""


@dataclass(frozen=True)
class Aborted:
    """`UpstreamClient.abort` stopped the request."""


BODY_END = BodyEnd()
Item = SSEEvent | BodyEnd | Aborted


class Flight:
    """One POST of ``body`` to ``url``: its status (`start`), then its events
    (`next_event`), under ``deadlines``; `stop` and `close` end it at any time.

    Invariant: while the reader waits for bytes, a timer is armed at or before the nearest
    deadline, so no wait outlives a deadline.
    """

    def __init__(
        self,
        request_id: str,
        session: aiohttp.ClientSession,
        url: str,
        body: bytes,
        deadlines: Deadlines,
        *,
        target: str,
        secrets: tuple[str, ...] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        """``headers``: this request's own, beside the session's (its ``traceparent``)."""
        self.request_id, self.target, self.secrets = request_id, target, secrets
        self._headers = headers
        self.deadlines = deadlines
        self.stopped: Aborted | InferlineError | None = None  # ends the stream at once
        self._session, self._url, self._body = session, url, body
        self._response: aiohttp.ClientResponse | None = None
        self._status_scope: asyncio.Timeout | None = None
        self._parser = SSEParser()
        self._events: deque[SSEEvent] = deque()
        self._is_at_end = False
        self._num_read = 0  # body bytes read so far
        self._is_waiting = False
        self._has_content = False  # as of the latest wait
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._expired: str | None = None  # the deadline that passed during a wait

    async def start(self) -> bool:
        """Sends the request and waits for the status within the nearest deadline. Returns
        True on a 2xx (events follow), False if aborted meanwhile; raises the typed error of
        another status, of the transport, of a deadline or of `stop`."""
        deadline, kind = self.deadlines.next(has_content=False)
        try:
            async with asyncio.timeout(deadline - time.monotonic()) as self._status_scope:
                response = self._response = await self._session.post(
                    self._url, data=self._body, headers=self._headers, allow_redirects=False
                )
                if not 200 <= response.status < 300:
                    raise await self._status_error(response)
        except InferlineError:
            raise
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            if isinstance(exc, aiohttp.ClientError):
                raise self._transport_error(exc, is_started=False) from None
            if self.stopped is None:
                raise self.deadlines.error(kind, False, self.target) from None
        except Exception as exc:  # anything else the transport raises, typed
            raise self._transport_error(exc, is_started=False) from None
        finally:
            self._status_scope = None
        if isinstance(self.stopped, InferlineError):
            raise self.stopped
        return self.stopped is None

    async def next_event(self, has_content: bool) -> Item:
        """The next event, `BODY_END`, or `Aborted` once aborted. Raises the stop's error,
        a passed deadline's (``has_content``: whether content has arrived), a cut's or a
        malformed stream's."""
        while True:
            stopped = self.stopped
            if stopped is not None:
                if isinstance(stopped, Aborted):
                    return stopped
                raise stopped
            if self._events:
                return self._events.popleft()
            if self._is_at_end:
                return BODY_END
            await self._read(has_content)

    def finish(self) -> None:
        """After the answer's end: the connection goes back to the pool once the body's end
        has arrived (waiting at most `DRAIN_AFTER_DONE_S` for it, then it is closed)."""
        self._cancel_timer()
        response = self._response
        if response is None or self.stopped is not None:
            return
        if response.content.is_eof():
            response.release()
        else:
            asyncio.get_running_loop().call_later(DRAIN_AFTER_DONE_S, response.close)

    def stop(self, item: Aborted | InferlineError) -> None:
        """Ends the request now: the response is closed, the reader gets ``item``."""
        if self.stopped is None:
            self.stopped = item
        scope = self._status_scope
        if scope is not None:
            scope.reschedule(asyncio.get_running_loop().time())  # expires at once
        self.close()

    def close(self) -> None:
        """Closes the response now (a waiting read wakes); the upstream sees it go."""
        self._cancel_timer()
        if self._response is not None:
            self._response.close()

    async def _status_error(self, response: aiohttp.ClientResponse) -> InferlineError:
        body = await _read_at_most(response, MAX_ERROR_BODY_BYTES)
        response.release()
        return error_from_response(
            response.status, response.headers, body, target=self.target, secrets=self.secrets
        )

    async def _read(self, has_content: bool) -> None:
        """Reads what the body has next (waiting under the deadlines) into the events."""
        assert self._response is not None
        content = self._response.content
        if content.total_bytes == self._num_read and not content.is_eof():
            self._arm(has_content)  # nothing buffered: this read will wait
        self._is_waiting = True
        try:
            data = await content.readany()
        except Exception as exc:
            if self.stopped is not None:
                return
            if self._expired is not None:
                raise self.deadlines.error(self._expired, has_content, self.target) from None
            raise self._transport_error(exc, is_started=True) from None
        finally:
            self._is_waiting = False
        if not data:
            self._is_at_end = True
            return
        self._num_read += len(data)
        try:
            self._events.extend(self._parser.feed(data))
        except SSEError as exc:
            raise StreamInterruptedError(
                f"{self.target}: the upstream sent a malformed event stream ({exc})",
                target=self.target,
                code="malformed_chunk",
            ) from None

    def _arm(self, has_content: bool) -> None:
        """Before a wait: raises the error of a deadline already passed, else makes sure
        the timer goes off no later than the nearest deadline."""
        deadline, kind = self.deadlines.next(has_content)
        now = time.monotonic()
        if now >= deadline:
            raise self.deadlines.error(kind, has_content, self.target)
        self._has_content = has_content
        if deadline < self._timer_at:
            self._set_timer(deadline, now)

    def _set_timer(self, deadline: float, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(deadline - now, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        """A deadline may have passed: if the reader still waits with nothing buffered,
        closes the response (the read wakes and raises the deadline's error); if events
        moved the deadline, goes off again then."""
        self._timer, self._timer_at = None, math.inf
        response = self._response
        if not self._is_waiting or response is None:
            return  # the next wait arms the timer again
        if response.content.total_bytes != self._num_read:
            return  # bytes arrived: the reader takes them, then arms the timer again
        deadline, kind = self.deadlines.next(self._has_content)
        now = time.monotonic()
        if now < deadline:
            self._set_timer(deadline, now)
            return
        self._expired = kind
        response.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf

    def _transport_error(self, exc: Exception, *, is_started: bool) -> InferlineError:
        return error_from_transport(
            exc, is_started=is_started, target=self.target, secrets=self.secrets
        )


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of an error body; a body cut short is read as far as it went."""
    body = bytearray()
    try:
        while len(body) < limit and (data := await response.content.readany()):
            body += data
    except aiohttp.ClientError:
        pass
    return bytes(body[:limit])
