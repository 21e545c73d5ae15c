"""`TraceStore.list` against a plain Python filter of the same rows, on both of its plans
(a narrow range read through its index, or newest first by id), and the plans SQLite picks
with m009's indexes (no sort of every match, no scan of the whole table)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event

from inferline.store import AttemptRecord, RequestLog, RequestRecord, connect, migrate
from inferline.store import traces as traces_module
from inferline.store.traces import TraceFilter, TraceStore

NOW = 1_800_000_000.0
ROUTES = ("chat", "chat", "chat", "code", "legal")
TEAMS = ("search", "ml", None)


def _record(rng: random.Random, i: int) -> RequestRecord:
    status = 200 if rng.random() < 0.9 else rng.choice((429, 502))
    return RequestRecord(
        request_id=f"chatcmpl-{i}",
        created_at=NOW - 3600 + i * 3 + rng.random() * 10,  # a little out of id order
        model=rng.choice(ROUTES),
        endpoint="/v1/chat/completions",
        status_code=status,
        route=rng.choice(ROUTES),
        team=rng.choice(TEAMS),
        key_id=rng.choice(("key_a", "key_b")),
        total_time_s=rng.lognormvariate(0, 1),
        prompt=f"question {i}" + (" invoice" if i % 7 == 0 else ""),
        output="an answer",
        prompt_id="triage" if i % 3 == 0 else None,
        prompt_version=1 + i % 2 if i % 3 == 0 else None,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> TraceStore:
    path: Path = tmp_path_factory.mktemp("traces") / "log.db"
    engine = connect(f"sqlite:///{path}")
    migrate(engine)
    rng = random.Random(5)
    records = [_record(rng, i) for i in range(1, 1201)]
    attempts = [AttemptRecord(r.request_id, 1, "t", "first", r.created_at, "ok") for r in records]
    RequestLog(engine).insert_many(records, attempts)
    return TraceStore(engine)


def _expected(store: TraceStore, where: TraceFilter) -> list[int]:
    """Every matching id, newest first, filtered in Python."""
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(store.requests.select())]
    checks = {
        "since": lambda r, v: r["created_at"] >= v,
        "until": lambda r, v: r["created_at"] < v,
        "route": lambda r, v: r["route"] == v,
        "model": lambda r, v: r["model"] == v,
        "team": lambda r, v: r["team"] == v,
        "key_id": lambda r, v: r["key_id"] == v,
        "prompt_id": lambda r, v: r["prompt_id"] == v,
        "prompt_version": lambda r, v: r["prompt_version"] == v,
        "status": lambda r, v: r["status_code"] >= 400 if v == "error" else r["status_code"] == v,
        "min_latency_s": lambda r, v: r["total_time_s"] >= v,
        "text": lambda r, v: v in (r["prompt"] or "") or v in (r["output"] or ""),
        "before_id": lambda r, v: r["id"] < v,
    }
    kept = [
        r["id"]
        for r in rows
        if all(
            check(r, getattr(where, name))
            for name, check in checks.items()
            if getattr(where, name) is not None
        )
    ]
    return sorted(kept, reverse=True)


def _walk(store: TraceStore, where: TraceFilter) -> list[int]:
    """Every page of ``where``, following the cursors."""
    ids: list[int] = []
    before = where.before_id
    while True:
        page, more = store.list(TraceFilter(**{**where.__dict__, "before_id": before}))
        ids += [t["cursor"] for t in page]
        if not more:
            return ids
        before = page[-1]["cursor"]


FILTERS: list[dict[str, Any]] = [
    {},
    {"route": "chat"},
    {"route": "legal", "status": "error"},
    {"model": "code", "team": "ml"},
    {"team": "nobody"},
    {"status": 200},
    {"status": "error"},
    {"status": "error", "since": NOW - 600},
    {"status": 429, "since": NOW - 3000, "until": NOW - 1200},
    {"min_latency_s": 5.0},
    {"min_latency_s": 0.1, "since": NOW},
    {"since": NOW - 900},
    {"until": NOW - 1800},
    {"since": NOW - 2000, "until": NOW - 1000, "route": "chat"},
    {"prompt_id": "triage", "prompt_version": 2},
    {"text": "invoice", "since": NOW - 1800},
    {"key_id": "key_b", "before_id": 600},
]


@pytest.mark.parametrize("narrow_rows", [5, 100_000])
@pytest.mark.parametrize("fields", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_pages_hold_exactly_the_matching_rows_newest_first(
    store: TraceStore, fields: dict[str, Any], narrow_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Either plan (a range read through its index, or newest first) gives the same pages."""
    monkeypatch.setattr(traces_module, "NARROW_ROWS", narrow_rows)
    where = TraceFilter(**fields, limit=37)
    assert _walk(store, where) == _expected(store, where)


def _plans(engine: Engine, where: TraceFilter, store: TraceStore) -> str:
    """EXPLAIN QUERY PLAN of each statement ``store.list(where)`` runs (`` | `` between)."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        statements.append((sql, params))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        store.list(where)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    with engine.connect() as conn:
        return " | ".join(
            " / ".join(
                str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
            )
            for sql, params in statements
        )


@pytest.mark.parametrize(
    ("fields", "index"),
    [
        ({"route": "chat"}, "ix_requests_route_id"),
        ({"status": 200}, "ix_requests_status_id"),
        ({"team": "ml"}, "ix_requests_team_id"),
        ({"model": "code"}, "ix_requests_model_id"),
    ],
)
def test_an_equality_filter_walks_its_index_in_id_order(
    store: TraceStore, fields: dict[str, Any], index: str
) -> None:
    plan = _plans(store.engine, TraceFilter(**fields), store)
    assert f"USING COVERING INDEX {index}" in plan and "TEMP B-TREE" not in plan


@pytest.mark.parametrize(
    ("fields", "index"),
    [
        ({"status": "error", "since": NOW - 60}, "ix_requests_created_at"),
        ({"team": "nobody", "since": NOW - 60}, "ix_requests_created_at"),
        ({"until": NOW - 3000}, "ix_requests_created_at"),
        ({"min_latency_s": 1000.0}, "ix_requests_total_time"),
        ({"min_latency_s": 1000.0, "until": NOW - 60}, "ix_requests_total_time"),
    ],
)
def test_a_range_few_rows_pass_is_read_through_its_index(
    store: TraceStore, fields: dict[str, Any], index: str
) -> None:
    """Not newest first by id, which would scan the whole table for a page of few matches."""
    plan = _plans(store.engine, TraceFilter(**fields), store)
    listing = plan.split(" | ")[-1]
    assert index in listing and "SCAN requests" not in listing, plan
