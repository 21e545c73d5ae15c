"""The request log's retention as a background service: pruned at start, then every
``interval_s``, off the event loop; ``GET /admin/retention`` says what it last did."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import Engine

from inferline.server.app import Extension
from inferline.store.retention import prune_log

logger = logging.getLogger(__name__)
DAY_S = 86_400.0


class LogPruner:
    """Deletes log rows past ``max_age_days`` or beyond ``max_rows`` (None: no limit)."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_age_days: float | None = None,
        max_rows: int | None = None,
        interval_s: float = 600.0,
    ) -> None:
        self.engine, self.interval_s = engine, interval_s
        self.max_age_s = None if max_age_days is None else max_age_days * DAY_S
        self.max_rows = max_rows
        self.last: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Starts the pruning loop."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stops it (a pass under way finishes its batch on its thread)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def prune_now(self) -> dict[str, Any]:
        """One pass, on a worker thread; what it deleted and how long it took."""
        started = time.monotonic()
        pruned = await asyncio.to_thread(
            prune_log, self.engine, max_age_s=self.max_age_s, max_rows=self.max_rows
        )
        self.last = {"at": time.time(), "requests": pruned.requests,
                     "attempts": pruned.attempts,
                     "duration_s": round(time.monotonic() - started, 3)}  # fmt: skip
        if pruned.requests:
            logger.info("request log: pruned %d requests", pruned.requests)
        return self.last

    async def _loop(self) -> None:
        while True:
            try:
                await self.prune_now()
            except Exception:  # a failed pass is retried at the next interval
                logger.exception("request log: pruning failed")
            await asyncio.sleep(self.interval_s)


router = APIRouter()


@router.get("/admin/retention")
def retention_status(request: Request) -> dict[str, Any]:
    """The retention settings and the last pass."""
    pruner: LogPruner = request.app.state.retention
    return {"max_age_days": None if pruner.max_age_s is None else pruner.max_age_s / DAY_S,
            "max_rows": pruner.max_rows, "interval_s": pruner.interval_s,
            "last": pruner.last}  # fmt: skip


def retention_extension(pruner: LogPruner) -> Extension:
    """The pruner as an app extension (its service and its status route)."""
    return Extension(router, "retention", pruner, service=pruner)
