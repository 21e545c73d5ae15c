"""The million-row part of `trace_store.py`: the file generated, the traces API's queries
over it, timed in process with their query plans."""

from __future__ import annotations

import math
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import event
from trace_rows import (
    ATTEMPT_COLUMNS,
    COMMON_WORD,
    DAY,
    MISSING_WORD,
    RARE_WORD,
    REQUEST_COLUMNS,
    RowMaker,
)

from inferline.store import (
    connect,
    migrate,
)
from inferline.store.traces import TraceFilter, TraceStore


def generate(path: Path, rows: int, maker: RowMaker, chunk: int = 50_000) -> dict[str, Any]:
    """``rows`` requests over 30 days ending now, in id order, in big transactions."""
    path.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    engine = connect(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    insert_request = _insert_sql("requests", REQUEST_COLUMNS)
    insert_attempt = _insert_sql("request_attempts", ATTEMPT_COLUMNS)
    started = time.perf_counter()
    end = time.time()
    begin = end - 30 * DAY
    attempts = 0
    for first in range(0, rows, chunk):
        batch: list[tuple[Any, ...]] = []
        tried: list[tuple[Any, ...]] = []
        for i in range(first, min(rows, first + chunk)):
            progress = i / max(1, rows - 1)
            row, attempts_of = maker.row(begin + progress * 30 * DAY, progress)
            batch.append(tuple(row[c] for c in REQUEST_COLUMNS))
            tried.extend(tuple(a[c] for c in ATTEMPT_COLUMNS) for a in attempts_of)
        with conn:
            conn.executemany(insert_request, batch)
            conn.executemany(insert_attempt, tried)
        attempts += len(tried)
        print(f"  generated {first + len(batch):,} rows", file=sys.stderr, flush=True)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return {"rows": rows, "attempts": attempts, "seconds": time.perf_counter() - started,
            "bytes": path.stat().st_size}  # fmt: skip


def _insert_sql(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


@dataclass(frozen=True)
class Query:
    """One typical listing: the store's filter and the same as HTTP query parameters."""

    name: str
    where: TraceFilter
    params: dict[str, Any]
    scan: bool = False  # a text search without a time range: scans every row


def _query(name: str, scan: bool = False, **params: Any) -> Query:
    """The filter for ``params`` (HTTP names: ``q``, ``before``, ``min_latency_ms``)."""
    renames = {"q": "text", "before": "before_id"}
    kwargs = {renames.get(k, k): v for k, v in params.items() if k != "min_latency_ms"}
    if "min_latency_ms" in params:
        kwargs["min_latency_s"] = params["min_latency_ms"] / 1000
    return Query(name, TraceFilter(**kwargs), params, scan)


def queries(path: Path) -> list[Query]:
    """The typical listings, with values picked from the generated file."""
    conn = sqlite3.connect(path)

    def one(sql: str, *params: Any) -> Any:
        return conn.execute(sql, params).fetchone()

    newest, top_id = one("SELECT max(created_at), max(id) FROM requests")
    keys = conn.execute(
        "SELECT key_id FROM requests WHERE id > ? AND key_id IS NOT NULL GROUP BY key_id "
        "ORDER BY count(*) DESC", (top_id - 200_000,)).fetchall()  # fmt: skip
    task = one("SELECT task_id FROM requests WHERE task_id IS NOT NULL AND id < ? "
               "ORDER BY id DESC LIMIT 1", top_id // 2)[0]  # fmt: skip
    trace = one("SELECT trace_id FROM requests WHERE id = ?", top_id // 3)[0]
    conn.close()
    common_key, rare_key = keys[5][0], keys[-1][0]
    hour_ago, day_ago, mid = newest - 3600, newest - DAY, newest - 15 * DAY
    return [
        _query("no filter (first page)"),
        _query("route=chat (40%)", route="chat"),
        _query("route=legal (1%)", route="legal"),
        _query("model=legal (1%)", model="legal"),
        _query("model=none (no match)", model="retired-model"),
        _query("key_id (a top-6 key)", key_id=common_key),
        _query("key_id (the rarest key)", key_id=rare_key),
        _query("team=finance", team="finance"),
        _query("team=none (no match)", team="new-team"),
        _query("task_id", task_id=task),
        _query("trace_id", trace_id=trace),
        _query("status=error", status="error"),
        _query("status=200", status=200),
        _query("status=504", status=504),
        _query("min_latency 10 s", min_latency_ms=10_000),
        _query("min_latency 60 s", min_latency_ms=60_000),
        _query("prompt_id", prompt_id="sql-writer"),
        _query("prompt_id+version", prompt_id="sql-writer", prompt_version=2),
        _query("last 1 hour", since=hour_ago),
        _query("1 hour, 15 days ago", since=mid, until=mid + 3600),
        _query("1 day, 15 days ago", since=mid, until=mid + DAY),
        _query("7 days, 15 days ago", since=mid, until=mid + 7 * DAY),
        _query("until 15 days ago", until=mid),
        _query("status=error, last 10 min", status="error", since=newest - 600),
        _query("status=error, last 1 hour", status="error", since=hour_ago),
        _query("route=chat+error+1 day", route="chat", status="error", since=day_ago),
        _query("route=legal+error+1 day", route="legal", status="error", since=day_ago),
        _query("key+route+since 1 day", key_id=common_key, route="code", since=day_ago),
        _query("min_latency 60 s, 1 day", min_latency_ms=60_000, since=day_ago),
        _query("min_latency 60 s, until 15 days ago", min_latency_ms=60_000, until=mid),
        _query("team=none, last 1 hour", team="new-team", since=hour_ago),
        _query(
            "team+status=429, 15 days ago", team="ml", status=429, since=mid, until=mid + DAY
        ),  # fmt: skip
        _query("deep page (500k down)", before=top_id - 500_000),
        _query("deep page + route=chat", route="chat", before=top_id - 500_000),
        _query("page of 500", limit=500),
        _query(f"q={COMMON_WORD} (2%)", q=COMMON_WORD),
        _query(f"q={RARE_WORD}, 1 hour", q=RARE_WORD, since=mid, until=mid + 3600),
        _query(f"q={MISSING_WORD}, 1 hour", q=MISSING_WORD, since=mid, until=mid + 3600),
        _query(f"q={MISSING_WORD}, 1 day", q=MISSING_WORD, since=mid, until=mid + DAY),
        _query(f"q={RARE_WORD} (0.05%), all", scan=True, q=RARE_WORD),
        _query(f"q={MISSING_WORD} (none), all", scan=True, q=MISSING_WORD),
    ]


def percentiles(values: list[float], ranks: tuple[int, ...] = (50, 95, 100)) -> dict[str, float]:
    """Nearest-rank percentiles (100: the maximum) and the mean."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {f"p{p}" if p < 100 else "max": ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
           for p in ranks}  # fmt: skip
    out["mean"] = sum(ordered) / len(ordered)
    return out


def interleaved(
    names: list[str], calls: dict[str, Callable[[], int]], runs: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Each call ``runs[name]`` times, round-robin (drift hits all alike); ms and rows."""
    times: dict[str, list[float]] = {n: [] for n in names}
    rows: dict[str, int] = {}
    for name in names:  # warm-up
        rows[name] = calls[name]()
    for i in range(max(runs.values())):
        for name in names:
            if i < runs[name]:
                started = time.perf_counter()
                calls[name]()
                times[name].append((time.perf_counter() - started) * 1000)
    return {n: {**percentiles(times[n]), "runs": len(times[n]), "rows": rows[n]} for n in names}


def store_figures(path: Path, items: list[Query], runs: int) -> dict[str, Any]:
    """`TraceStore.list` for each query and `TraceStore.get`, plus each query's plan."""
    engine = connect(f"sqlite:///{path}")
    store = TraceStore(engine)

    def listing(where: TraceFilter) -> int:
        return len(store.list(where)[0])

    def one(request_id: str) -> int:
        return len((store.get(request_id) or {})["attempts"])

    calls: dict[str, Callable[[], int]] = {q.name: partial(listing, q.where) for q in items}
    cycle = iter(_sample_request_ids(path) * (runs + 2))
    calls["get by id (with attempts)"] = lambda: one(next(cycle))
    names = list(calls)
    result = interleaved(names, calls, dict.fromkeys(names, runs))
    for q in items:
        result[q.name]["plan"] = query_plan(store, q.where)
    engine.dispose()
    return result


def _sample_request_ids(path: Path, n: int = 100) -> list[str]:
    conn = sqlite3.connect(path)
    top = int(conn.execute("SELECT max(id) FROM requests").fetchone()[0])
    rng = random.Random(3)
    picks = [rng.randrange(1, top + 1) for _ in range(n)]
    found = [conn.execute("SELECT request_id FROM requests WHERE id = ?", (i,)).fetchone()[0]
             for i in picks]  # fmt: skip
    conn.close()
    return found


def query_plan(store: TraceStore, where: TraceFilter) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of each statement `TraceStore.list` runs for ``where``."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        statements.append((sql, params))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        store.list(where)
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    plans = []
    with store.engine.connect() as conn:
        for sql, params in statements:
            raw = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            plans.append(" / ".join(str(row[-1]) for row in raw))
    return plans
