"""Migrations from a blank database, and the request log writer."""

from __future__ import annotations

import dataclasses
import time

from sqlalchemy import inspect

from inferline.store import (
    MIGRATIONS,
    AttemptRecord,
    RequestLog,
    RequestLogWriter,
    RequestRecord,
    connect,
    migrate,
)


def test_migrate_a_blank_database_then_nothing_to_do(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'db' / 'inferline.db'}")
    assert migrate(engine) == [name for name, _ in MIGRATIONS]
    assert migrate(engine) == []
    columns = {c["name"] for c in inspect(engine).get_columns("requests")}
    # the schema the migrations build is exactly what the records write
    assert columns == {"id"} | {f.name for f in dataclasses.fields(RequestRecord)}
    attempts = {c["name"] for c in inspect(engine).get_columns("request_attempts")}
    assert attempts == {"id"} | {f.name for f in dataclasses.fields(AttemptRecord)}


def test_writer_batches_and_flushes_on_close(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(engine)
    log = RequestLog(engine)
    writer = RequestLogWriter(log, batch_size=10, flush_interval_s=0.05)
    for i in range(25):
        writer.record(RequestRecord(f"r{i}", time.time(), "m", "/v1/completions", 200, "stop"))
    writer.close()
    rows = log.recent(limit=100)
    assert len(rows) == 25 and rows[0]["request_id"] == "r24"
    assert [r["request_id"] for r in log.recent(limit=2, status_code=200)] == ["r24", "r23"]
    assert log.recent(model="other") == []


def test_a_failing_database_never_raises_into_requests(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(engine)
    log = RequestLog(engine)
    writer = RequestLogWriter(log, flush_interval_s=0.05)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE requests")
    writer.record(RequestRecord("r", time.time(), "m", "/v1/completions", 200))
    writer.close()
    assert writer.num_failed_writes == 1


def test_attempts_are_written_with_their_request(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(engine)
    log = RequestLog(engine)
    writer = RequestLogWriter(log, flush_interval_s=0.05)
    record = RequestRecord("r1", time.time(), "bot", "/v1/chat/completions", 200, route="bot",
                           target="small", num_attempts=2, cost_usd=0.5)  # fmt: skip
    attempts = (
        AttemptRecord("r1", 1, "partner", "first", time.time(), "error", error_type="rate_limited",
                      cost_usd=0.0),
        AttemptRecord("r1", 2, "small", "fallback", time.time(), "ok", ttft_s=0.1, cost_usd=0.5),
    )  # fmt: skip
    writer.record(record, attempts)
    writer.close()
    (row,) = log.recent()
    assert (row["route"], row["target"], row["num_attempts"]) == ("bot", "small", 2)
    rows = log.attempts_of("r1")
    assert [(a["attempt"], a["target"], a["status"]) for a in rows] == [
        (1, "partner", "error"),
        (2, "small", "ok"),
    ]
