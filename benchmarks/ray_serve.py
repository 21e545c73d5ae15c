"""The Ray Serve path's cost and what prefix-aware replica choice buys, on this machine.

Three servers in turn, SmolLM2-135M int8: plain ``inferline serve``, ``serve --ray`` with
one replica, and ``serve --ray`` with two replicas (one compute thread each: the two cores
bound what scaling can show). Each gets chat requests (``--max-tokens`` greedy tokens) at
concurrency 1 (``--requests-c1`` requests: latency and TTFT p50) and 16 (``--requests-c16``:
output tokens/s). The two-replica server also serves a second deployment placed at
random, and both take the same groups of requests sharing a long prefix: the share of
prompt tokens served from the prefix cache, prefix-aware vs random placement.

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/ray_serve.py [--out DIR]
Writes ray_serve.json and ray_serve.md to --out (default benchmarks/results/<date>-<cpu>/).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from inferline.bench.host import cpu_description

BIN = Path(sys.executable).parent / "inferline"
MODEL = "{kind: llm, source: smollm2-135m, weight_format: int8, num_cpus: 0.1, threads: %d"
SETUPS = {
    "plain": None,
    "ray-1": f"  - {{name: m, {MODEL[1:] % 2}, replicas: 1}}\n",
    "ray-2": f"  - {{name: m, {MODEL[1:] % 1}, replicas: 2}}\n"
    f"  - {{name: r, {MODEL[1:] % 1}, replicas: 2, routing: random}}\n",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(directory: Path, models: str | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [str(BIN), "serve", "--port", str(port), "--database-url",
               f"sqlite:///{directory / 'db.sqlite'}"]  # fmt: skip
    if models is None:
        command += ["--model", "smollm2-135m", "--weight-format", "int8", "--served-model-name",
                    "m"]  # fmt: skip
    else:
        (directory / "c.yaml").write_text(f"models:\n{models}")
        command += ["--config", str(directory / "c.yaml"), "--ray"]
    log = (directory / "serve.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                time.sleep(3)  # every replica up, not only the first
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server did not start: {directory / 'serve.log'}")


def one(client: httpx.Client, i: int, max_tokens: int) -> dict[str, float]:
    body = {"model": "m", "messages": [{"role": "user", "content": f"Tell me fact {i}."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True}  # fmt: skip
    start = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        for line in reply.iter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - start
    return {"latency_s": time.perf_counter() - start, "ttft_s": first or 0.0}


def load(base: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    with (
        httpx.Client(base_url=base, timeout=300) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        one(client, -1, 4)  # warm
        start = time.perf_counter()
        results = list(pool.map(lambda i: one(client, i, max_tokens), range(requests)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency, "requests": requests,
        "latency_p50_s": statistics.median(r["latency_s"] for r in results),
        "ttft_p50_s": statistics.median(r["ttft_s"] for r in results),
        "output_tok_per_s": requests * max_tokens / elapsed,
    }  # fmt: skip


def cached_share(base: str, model: str, groups: int, per_group: int) -> float:
    """Prefix-cache hits over the prompt tokens of every request after a group's first."""
    hits = total = 0
    with httpx.Client(base_url=base, timeout=120) as client:
        for group in range(groups):
            prefix = f"Doc {model}-{group}-{time.time_ns()}: " + " ".join(
                f"w{group}x{i}" for i in range(300)
            )
            for question in range(per_group):
                body = {"model": model, "prompt": f"{prefix}\nQ{question}?", "max_tokens": 1}
                usage = client.post("/v1/completions", json=body).json()["usage"]
                if question:
                    hits += usage["prompt_tokens_details"]["cached_tokens"]
                    total += usage["prompt_tokens"]
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests-c1", type=int, default=12)
    parser.add_argument("--requests-c16", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cpu = cpu_description()
    tag = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40]
    out = args.out or Path(__file__).parent / "results" / f"{date.today()}-{tag}"
    result: dict[str, Any] = {"cpu": cpu, "date": str(date.today()), "setups": {}}
    for name, models in SETUPS.items():
        with tempfile.TemporaryDirectory() as directory:
            process, base = start(Path(directory), models)
            try:
                figures = [load(base, 1, args.requests_c1, args.max_tokens),
                           load(base, 16, args.requests_c16, args.max_tokens)]  # fmt: skip
                entry: dict[str, Any] = {"load": figures}
                if name == "ray-2":
                    entry["cached_share"] = {"prefix": cached_share(base, "m", 8, 4),
                                             "random": cached_share(base, "r", 8, 4)}  # fmt: skip
                result["setups"][name] = entry
                print(name, json.dumps(entry), flush=True)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(120)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_serve.json").write_text(json.dumps(result, indent=2))
    plain = result["setups"]["plain"]["load"]
    lines = [f"# Ray Serve path — {cpu}, {result['date']}", "",
             "| setup | c1 latency p50 s | c1 TTFT p50 ms | c16 out tok/s "
             "| vs plain (c1 lat / c16 tok/s) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, entry in result["setups"].items():
        c1, c16 = entry["load"]
        lines.append(
            f"| {name} | {c1['latency_p50_s']:.3f} | {1000 * c1['ttft_p50_s']:.0f} | "
            f"{c16['output_tok_per_s']:.1f} | {c1['latency_p50_s'] / plain[0]['latency_p50_s']:.2f}"
            f" / {c16['output_tok_per_s'] / plain[1]['output_tok_per_s']:.2f} |"
        )
    share = result["setups"]["ray-2"]["cached_share"]
    lines += ["", "Prefix-cache share of follow-up prompt tokens (8 groups x 4 requests, 2 "
              f"replicas): prefix-aware {share['prefix']:.3f}, "
              f"random {share['random']:.3f}."]  # fmt: skip
    (out / "ray_serve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
