"""The response cache's latencies, through a real gateway: an exact hit, a semantic hit,
and what a miss costs on top of the same request without a cache (exact: a key; semantic:
also the embedding of the last user message with MiniLM on the CPU).

One ``inferline serve`` in front of our fake upstream (answering 16 words at once), one
client (httpx, keep-alive, one request at a time), routes ``plain`` (no cache), ``exact``
and ``semantic``. Each figure is the client-side latency (p50 / p90 / p99 over --requests)
of one kind of request; a miss uses a new question each time, a hit repeats one (a
semantic hit: the same question with trailing spaces, so only the embedding matches).

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/cache_latency.py [--requests 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent / "inferline"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(upstream_port: int) -> str:
    return f"""models:
  - {{name: upstream, kind: openai, base_url: "http://127.0.0.1:{upstream_port}/v1", model: fake}}
  - {{name: minilm, kind: sentence-embeddings, source: all-minilm-l6-v2}}
routes:
  - {{name: plain, targets: [upstream]}}
  - {{name: exact, targets: [upstream], cache: {{mode: exact}}}}
  - {{name: semantic, targets: [upstream],
     cache: {{mode: semantic, embedding_model: minilm, threshold: 0.95}}}}
"""


def start(directory: Path) -> tuple[list[subprocess.Popen[bytes]], str]:
    """The fake upstream and the gateway, ready."""
    upstream_port, port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "inferline.bench.fake_upstream", "--port", str(upstream_port),
         "--words", "16"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    path = directory / "gateway.yaml"
    path.write_text(config(upstream_port))
    gateway = subprocess.Popen(
        [str(BIN), "serve", "--config", str(path), "--port", str(port), "--database-url",
         f"sqlite:///{directory / 'log.db'}"],
        stdout=(directory / "server.log").open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "INFERLINE_API_KEY": ""},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return [upstream, gateway], url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the gateway did not start")


def timed(client: httpx.Client, route: str, question: str) -> tuple[float, str]:
    body = {"model": route, "temperature": 0, "max_tokens": 32,
            "messages": [{"role": "user", "content": question}]}  # fmt: skip
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, response.headers.get("x-inferline-cache", "-")


def figures(values: list[float]) -> dict[str, float]:
    ordered = sorted(v * 1000 for v in values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": pick(0.5), "p90_ms": pick(0.9), "p99_ms": pick(0.99),
            "mean_ms": statistics.fmean(ordered)}  # fmt: skip


def measure(client: httpx.Client, n: int) -> dict[str, Any]:
    """Every kind of request, interleaved so drift hits them alike."""
    kinds: dict[str, list[float]] = {k: [] for k in (
        "no cache", "exact miss", "exact hit", "semantic miss", "semantic hit")}  # fmt: skip
    outcomes: dict[str, set[str]] = {k: set() for k in kinds}
    for route in ("exact", "semantic"):
        timed(client, route, "What is the capital of France?")  # the entry hits come from
    for i in range(n):
        runs = {
            "no cache": ("plain", f"Question number {i}: what is {i} plus {i}?"),
            "exact miss": ("exact", f"Question number {i}: what is {i} plus {i}?"),
            "exact hit": ("exact", "What is the capital of France?"),
            "semantic miss": ("semantic", f"Question number {i}: what is {i} plus {i}?"),
            "semantic hit": ("semantic", "What is the capital of France?" + " " * (1 + i % 5)),
        }
        for kind, (route, question) in runs.items():
            elapsed, outcome = timed(client, route, question)
            kinds[kind].append(elapsed)
            outcomes[kind].add(outcome)
    result = {kind: {**figures(v), "outcomes": sorted(outcomes[kind])} for kind, v in kinds.items()}
    base = result["no cache"]["p50_ms"]
    result["miss cost p50 ms"] = {
        "exact": result["exact miss"]["p50_ms"] - base,
        "semantic": result["semantic miss"]["p50_ms"] - base,
    }
    return result


def main() -> None:
    """Runs it, prints JSON, writes JSON and Markdown."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / f"{date.today()}-cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferline-cache-") as tmp:
        processes, url = start(Path(tmp))
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                for _ in range(30):  # warm-up
                    timed(client, "plain", "warm up")
                result = measure(client, args.requests)
        finally:
            for process in reversed(processes):
                process.send_signal(signal.SIGTERM)
                process.wait(30)
    result["setup"] = {"requests_per_kind": args.requests, "date": str(date.today()),
                       "command": " ".join(["python", *sys.argv])}  # fmt: skip
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache_latency.json").write_text(json.dumps(result, indent=2))
    lines = ["| request | p50 ms | p90 ms | p99 ms | header |", "|---|---|---|---|---|"]
    for kind in ("no cache", "exact miss", "exact hit", "semantic miss", "semantic hit"):
        row = result[kind]
        lines.append(f"| {kind} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | "
                     f"{row['p99_ms']:.2f} | {', '.join(row['outcomes'])} |")  # fmt: skip
    (args.out / "cache_latency.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
