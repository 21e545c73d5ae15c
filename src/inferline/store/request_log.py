"""The request log: one row per request, written off the hot path in batches.

`RequestLogWriter.record` only appends to an in-memory queue; a background thread writes
batches. A failed write is logged and dropped: it never fails or slows a request.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Engine, MetaData, Table, insert, select

logger = logging.getLogger(__name__)


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


class RequestLog:
    """Reads and writes the ``requests`` table (the schema comes from migrations)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = Table("requests", MetaData(), autoload_with=engine)

    def insert_many(self, records: list[RequestRecord]) -> None:
        """Writes ``records`` in one transaction."""
        with self.engine.begin() as conn:
            conn.execute(insert(self.table), [asdict(r) for r in records])

    def recent(
        self,
        *,
        limit: int = 20,
        model: str | None = None,
        status_code: int | None = None,
        since: float | None = None,
    ) -> list[dict[str, Any]]:
        """The newest rows first, optionally filtered."""
        query = select(self.table).order_by(self.table.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(self.table.c.model == model)
        if status_code is not None:
            query = query.where(self.table.c.status_code == status_code)
        if since is not None:
            query = query.where(self.table.c.created_at >= since)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


class RequestLogWriter:
    """Batches records on a background thread; `close` flushes what is left."""

    def __init__(self, log: RequestLog, *, batch_size: int = 64, flush_interval_s: float = 0.5):
        self.log = log
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.num_failed_writes = 0
        self._queue: queue.SimpleQueue[RequestRecord | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="inferline-request-log", daemon=True)
        self._thread.start()

    def record(self, record: RequestRecord) -> None:
        """Queues one record (never blocks, never raises)."""
        self._queue.put(record)

    def close(self, timeout_s: float = 10.0) -> None:
        """Writes everything queued so far, then stops the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[RequestRecord] = []
            try:
                item = self._queue.get(timeout=self.flush_interval_s)
                while True:
                    if item is None:
                        stopping = True
                        break
                    batch.append(item)
                    if len(batch) >= self.batch_size:
                        break
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            if batch:
                self._write(batch)

    def _write(self, batch: list[RequestRecord]) -> None:
        try:
            self.log.insert_many(batch)
        except Exception:  # a logging failure must never fail requests
            self.num_failed_writes += len(batch)
            logger.exception("request log: dropped %d records", len(batch))
