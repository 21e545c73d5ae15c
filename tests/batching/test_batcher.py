"""The dynamic batcher with a fake model: sizes, waits, failures, cancellation, overload."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from inferline.batching import BatcherConfig, BatchReport, DynamicBatcher
from inferline.core.errors import InvalidParameterError, OverloadedError


class FakeModel:
    """Doubles numbers; records every batch; fails rows equal to "bad"."""

    def __init__(self, delay_s: float = 0.0, raise_on: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.delay_s = delay_s
        self.raise_on = raise_on  # a row value that makes the whole call raise
        self.lock = threading.Lock()

    def __call__(self, rows: list[Any]) -> Sequence[Any]:
        with self.lock:
            self.batches.append(list(rows))
        time.sleep(self.delay_s)
        if self.raise_on is not None and self.raise_on in rows:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"bad row {r}") if r == "bad" else r * 2 for r in rows]


async def _with_batcher(model: FakeModel, config: BatcherConfig, body: Any) -> Any:
    reports: list[BatchReport] = []
    batcher: DynamicBatcher[Any, Any] = DynamicBatcher(model, config, reports.append)
    await batcher.start()
    try:
        return await body(batcher, reports)
    finally:
        await batcher.stop()


def test_batches_never_exceed_the_size_under_200_concurrent_callers() -> None:
    model = FakeModel(delay_s=0.002)
    config = BatcherConfig(max_batch_size=8, max_wait_ms=5, adaptive=False)
    rng = random.Random(0)
    requests = [[rng.randrange(100) for _ in range(rng.randint(1, 5))] for _ in range(200)]

    async def body(batcher: DynamicBatcher[Any, Any], reports: list[BatchReport]) -> None:
        results = await asyncio.gather(*(batcher.submit(rows) for rows in requests))
        assert results == [[r * 2 for r in rows] for rows in requests]
        assert max(len(b) for b in model.batches) <= 8
        assert sum(len(b) for b in model.batches) == sum(len(r) for r in requests)
        assert len(model.batches) < 200 / 2  # they were grouped
        assert all(r.num_rows <= 8 for r in reports)

    asyncio.run(_with_batcher(model, config, body))


def test_a_request_larger_than_a_batch_is_split_and_kept_in_order() -> None:
    model = FakeModel()

    async def body(batcher: DynamicBatcher[Any, Any], _: list[BatchReport]) -> None:
        assert await batcher.submit(list(range(20))) == [2 * i for i in range(20)]
        assert [len(b) for b in model.batches] == [8, 8, 4]

    asyncio.run(_with_batcher(model, BatcherConfig(max_batch_size=8, max_wait_ms=1), body))


@pytest.mark.parametrize("adaptive", [False, True])
def test_a_lone_request_waits_at_most_the_window(adaptive: bool) -> None:
    config = BatcherConfig(max_batch_size=8, max_wait_ms=50, adaptive=adaptive)

    async def body(batcher: DynamicBatcher[Any, Any], _: list[BatchReport]) -> None:
        waits = []
        for _ in range(3):  # light traffic: requests 100 ms apart
            start = time.monotonic()
            assert await batcher.submit([1]) == [2]
            waits.append(time.monotonic() - start)
            await asyncio.sleep(0.1)
        assert max(waits) < 0.05 + 0.03
        if adaptive:  # company is not coming, so nobody waits the window
            assert waits[-1] < 0.02
        else:
            assert min(waits) >= 0.045

    asyncio.run(_with_batcher(FakeModel(), config, body))


def test_adaptive_a_lone_closed_loop_client_never_waits_the_window() -> None:
    """One client sending each request as soon as the last is answered (gaps << window)."""
    config = BatcherConfig(max_batch_size=8, max_wait_ms=50, adaptive=True)

    async def body(batcher: DynamicBatcher[Any, Any], reports: list[BatchReport]) -> None:
        start = time.monotonic()
        for i in range(20):
            assert await batcher.submit([i]) == [2 * i]
        assert time.monotonic() - start < 20 * 0.05 / 4
        assert max(r.queue_wait_s for r in reports) < 0.02

    asyncio.run(_with_batcher(FakeModel(), config, body))


def test_adaptive_still_batches_concurrent_callers() -> None:
    model = FakeModel(delay_s=0.005)
    config = BatcherConfig(max_batch_size=16, max_wait_ms=20, adaptive=True)

    async def client(batcher: DynamicBatcher[Any, Any], index: int) -> None:
        for i in range(10):
            assert await batcher.submit([index * 100 + i]) == [2 * (index * 100 + i)]

    async def body(batcher: DynamicBatcher[Any, Any], reports: list[BatchReport]) -> None:
        await asyncio.gather(*(client(batcher, c) for c in range(16)))
        sizes = [r.num_rows for r in reports]
        assert sum(sizes) == 160 and max(sizes) <= 16
        assert sum(sizes) / len(sizes) >= 4  # mostly shared batches, not one call per row

    asyncio.run(_with_batcher(model, config, body))


def test_submit_traced_reports_the_batch_ids() -> None:
    config = BatcherConfig(max_batch_size=4, max_wait_ms=1, adaptive=False)

    async def body(batcher: DynamicBatcher[Any, Any], reports: list[BatchReport]) -> None:
        results, batch_ids = await batcher.submit_traced(list(range(10)))
        assert results == [2 * i for i in range(10)] and batch_ids == [0, 1, 2]
        assert [r.batch_id for r in reports] == [0, 1, 2]

    asyncio.run(_with_batcher(FakeModel(), config, body))


def test_a_failing_row_fails_alone() -> None:
    model = FakeModel(delay_s=0.01)
    config = BatcherConfig(max_batch_size=16, max_wait_ms=20, adaptive=False)

    async def body(batcher: DynamicBatcher[Any, Any], _: list[BatchReport]) -> None:
        results = await asyncio.gather(
            batcher.submit([1, 2]), batcher.submit(["bad"]), batcher.submit([3]),
            return_exceptions=True,
        )  # fmt: skip
        assert results[0] == [2, 4] and results[2] == [6]
        assert isinstance(results[1], ValueError)
        assert len(model.batches) == 1  # they did share the batch

    asyncio.run(_with_batcher(model, config, body))


def test_a_batch_that_raises_is_retried_request_by_request() -> None:
    model = FakeModel(raise_on=13)
    config = BatcherConfig(max_batch_size=16, max_wait_ms=20, adaptive=False)

    async def body(batcher: DynamicBatcher[Any, Any], _: list[BatchReport]) -> None:
        results = await asyncio.gather(
            batcher.submit([1]), batcher.submit([13]), batcher.submit([2, 3]),
            return_exceptions=True,
        )  # fmt: skip
        assert results[0] == [2] and results[2] == [4, 6]
        assert isinstance(results[1], RuntimeError)

    asyncio.run(_with_batcher(model, config, body))


def test_a_cancelled_waiting_request_is_removed() -> None:
    model = FakeModel(delay_s=0.2)
    config = BatcherConfig(max_batch_size=1, max_wait_ms=0, adaptive=False)

    async def body(batcher: DynamicBatcher[Any, Any], _: list[BatchReport]) -> None:
        first = asyncio.ensure_future(batcher.submit([1]))  # occupies the model for 0.2 s
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.submit([99]))
        await asyncio.sleep(0.01)
        assert batcher.queued_rows == 1
        waiting.cancel()
        await asyncio.sleep(0.01)
        assert batcher.queued_rows == 0
        assert await first == [2]
        assert await batcher.submit([5]) == [10]
        assert [99] not in model.batches

    asyncio.run(_with_batcher(model, config, body))


def test_a_full_queue_is_refused_at_once() -> None:
    model = FakeModel(delay_s=0.2)
    config = BatcherConfig(max_batch_size=2, max_wait_ms=0, max_queue_rows=4, adaptive=False)

    async def body(batcher: DynamicBatcher[Any, Any], _: list[BatchReport]) -> None:
        running = asyncio.ensure_future(batcher.submit([1, 2]))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit([3, 4, 5, 6]))
        await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await batcher.submit([7])
        assert await running == [2, 4] and await queued == [6, 8, 10, 12]

    asyncio.run(_with_batcher(model, config, body))


def test_settings_are_validated() -> None:
    with pytest.raises(InvalidParameterError):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(InvalidParameterError):
        BatcherConfig(max_batch_size=8, max_queue_rows=4)

    async def body(batcher: DynamicBatcher[Any, Any], _: list[BatchReport]) -> None:
        with pytest.raises(InvalidParameterError):
            await batcher.submit([])

    asyncio.run(_with_batcher(FakeModel(), BatcherConfig(), body))
