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
import json
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
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from trace_queries import (
    Query,
    _sample_request_ids,
    generate,
    interleaved,
    percentiles,
    queries,
    store_figures,
)
from trace_rows import SCHEMAS, RowMaker

from inferline.store import (
    RequestLog,
    RequestLogWriter,
    connect,
    migrate,
)

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent / "inferline"


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
