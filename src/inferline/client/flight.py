"""One upstream request in flight: a task sends it and reads its events into a queue.

The task owns the HTTP response; the stream (`inferline.client.stream`) reads the queue
under its deadlines. Cancelling the task (abort, close, timeout) closes the response, so
the upstream sees the connection go and stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from inferline.client.errors import error_from_response, error_from_transport
from inferline.client.sse import SSEError, SSEEvent, SSEParser
from inferline.core.errors import InferlineError, StreamInterruptedError

MAX_ERROR_BODY_BYTES = 64 * 1024
CLOSE_TIMEOUT_S = 1.0
DRAIN_AFTER_DONE_S = 1.0


@dataclass(frozen=True)
class Started:
    """The upstream answered 2xx; events follow."""


@dataclass(frozen=True)
class BodyEnd:
    """The response body ended (with or without ``[DONE]``)."""


@dataclass(frozen=True)
class Aborted:
    """`UpstreamClient.abort` stopped the request."""


Item = Started | SSEEvent | BodyEnd | Aborted | InferlineError


class Flight:
    """Sends ``request`` on ``http`` at once and queues what comes back: `Started`, then
    `SSEEvent`s, then `BodyEnd`; or one error (typed, see `inferline.client.errors`).

    Invariant: the task always ends by queueing an item or by being cancelled, so a reader
    with a deadline never waits longer than that deadline.
    """

    def __init__(
        self,
        request_id: str,
        http: httpx.AsyncClient,
        request: httpx.Request,
        *,
        target: str,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.request_id, self.target, self.secrets = request_id, target, secrets
        self.queue: asyncio.Queue[Item] = asyncio.Queue()
        self.stopped: Aborted | InferlineError | None = None  # ends the stream at once
        self._task = asyncio.ensure_future(self._run(http, request))

    async def next_item(self, deadline: float) -> Item:
        """The next item, waiting until ``deadline`` (``time.monotonic()``); raises
        ``TimeoutError`` past it. Once stopped, always the stopping item."""
        if self.stopped is not None:
            return self.stopped
        async with asyncio.timeout_at(deadline):
            item = await self.queue.get()
        return self.stopped or item

    def stop(self, item: Aborted | InferlineError) -> None:
        """Ends the request now: the response is closed, the reader gets ``item``."""
        if self.stopped is None:
            self.stopped = item
        self._task.cancel()
        self.queue.put_nowait(item)

    def cancel(self) -> None:
        """Closes the response without waiting (safe while being cancelled)."""
        self._task.cancel()

    async def close(self) -> None:
        """Closes the response and waits (briefly) until it is closed."""
        self._task.cancel()
        await asyncio.wait([self._task], timeout=CLOSE_TIMEOUT_S)

    async def _run(self, http: httpx.AsyncClient, request: httpx.Request) -> None:
        response: httpx.Response | None = None
        try:
            response = await http.send(request, stream=True)
            if not response.is_success:
                body = await _read_at_most(response, MAX_ERROR_BODY_BYTES)
                self.queue.put_nowait(
                    error_from_response(
                        response.status_code,
                        response.headers,
                        body,
                        target=self.target,
                        secrets=self.secrets,
                    )
                )
                return
            self.queue.put_nowait(Started())
            await self._read_events(response)
        except Exception as exc:  # anything the transport raises ends the stream, typed
            is_started = response is not None
            self.queue.put_nowait(
                error_from_transport(
                    exc, is_started=is_started, target=self.target, secrets=self.secrets
                )
            )
        finally:
            if response is not None:
                await response.aclose()

    async def _read_events(self, response: httpx.Response) -> None:
        parser = SSEParser()
        chunks = response.aiter_bytes()
        async for data in chunks:
            try:
                events = parser.feed(data)
            except SSEError as exc:
                self.queue.put_nowait(
                    StreamInterruptedError(
                        f"{self.target}: the upstream sent a malformed event stream ({exc})",
                        target=self.target,
                        code="malformed_chunk",
                    )
                )
                return
            for event in events:
                self.queue.put_nowait(event)
            if any(event.data.strip() == "[DONE]" for event in events):
                await _drain(chunks)
                return
        self.queue.put_nowait(BodyEnd())


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Reads what follows ``[DONE]`` (the body's end, at most `DRAIN_AFTER_DONE_S`): a
    response read to its end leaves its connection in the pool for the next request."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(DRAIN_AFTER_DONE_S):
            async for _ in chunks:
                pass


async def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of an error body; a body cut short is read as far as it went."""
    body = bytearray()
    try:
        async for data in response.aiter_bytes():
            body += data
            if len(body) >= limit:
                break
    except httpx.HTTPError:
        pass
    return bytes(body[:limit])
