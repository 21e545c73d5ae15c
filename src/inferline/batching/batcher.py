"""A dynamic batcher: concurrent requests for one model grouped into one call of the model.

Each request brings its own rows (one sentence, or a list of feature rows). The batcher
collects requests until their rows fill ``max_batch_size`` or the first one has waited
``max_wait_ms``, runs the model once on a worker thread (one batch at a time per model, so
requests arriving meanwhile form the next batch), and hands each request its own slice of
the results. A request with more rows than ``max_batch_size`` is split into pieces that
travel in consecutive batches; a batch never holds more rows than ``max_batch_size``.

Failures stay with their request: the model may return an exception in place of a row's
result, and when a whole batch raises, each request in it is retried alone so that only the
one at fault fails. A caller that gives up (cancellation, client disconnect) is removed from
the queue; if its rows are already running, their results are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from inferline.batching.config import BatcherConfig
from inferline.core.errors import InvalidParameterError, OverloadedError

In = TypeVar("In")
Out = TypeVar("Out")

# The model: rows in, one result (or the exception for that row) per row out, in order.
BatchFunction = Callable[[list[In]], Sequence[Any]]


@dataclass(frozen=True)
class BatchReport:
    """What one model call did, for metrics and the request log."""

    batch_id: int
    num_rows: int
    num_requests: int
    queue_wait_s: float  # of the request that waited longest
    compute_s: float


@dataclass(eq=False)
class _Piece:
    """Consecutive rows of one request, queued as a unit."""

    rows: list[Any]
    future: asyncio.Future[list[Any]]
    enqueued: float = field(default_factory=time.monotonic)
    batch_id: int | None = None


class DynamicBatcher(Generic[In, Out]):
    """Groups concurrent `submit` calls into batches for ``run_batch``."""

    def __init__(
        self,
        run_batch: BatchFunction[In],
        config: BatcherConfig,
        on_batch: Callable[[BatchReport], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.config = config
        self.on_batch = on_batch
        self._queue: deque[_Piece] = deque()
        self._queued_rows = 0
        self._wakeup = asyncio.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batcher")
        self._task: asyncio.Task[None] | None = None
        self._next_batch_id = 0
        self._num_in_flight = 0  # submit calls not yet answered
        self._overlap = 0.0  # moving average: did an arrival find another request in flight?

    async def start(self) -> None:
        """Starts the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stops the loop; queued requests fail with `OverloadedError`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            piece = self._queue.popleft()
            if not piece.future.done():
                piece.future.set_exception(OverloadedError("the model is shutting down"))
        self._worker.shutdown(wait=False, cancel_futures=True)

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch (not counting the batch running now)."""
        return self._queued_rows

    async def submit(self, rows: list[In]) -> list[Out]:
        """Results for ``rows``, in order; raises the exception of the first failed row."""
        results, _ = await self.submit_traced(rows)
        return results

    async def submit_traced(self, rows: list[In]) -> tuple[list[Out], list[int]]:
        """`submit`, plus the ids of the batches the rows ran in (for the request log)."""
        if not rows:
            raise InvalidParameterError("the input holds no rows", "input")
        if self._queued_rows + len(rows) > self.config.max_queue_rows:
            raise OverloadedError(
                f"the batching queue is full ({self.config.max_queue_rows} rows); retry later"
            )
        self._note_arrival()
        self._num_in_flight += 1
        loop = asyncio.get_running_loop()
        size = self.config.max_batch_size
        pieces = [
            _Piece(rows[i : i + size], loop.create_future()) for i in range(0, len(rows), size)
        ]
        for piece in pieces:
            self._queue.append(piece)
            self._queued_rows += len(piece.rows)
        self._wakeup.set()
        try:
            results = [await piece.future for piece in pieces]
        finally:  # a cancelled caller: its await cancelled the piece futures it reached
            self._num_in_flight -= 1
            self._withdraw([p for p in pieces if p.future.cancelled() or not p.future.done()])
        batch_ids = sorted({p.batch_id for p in pieces if p.batch_id is not None})
        return [row for piece_results in results for row in piece_results], batch_ids

    def _withdraw(self, pieces: list[_Piece]) -> None:
        """Removes abandoned pieces that are still queued (a cancelled caller)."""
        for piece in pieces:
            piece.future.cancel()
            with contextlib.suppress(ValueError):
                self._queue.remove(piece)
                self._queued_rows -= len(piece.rows)

    def _note_arrival(self) -> None:
        found_company = 1.0 if self._num_in_flight > 0 else 0.0
        self._overlap = 0.8 * self._overlap + 0.2 * found_company

    def _wait_budget_s(self) -> float:
        """How long the first request of a batch may wait for company.

        Adaptive mode: when most recent requests arrived with no other request in flight
        (light traffic, or one client waiting for each answer before it asks again), company
        is not coming and a request goes at once; otherwise it waits up to the window.
        Counting overlap rather than the time between arrivals keeps a lone closed-loop
        client, whose requests follow each other closely, from waiting the window each time.
        """
        window = self.config.max_wait_ms / 1000
        if not self.config.adaptive:
            return window
        return window if self._overlap >= 0.5 else 0.0

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if batch:
                await self._run(batch)

    async def _collect(self) -> list[_Piece]:
        """Waits for a first piece, then for company until the batch is full or time is up."""
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._queue[0].enqueued + self._wait_budget_s()
        while self._queued_rows < self.config.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        batch: list[_Piece] = []
        rows = 0
        while self._queue and rows + len(self._queue[0].rows) <= self.config.max_batch_size:
            piece = self._queue.popleft()
            self._queued_rows -= len(piece.rows)
            if not piece.future.done():  # a cancelled caller's piece is dropped here
                batch.append(piece)
                rows += len(piece.rows)
        return batch

    async def _run(self, batch: list[_Piece]) -> None:
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        started = time.monotonic()
        rows = [row for piece in batch for row in piece.rows]
        for piece in batch:
            piece.batch_id = batch_id
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._worker, self._call, rows)
        except Exception:
            await self._run_alone(batch)  # so that only the request at fault fails
        else:
            offset = 0
            for piece in batch:
                _settle(piece, results[offset : offset + len(piece.rows)])
                offset += len(piece.rows)
        if self.on_batch is not None:
            self.on_batch(
                BatchReport(
                    batch_id=batch_id,
                    num_rows=len(rows),
                    num_requests=len(batch),
                    queue_wait_s=started - min(p.enqueued for p in batch),
                    compute_s=time.monotonic() - started,
                )
            )

    async def _run_alone(self, batch: list[_Piece]) -> None:
        loop = asyncio.get_running_loop()
        for piece in batch:
            if piece.future.done():
                continue
            try:
                results = await loop.run_in_executor(self._worker, self._call, piece.rows)
            except Exception as error:  # noqa: BLE001 - handed to the caller, not swallowed
                if not piece.future.done():
                    piece.future.set_exception(error)
            else:
                _settle(piece, results)

    def _call(self, rows: list[Any]) -> Sequence[Any]:
        results = self.run_batch(rows)
        if len(results) != len(rows):
            raise RuntimeError(f"the model returned {len(results)} results for {len(rows)} rows")
        return results


def _settle(piece: _Piece, results: Sequence[Any]) -> None:
    """Resolves a piece with its rows' results, or the first row's exception."""
    if piece.future.done():
        return  # the caller gave up while its rows ran
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        piece.future.set_exception(failure)
    else:
        piece.future.set_result(list(results))
