"""The evaluation loop's figures: experiment throughput through a real server, replay
fidelity, and how many samples and seconds a rollout takes to decide.

One fake upstream (our own, ``partner``: answers at once) and one ``inferline serve
--config`` (SmolLM2-135M int8 on the CPU as route ``bot``, and ``partner``), its database
in a temporary directory.

- Experiments: ``--items`` items through `Runner` and `HttpGateway` (what ``inferline eval
  run`` does) on ``partner`` at concurrency 1, 8 and 32 (the gateway's and the loop's own
  cost: items/s), and 32 items on ``bot`` (16 tokens each) at concurrency 8.
- Replay: ``--requests`` chat requests to ``partner`` with exponential gaps (mean
  ``--gap-ms``), logged, then replayed (`evals.replay`) at speed 1 and 2 against the same
  server: the error of each inter-arrival gap (|sent - recorded| / recorded), p50 and p95,
  and the latest send.
- Rollouts: a second server with two prompt rollouts at 20%: ``worse`` (the candidate's
  schema drops a required field) and ``equal`` (a reworded prompt); users send requests at
  concurrency 4 until each is decided: candidate samples at the decision against the
  policy's expected sample numbers, requests sent and seconds.

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/evals_loop.py [--items 200]
           [--requests 200] [--gap-ms 50] [--out DIR]
Writes evals_loop.json and evals_loop.md to --out (default benchmarks/results/<date>-<cpu>/).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from inferline.bench.fake_upstream import start_fake_upstream
from inferline.bench.host import cpu_description
from inferline.evals.experiment import Plan, Runner, start
from inferline.evals.gateway import HttpGateway
from inferline.evals.replay import ReplayOptions, compare, logged_of, replay
from inferline.evals.scorers import Contains
from inferline.store import connect, migrate
from inferline.store.datasets import DatasetItem, DatasetStore
from inferline.store.experiments import ExperimentStore
from inferline.store.traces import TraceFilter, TraceStore

BIN = Path(sys.executable).parent / "inferline"
PERSON = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
}
NAME_ONLY = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": {"type": "string"}},
}
TEXTS = [
    "Ann is 31 and lives in Oslo.",
    "Bob, aged 45, is a baker.",
    "Cleo turned 27 today.",
    "Dan (52) fixes bikes.",
    "Eve is a 38 year old pilot.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(directory: Path, config: str) -> tuple[subprocess.Popen[bytes], str, str]:
    (directory / "gateway.yaml").write_text(config)
    port, url = free_port(), f"sqlite:///{directory / 'inferline.db'}"
    log = (directory / f"serve-{port}.log").open("wb")
    process = subprocess.Popen(
        [
            str(BIN),
            "serve",
            "--config",
            str(directory / "gateway.yaml"),
            "--port",
            str(port),
            "--database-url",
            url,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return process, base, url
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit("the server did not start")


async def experiments(base: str, url: str, items: int) -> list[dict[str, Any]]:
    database = connect(url)
    migrate(database)
    datasets, store = DatasetStore(database), ExperimentStore(database)
    words = ["amber", "fox", "river", "eagles"]
    rows = [
        DatasetItem(f"i{n}", f"Say something about item {n}.", words[n % 4]) for n in range(items)
    ]
    datasets.write("bench", rows, source="file")
    out = []
    for target, concurrency, count, params in (
        ("partner", 1, items, {"max_tokens": 8}),
        ("partner", 8, items, {"max_tokens": 8}),
        ("partner", 32, items, {"max_tokens": 8}),
        ("bot", 8, 32, {"max_tokens": 16, "temperature": 0}),
    ):
        plan = Plan("bench", 1, (target,), ("contains",), 1, params)
        experiment = start(store, datasets, plan)
        gateway = HttpGateway(base, headers={"cache-control": "no-store"})
        began = time.perf_counter()
        await Runner(store, gateway, [Contains()], concurrency=concurrency).run(
            experiment["id"], datasets.items("bench")[:count]
        )
        wall = time.perf_counter() - began
        await gateway.aclose()
        result = store.rows(experiment["id"])
        out.append(
            {
                "target": target,
                "concurrency": concurrency,
                "items": count,
                "seconds": wall,
                "items_per_s": count / wall,
                "errors": sum(1 for r in result if r["status_code"] != 200),
            }
        )
        print(f"experiment {target} c={concurrency}: {count / wall:.1f} items/s", flush=True)
    return out


async def replay_fidelity(
    base: str, url: str, requests: int, gap_ms: float
) -> list[dict[str, Any]]:
    rng = random.Random(7)
    marker = f"replay-bench-{time.time_ns()}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        tasks, start_at = [], time.perf_counter()
        offset = 0.0
        for n in range(requests):
            offset += rng.expovariate(1000 / gap_ms)
            delay = start_at + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = {
                "model": "partner",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"{marker} {n}"}],
            }
            tasks.append(asyncio.create_task(client.post("/v1/chat/completions", json=body)))
        await asyncio.gather(*tasks)
    await asyncio.sleep(1.5)  # the log writer's flush
    store = TraceStore(connect(url))
    traces, before = [], None
    while True:
        page, more = store.list(TraceFilter(text=marker, limit=500, before_id=before))
        traces.extend(page)
        if not more:
            break
        before = page[-1]["cursor"]
    logged = [r for r in map(logged_of, traces) if r is not None]
    out = []
    for speed in (1.0, 2.0):
        async with httpx.AsyncClient(
            base_url=base, timeout=60, limits=httpx.Limits(max_connections=None)
        ) as client:
            results = await replay(client, logged, ReplayOptions(speed=speed))
        arrival = compare(results)["arrival"]
        out.append({"speed": speed, "requests": len(results), **arrival})
        print(
            f"replay x{speed}: gap error p50 {arrival['gap_error_p50']:.4f} "
            f"p95 {arrival['gap_error_p95']:.4f}",
            flush=True,
        )
    return out


def rollouts(directory: Path) -> list[dict[str, Any]]:
    (directory / "person.json").write_text(json.dumps(PERSON))
    url = f"sqlite:///{directory / 'inferline.db'}"
    good = "Extract the person as JSON with their name and age."
    for prompt_id, schema, wording in (
        ("worse", PERSON, good),
        ("worse", NAME_ONLY, good + " Only the name."),
        ("equal", PERSON, good),
        ("equal", PERSON, "Give the name and age as JSON."),
    ):
        body = {
            "id": prompt_id,
            "route": "bot",
            "params": {"max_tokens": 48, "temperature": 0},
            "messages": [
                {"role": "system", "content": wording},
                {"role": "user", "content": "{{ text }}"},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": schema},
            },
        }
        path = directory / f"{prompt_id}.yaml"
        path.write_text(json.dumps(body))
        subprocess.run(
            [str(BIN), "prompts", "push", str(path), "--database-url", url],
            check=True,
            capture_output=True,
        )
    entries = "".join(
        f"""  - {{name: {p}, prompt: {p}, baseline: 1, candidate: 2, share: 0.2,
      scorers: [json_schema:person.json]}}
"""
        for p in ("worse", "equal")
    )
    config = (
        "models:\n  - {name: local, kind: llm, source: smollm2-135m, weight_format: int8}\n"
        f"routes:\n  - {{name: bot, targets: [local]}}\nrollouts:\n{entries}"
    )
    process, base, _ = serve(directory, config)
    out = []
    try:
        for name in ("worse", "equal"):
            sent, began = 0, time.perf_counter()

            def ask(n: int, prompt_id: str = name) -> None:
                body = {
                    "prompt": {"id": prompt_id, "variables": {"text": TEXTS[n % 5]}},
                    "user": f"{prompt_id}-user-{n}",
                    "messages": [],
                }
                httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)

            with ThreadPoolExecutor(4) as pool:
                while (
                    httpx.get(f"{base}/v1/rollouts/{name}").json()["state"] == "running"
                    and sent < 1000
                ):
                    list(pool.map(ask, range(sent, sent + 4)))
                    sent += 4
            view = httpx.get(f"{base}/v1/rollouts/{name}").json()
            decided = view["events"][-1]
            arms = decided["evidence"].get("arms", {})
            out.append(
                {
                    "rollout": name,
                    "state": view["state"],
                    "requests_sent": sent,
                    "seconds": time.perf_counter() - began,
                    "candidate_samples": arms.get("candidate", {}).get("n"),
                    "baseline_samples": arms.get("baseline", {}).get("n"),
                    "expected_samples": decided["evidence"].get("expected_samples"),
                    "reason": decided["reason"],
                }
            )
            print(f"rollout {name}: {out[-1]}", flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cpu = cpu_description()
    tag = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40]
    out = args.out or Path(__file__).parent / "results" / f"{date.today()}-{tag}"
    upstream = start_fake_upstream(port=0, mode="process")
    result: dict[str, Any] = {"cpu": cpu, "date": str(date.today())}
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        config = (
            "models:\n  - {name: local, kind: llm, source: smollm2-135m, weight_format: int8}\n"
            f"  - {{name: partner, kind: openai, base_url: '{upstream.api_base}', model: partner}}\n"
            "routes:\n  - {name: bot, targets: [local]}\n"
        )
        process, base, url = serve(Path(first), config)
        try:
            result["experiments"] = asyncio.run(experiments(base, url, args.items))
            result["replay"] = asyncio.run(replay_fidelity(base, url, args.requests, args.gap_ms))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
        result["rollouts"] = rollouts(Path(second))
    upstream.stop()
    out.mkdir(parents=True, exist_ok=True)
    (out / "evals_loop.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Evaluation loop — {cpu}, {result['date']}",
        "",
        "| experiment target | concurrency | items | items/s | errors |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {e['target']} | {e['concurrency']} | {e['items']} | {e['items_per_s']:.1f} | "
        f"{e['errors']} |"
        for e in result["experiments"]
    ]
    lines += [
        "",
        "| replay speed | requests | gap error p50 | p95 | latest send (s) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['speed']} | {r['requests']} | {r['gap_error_p50']:.4f} | {r['gap_error_p95']:.4f} | "
        f"{r['late_s_max']:.4f} |"
        for r in result["replay"]
    ]
    lines += [
        "",
        "| rollout | state | candidate samples | expected (worse/equal) | requests | s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['rollout']} | {r['state']} | {r['candidate_samples']} | "
        f"{r['expected_samples']} | {r['requests_sent']} | {r['seconds']:.1f} |"
        for r in result["rollouts"]
    ]
    (out / "evals_loop.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
