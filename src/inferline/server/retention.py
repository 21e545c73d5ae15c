"""The request log's retention as a background service: pruned at start, then every
``interval_s``, off the event loop; ``GET /admin/retention`` says what it last did."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import Engine

from inferline.server.app import Extension
from inferline.server.periodic import Periodic
from inferline.store.retention import prune_log

logger = logging.getLogger(__name__)
DAY_S = 86_400.0


class LogPruner(Periodic):
    """Deletes log rows past ``max_age_days`` or beyond ``max_rows`` (None: no limit)."""

    name = "request log: pruning"

    def __init__(
        self,
        engine: Engine,
        *,
        max_age_days: float | None = None,
        max_rows: int | None = None,
        interval_s: float = 600.0,
    ) -> None:
        super().__init__(interval_s)
        self.engine = engine
        self.max_age_s = None if max_age_days is None else max_age_days * DAY_S
        self.max_rows = max_rows
        self.last: dict[str, Any] | None = None

    async def run_once(self) -> dict[str, Any]:
        """One pass (see `prune_now`)."""
        return await self.prune_now()

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
