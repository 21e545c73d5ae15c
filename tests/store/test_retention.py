"""The request log's retention: by age and by row count, attempts with their requests,
in batches, other tables untouched; and the pruner service of the server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from inferline.server.retention import LogPruner, retention_extension
from inferline.store import AttemptRecord, RequestLog, RequestRecord, connect, migrate
from inferline.store.retention import prune_log


def filled(tmp_path: Path, n: int = 100) -> tuple[object, RequestLog]:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database)
    log = RequestLog(database)
    records = [RequestRecord(f"r{i}", 1000.0 + i, "m", "/v1/chat/completions", 200)
               for i in range(n)]  # fmt: skip
    attempts = [AttemptRecord(f"r{i}", k, "t", "first", 1000.0 + i, "ok")
                for i in range(n) for k in (1, 2)]  # fmt: skip
    log.insert_many(records, attempts)
    return database, log


def counts(database: object) -> tuple[int, int, int]:
    with database.connect() as conn:  # type: ignore[attr-defined]
        requests = conn.execute(text("SELECT count(*), min(created_at) FROM requests")).one()
        attempts = conn.execute(select(func.count()).select_from(text("request_attempts")))
        return requests[0], attempts.scalar(), int(requests[1] or 0)


def test_pruning_by_age_and_by_rows(tmp_path: Path) -> None:
    database, _ = filled(tmp_path)
    aged = prune_log(database, max_age_s=50, now=1100.0, batch_rows=7)  # created < 1050
    assert (aged.requests, aged.attempts) == (50, 100)
    assert counts(database) == (50, 100, 1050)
    capped = prune_log(database, max_rows=20, batch_rows=7)
    assert capped.requests == 30 and counts(database) == (20, 40, 1080)
    assert prune_log(database, max_age_s=50, max_rows=20, now=1100.0).requests == 0
    assert prune_log(database) == prune_log(database, max_rows=10**9)


def test_the_service_prunes_at_start_and_reports(tmp_path: Path) -> None:
    database, _ = filled(tmp_path)
    pruner = LogPruner(database, max_rows=10, interval_s=3600)  # type: ignore[arg-type]
    extension = retention_extension(pruner)
    app = FastAPI()
    app.include_router(extension.router)
    app.state.retention = pruner

    async def run() -> None:
        await pruner.start()
        for _ in range(100):
            if pruner.last is not None:
                break
            await asyncio.sleep(0.02)
        await pruner.stop()

    asyncio.run(run())
    assert counts(database)[0] == 10
    status = TestClient(app).get("/admin/retention").json()
    assert status["max_rows"] == 10 and status["last"]["requests"] == 90
