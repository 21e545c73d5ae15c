"""The request log: one row per request, and one per attempt, written off the hot path.

`RequestLogWriter.record` only appends to an in-memory queue; a background thread writes
batches. A failed write is logged and dropped: it never fails or slows a request. The queue
is bounded: when the database cannot keep up, the newest records are dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, Table, delete, insert, select

from inferline.store.rollups import fold, upsert

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttemptRecord:
    """One try of a request on one target (``started_at`` is epoch seconds)."""

    request_id: str
    attempt: int
    target: str
    reason: str
    started_at: float
    status: str
    ttft_s: float | None = None
    duration_s: float | None = None
    error_type: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cached_tokens: int = 0
    engine_s: float | None = None  # a local engine's time


@dataclass(frozen=True)
class RequestRecord:
    """What the log keeps about one request (times in seconds; ``created_at`` is epoch)."""

    request_id: str
    created_at: float
    model: str
    endpoint: str
    status_code: int
    finish_reason: str | None = None
    error: str | None = None
    prompt: str | None = None
    output: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    queue_time_s: float | None = None
    ttft_s: float | None = None
    total_time_s: float | None = None
    user_id: str | None = None
    batch_ids: str | None = None  # micro-batched models: the batches the rows ran in
    route: str | None = None
    target: str | None = None  # the model entry that answered
    num_attempts: int = 0
    fallback_reason: str | None = None
    cost_usd: float = 0.0
    key_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    task_id: str | None = None
    team: str | None = None
    cache: str | None = None
    stopped_by: str | None = None
    prompt_id: str | None = None
    prompt_version: int | None = None
    prompt_label: str | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    tpot_s: float | None = None
    preemptions: int = 0
    tool_calls: str | None = None  # JSON
    tool_results: str | None = None  # JSON
    metadata: str | None = None  # JSON
    decision: str | None = None  # what the route's checks decided
    decision_check: str | None = None
    decision_score: float | None = None
    review_id: str | None = None
    checks: str | None = None  # JSON: every check's outcome (and the withheld answer)
    request_body: str | None = None  # JSON: the request as the client sent it (text logged)


_Item = tuple[RequestRecord, tuple[AttemptRecord, ...]]


class RequestLog:
    """Reads and writes ``requests`` and ``request_attempts`` (schema from migrations)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.table = Table("requests", metadata, autoload_with=engine)
        self.attempts = Table("request_attempts", metadata, autoload_with=engine)
        self.outcomes = Table("task_outcomes", metadata, autoload_with=engine)
        self.rollups = Table("request_rollups", metadata, autoload_with=engine)

    def insert_many(
        self, records: list[RequestRecord], attempts: list[AttemptRecord] | None = None
    ) -> None:
        """Writes ``records`` and their attempts in one transaction, with their per-minute
        rollups (`rollups`); a task whose request a check abstained or blocked is recorded
        as failed by that check (unless its outcome was set through the API, which wins)."""
        with self.engine.begin() as conn:
            if records:
                conn.execute(insert(self.table), [asdict(r) for r in records])
                upsert(conn, self.rollups, fold(records))
            if attempts:
                conn.execute(insert(self.attempts), [asdict(a) for a in attempts])
            for record in records:
                if record.task_id and record.decision in ("abstain", "block"):
                    self._failed_by_check(conn, record)

    def _failed_by_check(self, conn: Connection, record: RequestRecord) -> None:
        c = self.outcomes.c
        source = conn.scalar(select(c.source).where(c.task_id == record.task_id))
        if source is not None and not source.startswith("check:"):
            return
        conn.execute(delete(self.outcomes).where(c.task_id == record.task_id))
        conn.execute(insert(self.outcomes).values(
            task_id=record.task_id, success=False, score=record.decision_score,
            comment=f"{record.decision} by check {record.decision_check}",
            source=f"check:{record.decision_check}", key_id=record.key_id,
            recorded_at=record.created_at))  # fmt: skip

    def recent(
        self,
        *,
        limit: int = 20,
        model: str | None = None,
        status_code: int | None = None,
        since: float | None = None,
        key_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest rows first, optionally filtered."""
        query = select(self.table).order_by(self.table.c.id.desc()).limit(limit)
        if key_id is not None:
            query = query.where(self.table.c.key_id == key_id)
        if model is not None:
            query = query.where(self.table.c.model == model)
        if status_code is not None:
            query = query.where(self.table.c.status_code == status_code)
        if since is not None:
            query = query.where(self.table.c.created_at >= since)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def attempts_of(self, request_id: str) -> list[dict[str, Any]]:
        """Every attempt of one request, in order."""
        c = self.attempts.c
        query = select(self.attempts).where(c.request_id == request_id).order_by(c.attempt)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


class RequestLogWriter:
    """Batches records on a background thread; `close` flushes what is left."""

    def __init__(
        self,
        log: RequestLog,
        *,
        batch_size: int = 256,
        flush_interval_s: float = 0.25,
        max_queued: int = 100_000,
    ):
        """``flush_interval_s``: how long the first record of a batch waits for company.

        A write costs about the same for 1 record as for 64 (one transaction), and the
        writer holds the GIL while it runs, so records are written in batches of up to
        ``batch_size`` gathered over ``flush_interval_s``, not one commit per request.
        """
        self.log = log
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.num_failed_writes = 0
        self.num_dropped = 0
        self._queue: queue.Queue[_Item | None] = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._run, name="inferline-request-log", daemon=True)
        self._thread.start()

    def record(self, record: RequestRecord, attempts: tuple[AttemptRecord, ...] = ()) -> None:
        """Queues one record and its attempts (never blocks, never raises)."""
        try:
            self._queue.put_nowait((record, attempts))
        except queue.Full:
            self.num_dropped += 1

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes everything queued so far, then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            batch: list[_Item] = []
            deadline = time.monotonic() + self.flush_interval_s
            try:
                while True:
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                    left = deadline - time.monotonic()
                    if len(batch) >= self.batch_size or left <= 0:
                        break
                    item = self._queue.get(timeout=left)
            except queue.Empty:
                pass
            if batch:
                self._write(batch)

    def _write(self, batch: list[_Item]) -> None:
        records = [record for record, _ in batch]
        attempts = [attempt for _, items in batch for attempt in items]
        try:
            self.log.insert_many(records, attempts)
        except Exception:  # a logging failure must never fail requests
            self.num_failed_writes += len(batch)
            logger.exception("request log: dropped %d records", len(batch))
