"""The request log as a trace store: how fast it ingests, and how fast ``GET /v1/traces``
answers over a million stored requests (SQLite files, never ``:memory:``).

1. Ingest: `RequestLogWriter` (the server's settings: batches of 256, 0.25 s flush) into a
   new SQLite file, records with 1-3 attempts and realistic fields, without text and with
   ~2 KB of prompt and ~2 KB of output each. *Burst*: ``--ingest-records`` records queued at
   once, timed until `close` has written them all (records/s the writer sustains). *Paced*:
   ``--rates`` records/s offered for ``--paced-seconds``, while a reader polls for new rows
   every 5 ms: the visibility delay (row readable - ``record()`` called), p50 / p99 / max.
   The burst is repeated on the million-row file at the end (bigger indexes).
2. A million rows (``--rows``): generated straight into the migrated schema (executemany,
   50,000 rows a transaction): ~8 routes, ~50 keys in 10 teams (skewed), tasks of 2-10
   requests, 5 prompt ids with versions, ~3% errors, log-normal latencies, 30 days of
   timestamps, 1-3 attempts each, prompt/output text (``--prompt-bytes`` / ``--output-bytes``
   on average). The file lives in ``--db`` (default /tmp); ``--reuse`` keeps an existing one.
3. Queries: `TraceStore.list` / `get` in process, ``--runs`` each, interleaved round-robin
   (p50 / p95 / max ms, rows returned, and SQLite's EXPLAIN QUERY PLAN); then the same
   queries through ``GET /v1/traces`` of a real ``inferline serve`` on that file (httpx,
   keep-alive; the text scans without a time range ``--scan-http-runs`` times only).

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/trace_store.py [--rows 1000000]
           [--db /tmp/inferline-traces-1m.db] [--reuse] [--runs 50] [--out DIR]
Writes trace_store.json and trace_store.md to ``--out`` (default
benchmarks/results/<date>-<cpu>/).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event

from inferline.store import (
    AttemptRecord,
    RequestLog,
    RequestLogWriter,
    RequestRecord,
    connect,
    migrate,
)
from inferline.store.traces import TraceFilter, TraceStore

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent / "inferline"
DAY = 86_400.0
REQUEST_COLUMNS = [f.name for f in dataclasses.fields(RequestRecord)]
ATTEMPT_COLUMNS = [f.name for f in dataclasses.fields(AttemptRecord)]

# route: (weight, targets in fallback order, local engine?, cache on the route?)
ROUTES: dict[str, tuple[float, tuple[str, ...], bool, bool]] = {
    "chat": (40, ("gpt-4o-mini", "claude-haiku"), False, True),
    "support-bot": (20, ("smollm2-135m", "gpt-4o-mini"), True, True),
    "code": (15, ("qwen2.5-coder-0.5b", "gpt-4o"), True, False),
    "summarize": (10, ("gpt-4o-mini",), False, True),
    "rag": (7, ("claude-sonnet", "gpt-4o"), False, False),
    "batch-eval": (5, ("smollm2-135m",), True, False),
    "translate": (2, ("gpt-4o-mini", "claude-haiku"), False, False),
    "legal": (1, ("gpt-4o", "claude-sonnet"), False, False),
}
TEAMS = ("search", "support", "growth", "platform", "data", "mobile", "web", "ml", "legal",
         "finance")  # fmt: skip
PROMPTS = ("support-triage", "summarize-ticket", "sql-writer", "rag-answer", "code-review")
# status: (weight, error text, attempt error type)
ERRORS: dict[int, tuple[float, str, str]] = {
    429: (1.0, "rate limit exceeded for key", "rate_limited"),
    502: (0.6, "all targets failed: upstream returned 502", "upstream_5xx"),
    503: (0.4, "all targets failed: every target cooling down", "unavailable"),
    400: (0.5, "max_tokens: must be at most 4096", "invalid_request"),
    504: (0.3, "deadline exceeded after 60 s", "timeout"),
    499: (0.2, "client disconnected", "aborted"),
}
COMMON_WORD = "invoice"  # in ~2% of prompts
RARE_WORD = "kubernetes"  # in ~0.05% of prompts
MISSING_WORD = "xylophone-zebra"  # in none: the worst case, a whole scan
M011_INDEXES = ("ix_requests_route_id", "ix_requests_status_id", "ix_requests_team_id",
                "ix_requests_model_id", "ix_requests_total_time")  # fmt: skip
SCHEMAS = {"m001-m011": (), "m001-m010": M011_INDEXES}  # the bursts' schemas: indexes dropped


def hex_id(n: int) -> str:
    """``n`` random bytes as hex (ids, trace ids)."""
    return os.urandom(n).hex()


def corpus(rng: random.Random, size: int = 1 << 21) -> str:
    """About ``size`` characters of English-like words to cut prompts and outputs from."""
    from inferline.bench import WORDS

    words = [rng.choice(WORDS) for _ in range(size // 4)]
    return " ".join(words)


@dataclass
class Keys:
    """~50 virtual keys with Zipf-like traffic, each in one of 10 teams."""

    ids: list[str]
    teams: list[str]
    cum_weights: list[float]

    @classmethod
    def make(cls, rng: random.Random, n: int = 50) -> Keys:
        """``n`` keys; key i gets weight 1 / (i + 1) ** 0.8."""
        ids = [f"key_{rng.getrandbits(64):016x}" for _ in range(n)]
        teams = [TEAMS[i % len(TEAMS)] for i in range(n)]
        weights = [1 / (i + 1) ** 0.8 for i in range(n)]
        cum = [sum(weights[: i + 1]) for i in range(n)]
        return cls(ids, teams, cum)


@dataclass
class RowMaker:
    """Realistic request rows (as dicts of column values) and their attempts.

    ``text``: whether prompt and output text is logged; ``prompt_bytes`` / ``output_bytes``
    are the mean sizes (log-normal around them).
    """

    rng: random.Random
    text: bool = True
    prompt_bytes: int = 1000
    output_bytes: int = 500
    keys: Keys = field(init=False)
    words: str = field(init=False)
    _routes: list[str] = field(init=False)
    _route_cum: list[float] = field(init=False)
    _errors: list[int] = field(init=False)
    _error_cum: list[float] = field(init=False)
    _task: tuple[str, int, int] | None = None  # (task id, key index, requests left)

    def __post_init__(self) -> None:
        self.keys = Keys.make(self.rng)
        self.words = corpus(self.rng)
        self._routes = list(ROUTES)
        self._route_cum = _cumulative([ROUTES[r][0] for r in self._routes])
        self._errors = list(ERRORS)
        self._error_cum = _cumulative([ERRORS[s][0] for s in self._errors])

    def row(
        self, created_at: float, progress: float
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One request (``progress``: 0 at the oldest row, 1 at the newest) and its attempts."""
        rng = self.rng
        route = rng.choices(self._routes, cum_weights=self._route_cum)[0]
        _, targets, local, cached = ROUTES[route]
        key, task_id = self._key_and_task()
        status, error = self._status()
        total = min(300.0, rng.lognormvariate(math.log(1.5), 0.9))
        if status != 200:
            total = min(total, rng.lognormvariate(math.log(0.3), 1.0))
        prompt_tokens = int(rng.lognormvariate(math.log(400), 0.8)) + 5
        completion = 0 if status != 200 else int(rng.lognormvariate(math.log(150), 0.7)) + 1
        request_id = f"chatcmpl-{hex_id(16)}"
        attempts = self._attempts(request_id, targets, status, created_at, total)
        row = {
            "request_id": request_id,
            "created_at": created_at,
            "model": route,
            "endpoint": "/v1/chat/completions" if rng.random() < 0.85 else "/v1/completions",
            "status_code": status,
            "finish_reason": None
            if status != 200
            else ("stop" if rng.random() < 0.9 else "length"),
            "error": error,
            "prompt": self._text(self.prompt_bytes, prompt=True),
            "output": self._text(self.output_bytes) if status == 200 else None,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "cached_tokens": int(prompt_tokens * rng.random() * 0.5) if local else 0,
            "queue_time_s": rng.expovariate(50) if local else None,
            "ttft_s": None if status != 200 else min(total, rng.lognormvariate(math.log(0.3), 0.6)),
            "total_time_s": total,
            "user_id": f"user-{rng.randrange(5000)}" if rng.random() < 0.6 else None,
            "batch_ids": None,
            "route": route,
            "target": attempts[-1]["target"] if status == 200 else None,
            "num_attempts": len(attempts),
            "fallback_reason": "upstream_5xx" if len(attempts) > 1 and status == 200 else None,
            "cost_usd": sum(a["cost_usd"] for a in attempts),
            "key_id": None if key is None else self.keys.ids[key],
            "team": None if key is None else self.keys.teams[key],
            "task_id": task_id,
            **self._trace_columns(route, local, cached, status, total, completion, progress),
        }
        return row, attempts

    def record(self, created_at: float) -> tuple[RequestRecord, tuple[AttemptRecord, ...]]:
        """The same row as the records the server hands to `RequestLogWriter`."""
        row, attempts = self.row(created_at, 1.0)
        return RequestRecord(**row), tuple(AttemptRecord(**a) for a in attempts)

    def _key_and_task(self) -> tuple[int | None, str | None]:
        """A key (None: an admin request, 5%) and the task it belongs to, if any."""
        rng = self.rng
        if self._task is not None:
            task_id, key, left = self._task
            self._task = (task_id, key, left - 1) if left > 1 else None
            return key, task_id
        if rng.random() < 0.05:
            return None, None
        key = rng.choices(range(len(self.keys.ids)), cum_weights=self.keys.cum_weights)[0]
        if rng.random() < 0.08:  # ~40% of requests end up in tasks of 2-10
            task_id = f"task-{hex_id(8)}"
            self._task = (task_id, key, rng.randint(1, 9))
            return key, task_id
        return key, None

    def _status(self) -> tuple[int, str | None]:
        if self.rng.random() >= 0.03:
            return 200, None
        status = self.rng.choices(self._errors, cum_weights=self._error_cum)[0]
        return status, ERRORS[status][1]

    def _attempts(
        self, request_id: str, targets: tuple[str, ...], status: int, start: float, total: float
    ) -> list[dict[str, Any]]:
        """1 attempt (85%), 2 (12%) or 3 (3%); only the last can succeed."""
        rng = self.rng
        draw = rng.random()
        n = 1 if draw < 0.85 else 2 if draw < 0.97 else 3
        error_type = ERRORS[status][2] if status != 200 else "upstream_5xx"
        attempts, at = [], start
        for i in range(n):
            ok = status == 200 and i == n - 1
            duration = total / n
            attempts.append({
                "request_id": request_id, "attempt": i + 1,
                "target": targets[min(i, len(targets) - 1)],
                "reason": "first" if i == 0 else rng.choice(("retry", "fallback")),
                "started_at": at, "status": "ok" if ok else "error",
                "ttft_s": duration * 0.2 if ok else None, "duration_s": duration,
                "error_type": None if ok else error_type,
                "error": None if ok else "upstream returned 502 Bad Gateway",
                "prompt_tokens": rng.randrange(20, 2000), "completion_tokens": rng.randrange(200),
                "cost_usd": rng.random() * 0.002, "cached_tokens": 0,
                "engine_s": duration if ok else None,
            })  # fmt: skip
            at += duration
        return attempts

    def _trace_columns(
        self, route: str, local: bool, cached: bool, status: int, total: float,
        completion: int, progress: float,
    ) -> dict[str, Any]:  # fmt: skip
        """Trace context, cache outcome, prompt version, engine timings, tools, metadata."""
        rng = self.rng
        prompt_id = version = label = None
        if rng.random() < 0.3:
            home = PROMPTS[list(ROUTES).index(route) % len(PROMPTS)]
            prompt_id = home if rng.random() < 0.7 else rng.choice(PROMPTS)
            version = 1 + min(3, int(progress * 4 + rng.random() * 0.5))
            label = "production" if rng.random() < 0.9 else "canary"
        decode = total * 0.8 if local and status == 200 else None
        tool = rng.random() < 0.1 and status == 200
        return {
            "trace_id": hex_id(16),
            "span_id": hex_id(8),
            "parent_span_id": hex_id(8) if rng.random() < 0.3 else None,
            "cache": None if not cached else rng.choices(("miss", "hit", "semantic-hit"),
                                                          (80, 15, 5))[0],  # fmt: skip
            "stopped_by": "budget" if rng.random() < 0.002 else None,
            "prompt_id": prompt_id,
            "prompt_version": version,
            "prompt_label": label,
            "prefill_s": total * 0.1 if decode else None,
            "decode_s": decode,
            "tpot_s": decode / completion if decode and completion else None,
            "preemptions": 1 if local and rng.random() < 0.01 else 0,
            "tool_calls": json.dumps([{"id": f"call_{hex_id(6)}", "name": "search_docs"}])
            if tool else None,
            "tool_results": None,
            "metadata": json.dumps({"env": "prod", "tier": rng.choice(("free", "pro"))})
            if rng.random() < 0.2 else None,
        }  # fmt: skip

    def _text(self, mean_bytes: int, prompt: bool = False) -> str | None:
        """A slice of the corpus of about ``mean_bytes`` (log-normal), with planted words."""
        if not self.text:
            return None
        rng = self.rng
        size = min(len(self.words) // 2, int(rng.lognormvariate(math.log(mean_bytes), 0.5)))
        start = rng.randrange(len(self.words) - size)
        text = self.words[start : start + size]
        if prompt:
            draw = rng.random()
            if draw < 0.02:
                text = f"{text} {COMMON_WORD}"
            elif draw < 0.0205:
                text = f"{RARE_WORD} {text}"
        return text


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


# ---------------------------------------------------------------------------- ingest


def max_id(conn: sqlite3.Connection) -> int:
    """The highest id in ``requests`` (0 when empty)."""
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM requests").fetchone()[0])


def burst(path: Path, maker: RowMaker, n: int, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Queues ``n`` premade records at once; records/s until `close` has written them all.
    ``drop``: indexes removed after migrating (the schema before a migration)."""
    engine = connect(f"sqlite:///{path}")
    migrate(engine)
    with engine.begin() as conn:
        for name in drop:
            conn.exec_driver_sql(f"DROP INDEX {name}")
    items = [maker.record(time.time()) for _ in range(n)]
    attempts = sum(len(a) for _, a in items)
    writer = RequestLogWriter(RequestLog(engine))
    started = time.perf_counter()
    for record, tried in items:
        writer.record(record, tried)
    queued = time.perf_counter() - started
    writer.close(timeout_s=600)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {
        "records": n,
        "attempts": attempts,
        "seconds": elapsed,
        "records_per_s": n / elapsed,
        "attempts_per_s": attempts / elapsed,
        "record_call_us": queued / n * 1e6,
        "dropped": writer.num_dropped,
        "failed": writer.num_failed_writes,
    }


class Watcher(threading.Thread):
    """Polls ``requests`` for new rows every ``interval_s``; notes when each id appeared."""

    def __init__(self, path: Path, interval_s: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.path, self.interval_s = path, interval_s
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        """Until `stop` is set."""
        conn = sqlite3.connect(self.path)
        last = max_id(conn)
        while not self.stop.is_set():
            rows = conn.execute(
                "SELECT id, request_id FROM requests WHERE id > ? ORDER BY id", (last,)
            ).fetchall()
            now = time.perf_counter()
            for row_id, request_id in rows:
                self.seen[request_id] = now
                last = row_id
            time.sleep(self.interval_s)
        conn.close()


def paced(path: Path, maker: RowMaker, rate: float, seconds: float) -> dict[str, Any]:
    """``rate`` records/s for ``seconds``; the delay from ``record()`` to a readable row."""
    engine = connect(f"sqlite:///{path}")
    migrate(engine)
    n = int(rate * seconds)
    items = [maker.record(time.time()) for _ in range(n)]
    watcher = Watcher(path)
    watcher.start()
    writer = RequestLogWriter(RequestLog(engine))
    sent: dict[str, float] = {}
    started = time.perf_counter()
    for i, (record, tried) in enumerate(items):
        wait = started + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent[record.request_id] = time.perf_counter()
        writer.record(record, tried)
    offered_s = time.perf_counter() - started
    deadline = time.monotonic() + 30
    while len(watcher.seen) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    watcher.stop.set()
    watcher.join()
    writer.close()
    engine.dispose()
    delays = [watcher.seen[r] - t for r, t in sent.items() if r in watcher.seen]
    return {
        "rate_offered": rate,
        "rate_achieved": n / offered_s,
        "records": n,
        "visible": len(delays),
        "dropped": writer.num_dropped,
        "delay_ms": percentiles([d * 1000 for d in delays], (50, 99, 100)),
    }


def ingest(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """Burst and paced ingest, without text and with ~2 KB + ~2 KB of text; the bursts
    ``--ingest-repeats`` times on each schema (with and without m011's indexes), alternated."""
    result: dict[str, Any] = {}
    for text in (False, True):
        label = "text 2 KB + 2 KB" if text else "no text"
        maker = RowMaker(random.Random(7), text=text, prompt_bytes=2048, output_bytes=2048)
        cell: dict[str, Any] = {"burst": {schema: [] for schema in SCHEMAS}}
        for i in range(args.ingest_repeats):
            for schema, drop in SCHEMAS.items():
                path = directory / f"burst-{text}-{i}-{len(drop)}.db"
                run = burst(path, maker, args.ingest_records, drop)
                cell["burst"][schema].append(run)
                show(f"ingest burst, {label}, {schema}", run)
                path.unlink()
        for rate in args.rates:
            cell[f"paced_{rate:g}"] = paced(
                directory / f"paced-{text}-{rate:g}.db", maker, rate, args.paced_seconds
            )
            show(f"ingest paced {rate:g}/s, {label}", cell[f"paced_{rate:g}"])
        result[label] = cell
    return result


# ---------------------------------------------------------------------------- 1M rows


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


# ---------------------------------------------------------------------------- HTTP


def free_port() -> int:
    """A free TCP port on the loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(path: Path, directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``inferline serve`` on the million-row file (one remote target that is never called)."""
    port = free_port()
    config = directory / "gateway.yaml"
    config.write_text('models:\n  - {name: upstream, kind: openai, '
                      'base_url: "http://127.0.0.1:9/v1", model: fake}\n')  # fmt: skip
    process = subprocess.Popen(
        [str(BIN), "serve", "--config", str(config), "--port", str(port),
         "--database-url", f"sqlite:///{path}"],
        stdout=(directory / "server.log").open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "INFERLINE_API_KEY": "", "INFERLINE_HOME": str(directory)},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server did not start: see {directory / 'server.log'}")


def http_figures(
    path: Path, items: list[Query], runs: int, scan_runs: int, directory: Path
) -> dict[str, Any]:
    """The same queries through ``GET /v1/traces`` and ``GET /v1/traces/{id}``."""
    process, url = serve(path, directory)
    ids = _sample_request_ids(path)
    try:
        with httpx.Client(base_url=url, timeout=600) as client:

            def listing(params: dict[str, Any]) -> int:
                response = client.get("/v1/traces", params=params)
                response.raise_for_status()
                return len(response.json()["data"])

            def one(request_id: str) -> int:
                response = client.get(f"/v1/traces/{request_id}")
                response.raise_for_status()
                return len(response.json()["attempts"])

            calls: dict[str, Callable[[], int]] = {
                q.name: partial(listing, q.params) for q in items
            }
            cycle = iter(ids * (runs + 2))
            calls["get by id (with attempts)"] = lambda: one(next(cycle))
            counts = {q.name: scan_runs if q.scan else runs for q in items}
            counts["get by id (with attempts)"] = runs
            return interleaved(list(calls), calls, counts)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


# ---------------------------------------------------------------------------- report


def show(label: str, figures: dict[str, Any]) -> None:
    """One progress line on stderr."""
    print(f"{label}: {json.dumps(figures)}", file=sys.stderr, flush=True)


def _median_of(runs: list[dict[str, Any]], key: str) -> str:
    values = sorted(r[key] for r in runs)
    return f"{values[len(values) // 2]:,.0f} ({values[0]:,.0f}-{values[-1]:,.0f})"


def _ingest_lines(result: dict[str, Any]) -> list[str]:
    lines = ["## Ingest (RequestLogWriter, SQLite file, batches of 256, 0.25 s flush)", "",
             "| database | text | schema | records | runs | records/s median (min-max) | "
             "attempts/s median | record() µs | dropped |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, cell in result.get("ingest", {}).items():
        for schema, runs in cell["burst"].items():
            lines.append(f"| new file | {label} | {schema} | {runs[0]['records']:,} | "
                         f"{len(runs)} | "
                         f"{_median_of(runs, 'records_per_s')} | "
                         f"{_median_of(runs, 'attempts_per_s').split(' ')[0]} | "
                         f"{max(r['record_call_us'] for r in runs):.1f} | "
                         f"{sum(r['dropped'] for r in runs)} |")  # fmt: skip
    for label, b in result.get("ingest_1m", {}).items():
        lines.append(f"| {result['generate']['rows']:,} rows | {label} | "
                     f"{result['setup']['schema']} | {b['records']:,} | 1 | "
                     f"{b['records_per_s']:,.0f} | {b['attempts_per_s']:,.0f} | "
                     f"{b['record_call_us']:.1f} | {b['dropped']} |")  # fmt: skip
    lines += ["", "| text | offered | achieved | records | visible | visibility p50 ms | p99 ms | "
              "max ms | dropped |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, cell in result.get("ingest", {}).items():
        for key, p in cell.items():
            if key.startswith("paced"):
                d = p["delay_ms"]
                lines.append(f"| {label} | {p['rate_offered']:,.0f}/s | "
                             f"{p['rate_achieved']:,.0f}/s | {p['records']:,} | {p['visible']:,} | "
                             f"{d['p50']:.0f} | {d['p99']:.0f} | {d['max']:.0f} | "
                             f"{p['dropped']} |")  # fmt: skip
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The tables of trace_store.md."""
    lines = _ingest_lines(result)
    g = result["generate"]
    lines += ["", f"## Queries over {g['rows']:,} requests ({g['attempts']:,} attempts, "
              f"{g['bytes'] / 1e9:.2f} GB file, generated in {g['seconds']:.0f} s)", "",
              f"Store: {result['setup']['runs']} runs per query, round-robin.", "",
              "| query | rows | store p50 ms | store p95 ms | store max ms | "
              "HTTP p50 ms | HTTP p95 ms | HTTP runs |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    http = result.get("http", {})
    for name, s in result["store"].items():
        h = http.get(name, {})
        http_cells = f"{h['p50']:.1f} | {h['p95']:.1f} | {h['runs']}" if h else "- | - | -"
        lines.append(f"| {name} | {s['rows']} | {s['p50']:.1f} | {s['p95']:.1f} | "
                     f"{s['max']:.1f} | {http_cells} |")  # fmt: skip
    lines += ["", "## Query plans (EXPLAIN QUERY PLAN)", ""]
    for name, s in result["store"].items():
        if "plan" in s:
            lines.append(f"- {name}: {' | '.join(s['plan'])}")
    return "\n".join(lines) + "\n"


def default_out() -> Path:
    """benchmarks/results/<date>-<cpu vendor and family>/."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text()
                   .splitlines() if line.startswith("model name"))  # fmt: skip
    name = "intel-xeon" if "Xeon" in cpu else "amd-epyc" if "EPYC" in cpu else "cpu"
    return ROOT / "results" / f"{date.today()}-{name}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--db", type=Path, default=Path("/tmp/inferline-traces-1m.db"))
    p.add_argument("--reuse", action="store_true", help="keep --db if it has --rows rows")
    p.add_argument("--prompt-bytes", type=int, default=1000, help="mean prompt text per row")
    p.add_argument("--output-bytes", type=int, default=500, help="mean output text per row")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--scan-http-runs", type=int, default=5)
    p.add_argument("--ingest-records", type=int, default=50_000)
    p.add_argument("--ingest-repeats", type=int, default=3)
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[1000.0])
    p.add_argument("--paced-seconds", type=float, default=10.0)
    p.add_argument("--skip-ingest", action="store_true")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--name", default="trace_store", help="file names: NAME.json, NAME.md")
    return p.parse_args(argv)


def existing_rows(path: Path) -> int:
    """Rows in ``requests`` of an existing file (0 when missing)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return max_id(conn)
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def million(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    """Generates (or reuses) the big file, then times the queries on it."""
    result: dict[str, Any] = {}
    if args.reuse and existing_rows(args.db) >= args.rows:
        result["generate"] = json.loads(Path(f"{args.db}.json").read_text())
    else:
        maker = RowMaker(random.Random(11), text=True, prompt_bytes=args.prompt_bytes,
                         output_bytes=args.output_bytes)  # fmt: skip
        result["generate"] = generate(args.db, args.rows, maker)
        Path(f"{args.db}.json").write_text(json.dumps(result["generate"]))
    show("generated", result["generate"])
    migrate(connect(f"sqlite:///{args.db}"))  # a migration added since --reuse'd generation
    items = queries(args.db)
    result["store"] = store_figures(args.db, items, args.runs)
    for name, figures in result["store"].items():
        show(f"store {name}", {k: v for k, v in figures.items() if k != "plan"})
    if not args.skip_http:
        result["http"] = http_figures(args.db, items, args.runs, args.scan_http_runs, directory)
        for name, figures in result["http"].items():
            show(f"http {name}", figures)
    return result


def ingest_into_million(args: argparse.Namespace) -> dict[str, Any]:
    """The burst again, appended to the million-row file (and deleted after)."""
    out: dict[str, Any] = {}
    conn = sqlite3.connect(args.db)
    top = max_id(conn)
    conn.close()
    for text in (False, True):
        label = "text 2 KB + 2 KB" if text else "no text"
        maker = RowMaker(random.Random(5), text=text, prompt_bytes=2048, output_bytes=2048)
        out[label] = burst(args.db, maker, args.ingest_records)
        show(f"ingest burst into 1M rows, {label}", out[label])
    conn = sqlite3.connect(args.db)
    with conn:
        conn.execute("DELETE FROM request_attempts WHERE request_id IN "
                     "(SELECT request_id FROM requests WHERE id > ?)", (top,))  # fmt: skip
        conn.execute("DELETE FROM requests WHERE id > ?", (top,))
    conn.close()
    return out


def request_indexes(path: Path) -> list[str]:
    """The indexes on ``requests`` (name: columns), as the migrations left them."""
    conn = sqlite3.connect(path)
    sql = ("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests' "
           "AND sql IS NOT NULL ORDER BY name")  # fmt: skip
    rows = conn.execute(sql).fetchall()
    conn.close()
    return [f"{name}: {sql.split('(', 1)[1].rstrip(')')}" for name, sql in rows]


def applied_migrations(path: Path) -> str:
    """The first and last migration the file has, e.g. ``m001-m011``."""
    conn = sqlite3.connect(path)
    names = sorted(row[0] for row in conn.execute("SELECT name FROM _migrations"))
    conn.close()
    return f"{names[0][:4]}-{names[-1][:4]}"


def main(argv: list[str] | None = None) -> None:
    """Runs every part, prints the tables, writes JSON and Markdown."""
    args = parse_args(argv)
    out = args.out or default_out()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="inferline-traces-") as tmp:
        directory = Path(tmp)
        if not args.skip_ingest:
            result["ingest"] = ingest(args, directory)
        result.update(million(args, directory))
        if not args.skip_ingest:
            result["ingest_1m"] = ingest_into_million(args)
    result["setup"] = {
        "date": str(date.today()), "cpu": default_out().name, "cores": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version, "db": str(args.db),
        "command": " ".join(["python", *sys.argv]), "runs": args.runs,
        "indexes": request_indexes(args.db), "schema": applied_migrations(args.db),
    }  # fmt: skip
    table = markdown(result)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{args.name}.md").write_text(table)


if __name__ == "__main__":
    main()
