"""BatchRunner and JobStore with a fake executor: retries, expiry, idempotent lines."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from inferline.jobs import BatchRunner, FileStorage, LineResponse
from inferline.store import connect, migrate
from inferline.store.jobs import JobStore, LineResult


class FakeExecutor:
    """Answers 200 with a usage block; the first ``failures`` calls per line answer 503
    (``code``: ``overloaded``, retried; ``engine_dead``: the server cannot answer now)."""

    def __init__(self, failures: int = 0, delay_s: float = 0.0, code: str = "overloaded") -> None:
        self.failures, self.delay_s, self.code = failures, delay_s, code
        self.calls: dict[str, int] = {}

    async def __call__(self, url: str, body: dict[str, Any]) -> LineResponse:
        key = body["messages"][0]["content"]
        self.calls[key] = self.calls.get(key, 0) + 1
        await asyncio.sleep(self.delay_s)
        if self.calls[key] <= self.failures:
            error = {"message": "busy", "type": "overloaded_error", "code": self.code}
            return LineResponse(503, {"error": error}, retry_after_s=0.01)
        usage = {"prompt_tokens": 3, "completion_tokens": 2}
        return LineResponse(200, {"id": f"chatcmpl-{key}", "choices": [], "usage": usage})


def setup(tmp_path: Path, executor: FakeExecutor, num_lines: int, expires_in_s: int = 3600):  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'jobs.db'}")
    migrate(engine)
    store = JobStore(engine)
    files = FileStorage(store, tmp_path / "files")
    lines = [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}}
        for i in range(num_lines)
    ]  # fmt: skip
    source = files.add("".join(json.dumps(x) + "\n" for x in lines).encode(), "in", "batch")
    now = int(time.time())
    store.create_batch(
        {"id": "batch_t", "status": "validating", "endpoint": "/v1/chat/completions",
         "input_file_id": source["id"], "completion_window": "24h", "created_at": now,
         "expires_at": now + expires_in_s, "metadata": None}
    )  # fmt: skip
    runner = BatchRunner(store, files, executor, max_in_flight=4, retry_delay_s=0.01,
                         poll_interval_s=0.05)  # fmt: skip
    return store, files, runner


async def until_final(store: JobStore, runner: BatchRunner) -> dict[str, Any]:
    await runner.start()
    try:
        for _ in range(200):
            row = store.get_batch("batch_t")
            assert row is not None
            if row["status"] in ("completed", "failed", "expired", "cancelled"):
                return row
            await asyncio.sleep(0.05)
        raise AssertionError(f"still {row['status']}")
    finally:
        await runner.stop()


def test_server_side_failures_are_retried_and_counted_once(tmp_path: Path) -> None:
    executor = FakeExecutor(failures=2)
    store, files, runner = setup(tmp_path, executor, num_lines=10)
    row = asyncio.run(until_final(store, runner))
    assert row["status"] == "completed" and row["error_file_id"] is None
    assert store.counts("batch_t") == {
        "total": 10, "completed": 10, "failed": 0,
        "input_tokens": 30, "cached_tokens": 0, "output_tokens": 20,
    }  # fmt: skip
    assert set(executor.calls.values()) == {3}
    output = Path(files.get(row["output_file_id"])["path"]).read_text().splitlines()
    assert sorted(json.loads(x)["custom_id"] for x in output) == sorted(f"c{i}" for i in range(10))


def test_a_job_past_its_window_expires_with_its_lines_in_the_error_file(tmp_path: Path) -> None:
    store, files, runner = setup(tmp_path, FakeExecutor(), num_lines=3, expires_in_s=-1)
    row = asyncio.run(until_final(store, runner))
    assert row["status"] == "expired" and row["expired_at"] is not None
    errors = [json.loads(x) for x in Path(files.get(row["error_file_id"])["path"]).read_text()
              .splitlines()]  # fmt: skip
    assert all(e["error"]["code"] == "batch_expired" for e in errors)
    assert row["output_file_id"] is None


def test_a_line_result_is_recorded_once(tmp_path: Path) -> None:
    store, _, runner = setup(tmp_path, FakeExecutor(), num_lines=1)
    assert store.start_batch("batch_t", [(1, "c0", {"model": "m"})])
    assert not store.start_batch("batch_t", [(1, "c0", {"model": "m"})])  # not twice
    assert store.record_line("batch_t", 1, LineResult(200, {"n": 1}))
    assert not store.record_line("batch_t", 1, LineResult(200, {"n": 2}))
    (line,) = store.finished_lines("batch_t")
    assert line["response"] == {"n": 1}


def test_a_dead_engine_pauses_lines_instead_of_failing_them(tmp_path: Path) -> None:
    """503 engine_dead is not a line's result: it stays pending and runs once the server can
    answer again (before the fix, 3 retries then a permanent failure)."""
    executor = FakeExecutor(failures=4, code="engine_dead")
    store, _, runner = setup(tmp_path, executor, num_lines=3)
    row = asyncio.run(until_final(store, runner))
    assert row["status"] == "completed"
    assert store.counts("batch_t")["completed"] == 3 and store.counts("batch_t")["failed"] == 0
    assert all(calls == 5 for calls in executor.calls.values())


class SlowPendingStore(JobStore):
    """Reads the pending lines, then takes a while to return them (a busy database)."""

    def pending_lines(self, batch_id: str, limit: int):  # type: ignore[no-untyped-def]
        lines = super().pending_lines(batch_id, limit)
        time.sleep(0.05)  # lines finishing meanwhile are still listed
        return lines


def test_a_line_finished_during_the_pending_query_is_not_run_again(tmp_path: Path) -> None:
    executor = FakeExecutor()
    store, files, _ = setup(tmp_path, executor, num_lines=12)
    slow = SlowPendingStore(store.engine)
    runner = BatchRunner(slow, files, executor, max_in_flight=4, poll_interval_s=0.05)
    row = asyncio.run(until_final(slow, runner))
    assert row["status"] == "completed"
    assert set(executor.calls.values()) == {1}, executor.calls
