"""The latency a gateway adds per request, inferline against LiteLLM's proxy, same run.

One fake upstream (`inferline.bench.fake_upstream`, answers at once) behind inferline's
gateway (``inferline serve --config``, request log on) and LiteLLM's proxy (its own
virtualenv, created when missing, one worker, no database/cache/callbacks, no retries).
One asyncio client process (`gateway_overhead.client`, raw HTTP/1.1 over keep-alive
connections) measures the direct upstream and both gateways, cell by cell, in rotating
order, for ``--rounds`` rounds:

* non-streaming chat completion (whole answer) and streaming (time to first content
  token), closed loop at concurrency 1, 8 and 64;
* overhead = system percentile - direct percentile in the same round (p50 and p99, ms),
  reported as min and median over rounds;
* maximum requests/s: non-streaming closed loop at 64 and 128 for ``--rps-seconds`` each;
* the client's own cost: the raw client and httpx against the direct upstream.

usage: .venv/bin/python benchmarks/gateway_overhead.py [--rounds 3] [--requests N]
           [--skip-litellm] [--out DIR] [--quick] [--no-log-text] [--rps-seconds S]
           [--retries K] [--wait-quiet S]
Takes ``flock /tmp/bench.lock`` itself. Before each cell it waits for other processes to
use < 0.1 cores, and reruns a cell they disturbed (up to ``--retries`` times). Writes
gateway_overhead.json and .md to ``--out`` (default benchmarks/results/<date>-<cpu>/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_overhead import client, report, servers  # noqa: E402
from gateway_overhead.client import CellResult, Target  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOCK = os.environ.get("BENCH_LOCK", "/tmp/bench.lock")
CONCURRENCIES = (1, 8, 64)
RATE_CONCURRENCIES = (64, 128)
WORDS = 16
QUIET_CORES = 0.1  # foreign load below which a cell may start


class Settings:
    """Run-wide settings from the command line (set once in `main`)."""

    retries = 2  # reruns of a cell that other processes disturbed
    max_wait_s = 120.0  # for a quiet host before each cell


SETTINGS = Settings()
CLIENT_NOTE = (
    "One asyncio process, raw HTTP/1.1 on one keep-alive connection per worker, times taken "
    "when bytes arrive (`data_received`), garbage collector off while measuring. httpx's "
    "AsyncClient, measured below against the same upstream, costs several times the client "
    "CPU per request, which on this small host would be taken from the servers at c=64."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="per cell at c>=8 (c=1: /4)")
    parser.add_argument("--rps-seconds", type=float, default=10.0, help="per max-RPS run")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--no-log-text", action="store_true", help="inferline logs counts only")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="1 round, 300 requests, 3 s RPS")
    parser.add_argument("--retries", type=int, default=2, help="reruns of a disturbed cell")
    parser.add_argument("--wait-quiet", type=float, default=120.0, help="max s per cell")
    parser.add_argument("--render", type=Path, default=None, help="rewrite the .md of a JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests, args.rps_seconds = 1, 300, 3.0
    return args


def requests_for(concurrency: int, requests: int) -> tuple[int, int]:
    """(measured, warm-up) requests of a cell: a quarter at c=1 (at least 100)."""
    measured = requests if concurrency > 1 else max(100, requests // 4)
    return measured, max(50, measured // 10)


def cpu_tag(model_name: str) -> str:
    """``Intel(R) Xeon(R) Processor`` -> ``intel-xeon``, as ``benchmarks/compare`` names it."""
    name = re.sub(r"\([^)]*\)|@.*", "", model_name.lower())
    name = re.sub(r"\b(cpu|processor)\b", "", name)
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:32] or "cpu"


def host() -> dict[str, Any]:
    """CPU model (``/proc/cpuinfo``), cores, memory and kernel."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    models = [
        ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")
    ]
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": models[0] if models else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
    }


def git(*args: str) -> str:
    """Output of a read-only git command in the repository ('' on failure)."""
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


@contextlib.contextmanager
def bench_lock(path: str = LOCK) -> Iterator[None]:
    """Holds ``flock`` on ``path`` (waiting if another benchmark has it)."""
    with open(path, "a") as handle:  # not inherited by the servers (PEP 446)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {path} (another benchmark is running)", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def foreign_cores(running: dict[str, servers.Server], seconds: float) -> float:
    """Cores used by processes other than the servers and this client over ``seconds``."""
    before = sum(s.cpu_s() for s in running.values())
    host0, own0 = servers.cpu_account.host_busy_s(), time.process_time()
    await asyncio.sleep(seconds)
    ours = sum(s.cpu_s() for s in running.values()) - before + time.process_time() - own0
    return max(0.0, (servers.cpu_account.host_busy_s() - host0 - ours) / seconds)


async def wait_quiet(running: dict[str, servers.Server], max_wait_s: float) -> None:
    """Waits (up to ``max_wait_s``) until other processes use < `QUIET_CORES` for 0.5 s."""
    deadline, told = time.monotonic() + max_wait_s, False
    while (load := await foreign_cores(running, 0.5)) >= QUIET_CORES:
        if time.monotonic() > deadline:
            print(f"  still {load:.2f} foreign cores after {max_wait_s:.0f} s: measuring anyway")
            return
        if not told:
            print(f"  waiting for a quiet host ({load:.2f} cores used by other processes)")
            told = True


async def accounted(
    running: dict[str, servers.Server], work: Callable[[], Awaitable[CellResult]]
) -> tuple[CellResult, dict[str, float], float, float]:
    """Runs ``work`` on a quiet host, again (up to `Settings.retries` times) when other
    processes used more than `report.FOREIGN_CPU_LIMIT` cores meanwhile; returns the least
    disturbed run: its result, CPU seconds per server and of this client, the wall time,
    and the cores other processes used."""
    best = None
    for _ in range(1 + SETTINGS.retries):
        await wait_quiet(running, SETTINGS.max_wait_s)
        before = {name: s.cpu_s() for name, s in running.items()}
        host0, own0, wall0 = (
            servers.cpu_account.host_busy_s(),
            time.process_time(),
            time.monotonic(),
        )
        cell = await work()
        wall = time.monotonic() - wall0
        own = time.process_time() - own0
        used = {name: s.cpu_s() - before[name] for name, s in running.items()}
        other = servers.cpu_account.host_busy_s() - host0 - own - sum(used.values())
        run = (cell, {**used, "client": own}, wall, max(0.0, other / wall))
        if best is None or run[3] < best[3]:
            best = run
        if run[3] <= report.FOREIGN_CPU_LIMIT:
            break
    assert best is not None
    return best


def cell_record(cell: CellResult, cpu: dict[str, float], other: float) -> dict[str, Any]:
    """The JSON of one measured cell."""
    issued = max(1, cell.issued)
    return {
        "n": len(cell.latencies_s),
        "issued": cell.issued,
        "errors": dict(cell.errors),
        "latency_ms": report.stats_ms(cell.latencies_s),
        "stream_total_ms": report.stats_ms(cell.totals_s),
        "rps": round(len(cell.latencies_s) / cell.wall_s, 1) if cell.wall_s else 0.0,
        "cpu_ms_per_request": {k: round(v / issued * 1e3, 4) for k, v in cpu.items()},
        "other_cpu_cores": round(other, 3),
    }


async def run_rounds(
    running: dict[str, servers.Server], targets: list[Target], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every (round, scenario, concurrency, system) cell; system order rotates per round."""
    cells = []
    for r in range(args.rounds):
        order = targets[r % len(targets) :] + targets[: r % len(targets)]
        for scenario in report.SCENARIOS:
            for concurrency in CONCURRENCIES:
                measured, warmup = requests_for(concurrency, args.requests)
                for target in order:
                    cell, cpu, _, other = await accounted(
                        running,
                        lambda t=target, c=concurrency, n=measured, w=warmup, s=scenario: (
                            client.closed_loop(
                                t, stream=s == "stream", concurrency=c, requests=n, warmup=w
                            )
                        ),
                    )
                    record = cell_record(cell, cpu, other)
                    key = {"round": r + 1, "scenario": scenario, "concurrency": concurrency}
                    cells.append({**key, "system": target.name, **record})
                    _progress(
                        f"round {r + 1}/{args.rounds} {scenario} c={concurrency}", target, record
                    )
    return cells


def _progress(label: str, target: Target, record: dict[str, Any]) -> None:
    """One line per cell on stdout."""
    lat = record["latency_ms"] or {"p50": float("nan"), "p99": float("nan")}
    print(
        f"[{label}] {target.name:9s} p50 {lat['p50']:7.3f} ms  p99 {lat['p99']:7.3f} ms  "
        f"{record['rps']:7.0f} req/s  errors {sum(record['errors'].values())}  "
        f"other cores {record['other_cpu_cores']:.2f}",
        flush=True,
    )


async def run_max_rps(
    running: dict[str, servers.Server], targets: list[Target], seconds: float
) -> list[dict[str, Any]]:
    """Closed loop at each of `RATE_CONCURRENCIES` for ``seconds`` (1 s warm-up first);
    req/s = answers that ended OK within those seconds / seconds."""
    rates = []
    for concurrency in RATE_CONCURRENCIES:
        for target in targets:
            cell, cpu, _, other = await accounted(
                running,
                lambda t=target, c=concurrency: client.closed_loop_for(
                    t, concurrency=c, seconds=seconds, warmup_s=1.0
                ),
            )
            record = {"system": target.name, "concurrency": concurrency}
            record.update(cell_record(cell, cpu, other))
            record["rps"] = round(len(cell.latencies_s) / seconds, 1)
            rates.append(record)
            _progress(f"max rps c={concurrency}", target, record)
    return rates


async def run_client_check(
    upstream: servers.Server, target: Target, requests: int
) -> list[dict[str, Any]]:
    """The raw client and httpx, non-streaming, against the direct upstream at c=1 and 64."""
    rows = []
    for concurrency in (1, 64):
        n, warmup = requests_for(concurrency, requests)
        runs = {
            "raw asyncio": lambda c=concurrency, n=n, w=warmup: client.closed_loop(
                target, stream=False, concurrency=c, requests=n, warmup=w
            ),
            "httpx": lambda c=concurrency, n=n, w=warmup: client.httpx_closed_loop(
                target, concurrency=c, requests=n, warmup=w
            ),
        }
        for name, work in runs.items():
            cell, cpu, _, other = await accounted({"direct": upstream}, work)
            record = cell_record(cell, cpu, other)
            cpu_us = {k: round(v * 1e3, 1) for k, v in record["cpu_ms_per_request"].items()}
            rows.append(
                {
                    "client": name,
                    "concurrency": concurrency,
                    "latency_ms": record["latency_ms"],
                    "rps": record["rps"],
                    "errors": record["errors"],
                    "client_cpu_us_per_request": cpu_us["client"],
                    "upstream_cpu_us_per_request": cpu_us["direct"],
                    "other_cpu_cores": record["other_cpu_cores"],
                }
            )
            _progress(f"client check c={concurrency}", Target(name, "", 0, ""), record)
    return rows


def check_answers(targets: list[Target]) -> None:
    """One non-streaming request to each system: every one must return the upstream's text."""
    texts = {}
    for t in targets:
        body = client.chat_body(t.model, stream=False)
        answer = servers.post_json(
            f"http://{t.host}:{t.port}/v1/chat/completions", json.loads(body)
        )
        texts[t.name] = answer["choices"][0]["message"]["content"]
    if len(set(texts.values())) != 1 or not texts["direct"]:
        raise RuntimeError(f"the systems do not answer alike: {texts}")


def start_all(workdir: Path, args: argparse.Namespace) -> dict[str, servers.Server]:
    """The upstream, inferline, and (unless skipped) LiteLLM, all ready; when one fails to
    start, those already started are stopped."""
    running = {"direct": servers.start_upstream(workdir, WORDS)}
    port = running["direct"].port
    try:
        log_text = not args.no_log_text
        running["inferline"] = servers.start_inferline(workdir, port, log_text=log_text)
        if not args.skip_litellm:
            running["litellm"] = servers.start_litellm(workdir, port, servers.ensure_litellm())
    except BaseException:
        for server in running.values():
            server.stop()
        raise
    return running


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Starts the servers, measures everything, stops them; returns the raw results."""
    running = start_all(workdir, args)
    try:
        targets = [Target(n, "127.0.0.1", s.port, s.model) for n, s in running.items()]
        check_answers(targets)
        idle = asyncio.run(_idle_cpu(running))
        print(f"idle CPU (cores) over 2 s: {idle}", flush=True)
        direct = targets[0]
        checks = asyncio.run(run_client_check(running["direct"], direct, args.requests))
        cells = asyncio.run(run_rounds(running, targets, args))
        rates = asyncio.run(run_max_rps(running, targets, args.rps_seconds))
    finally:
        for server in reversed(running.values()):
            server.stop()
    infos = {name: s.info for name, s in running.items()}
    return {"cells": cells, "max_rps": rates, "client": checks, "servers": infos, "idle": idle}


async def _idle_cpu(running: dict[str, servers.Server], seconds: float = 2.0) -> dict[str, float]:
    """Cores each server uses while nobody sends it anything (background loops)."""
    before = {n: s.cpu_s() for n, s in running.items()}
    await asyncio.sleep(seconds)
    return {n: round((s.cpu_s() - before[n]) / seconds, 3) for n, s in running.items()}


def meta(args: argparse.Namespace, raw: dict[str, Any], run_s: float) -> dict[str, Any]:
    """Host, versions, command and settings of the run."""
    litellm = raw["servers"].get("litellm", {})
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    measured_c1, _ = requests_for(1, args.requests)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": host(),
        "python": platform.python_version(),
        "inferline": {
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "src")),
        },
        "litellm_version": (litellm.get("versions") or {}).get("litellm"),
        "command": command,
        "lock": LOCK,
        "run_s": run_s,
        "rounds": args.rounds,
        "requests": {"c1": measured_c1, "other": args.requests},
        "rps_seconds": args.rps_seconds,
        "words": WORDS,
        "client_note": CLIENT_NOTE,
        "idle_cpu_cores": raw["idle"],
        "servers": raw["servers"],
    }


def default_out() -> Path:
    """benchmarks/results/<date>-<cpu tag>/."""
    return REPO / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{cpu_tag(host()['cpu'])}"


def main(argv: list[str] | None = None) -> int:
    """Measures, prints the table, writes gateway_overhead.json and gateway_overhead.md."""
    args = parse_args(argv)
    if args.render is not None:
        result = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(report.markdown(result))
        return 0
    SETTINGS.retries, SETTINGS.max_wait_s = args.retries, args.wait_quiet
    out = args.out or default_out()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="gateway_overhead-"))  # configs, logs, request db
    print(f"work directory: {workdir}", flush=True)
    with bench_lock():
        raw = measure(args, workdir)
    rows = report.overheads(raw["cells"])
    result = {
        "meta": {**meta(args, raw, round(time.monotonic() - started, 1)), "workdir": str(workdir)},
        "overhead": rows,
        "targets": report.targets(rows),
        "max_rps": raw["max_rps"],
        "client": raw["client"],
        "cells": raw["cells"],
    }
    print(report.console_table(rows, raw["max_rps"]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gateway_overhead.md").write_text(report.markdown(result))
    print(f"\nwrote {out / 'gateway_overhead.json'} and gateway_overhead.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
