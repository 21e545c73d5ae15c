"""How fast the dashboard's pages answer over a million stored requests.

Takes the million-row log `trace_store.py` builds (``--db``, default
/tmp/inferline-traces-1m.db: 30 days of synthetic gateway traffic), migrates it (m016
rolls the log up per minute in one SQL pass: timed), writes a version of one prompt the
rows name (so its page has figures to compute), starts ``inferline serve`` on it (no keys:
every page as admin), and requests each page ``--runs`` times after one warm-up: p50 and
p95 in ms, and the page's size.

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/dashboard_pages.py [--db PATH] [--runs 20]
Writes dashboard_pages.json and .md to --out (default benchmarks/results/<date>-<cpu>/).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from trace_store import serve  # the same server on the same file (run from benchmarks/)

from inferline.bench.host import cpu_description
from inferline.store import connect, migrate
from inferline.store.prompts import PromptStore

BIN = Path(sys.executable).parent / "inferline"


def prepare(db: Path) -> dict[str, Any]:
    engine = connect(f"sqlite:///{db}")
    began = time.perf_counter()
    applied = migrate(engine)
    seconds = time.perf_counter() - began
    prompts = PromptStore(engine)
    if prompts.version("code-review") is None:
        prompts.add_version(
            "code-review", {"messages": [{"role": "user", "content": "{{ diff }}"}]}
        )
    with engine.connect() as conn:
        trace_id = conn.exec_driver_sql(
            "SELECT request_id FROM requests ORDER BY id DESC LIMIT 1"
        ).scalar()
        rollups = conn.exec_driver_sql("SELECT COUNT(*) FROM request_rollups").scalar()
        rows = conn.exec_driver_sql("SELECT COUNT(*) FROM requests").scalar()
    engine.dispose()
    return {"applied": applied, "migrate_s": seconds, "trace": trace_id, "rollup_rows": rollups,
            "rows": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, default=Path("/tmp/inferline-traces-1m.db"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cpu = cpu_description()
    tag = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40]
    out = args.out or Path(__file__).parent / "results" / f"{date.today()}-{tag}"
    prepared = prepare(args.db)
    print(
        f"migrated in {prepared['migrate_s']:.1f} s: {prepared['applied']}; "
        f"{prepared['rollup_rows']} rollup rows for {prepared['rows']} requests",
        flush=True,
    )
    pages = [
        "/ui?window=5m",
        "/ui?window=1h",
        "/ui?window=24h",
        "/ui/overview/series?window=24h",
        "/ui/overview/live",
        "/ui/traces",
        "/ui/traces?route=chat",
        "/ui/traces?status=error",
        "/ui/traces?since=24h&route=code",
        "/ui/traces?text=timeout",
        f"/ui/traces/{prepared['trace']}",
        "/ui/prompts",
        "/ui/prompts/code-review",
        "/ui/evals",
        "/ui/reviews",
        "/ui/batches",
        "/ui/keys",
    ]
    results = []
    with tempfile.TemporaryDirectory() as directory:
        process, url = serve(args.db, Path(directory))
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                for path in pages:
                    first = client.get(path)
                    assert first.status_code == 200, (path, first.status_code, first.text[:300])
                    times = []
                    for _ in range(args.runs):
                        began = time.perf_counter()
                        client.get(path).raise_for_status()
                        times.append((time.perf_counter() - began) * 1000)
                    times.sort()
                    row = {
                        "page": path,
                        "p50_ms": statistics.median(times),
                        "p95_ms": times[max(0, int(0.95 * len(times)) - 1)],
                        "bytes": len(first.content),
                    }
                    results.append(row)
                    print(
                        f"{path:45} p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms",
                        flush=True,
                    )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    result = {
        "cpu": cpu,
        "date": str(date.today()),
        "db_rows": prepared["rows"],
        **prepared,
        "pages": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "dashboard_pages.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        f"# Dashboard pages over {prepared['rows']:,} stored requests — {cpu}, {result['date']}",
        "",
        f"m016's rollup backfill: {prepared['migrate_s']:.1f} s ({prepared['rollup_rows']} rows).",
        "",
        "| page | p50 ms | p95 ms | bytes |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{r['page']}` | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['bytes']} |" for r in results
    ]
    (out / "dashboard_pages.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
