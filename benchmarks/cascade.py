"""A cascade small -> large, served: accuracy, cost and latency against small-only and
large-only, on the labelled question set, through a real ``inferline serve`` gateway.

One server runs both local models (SmolLM2-135M and Qwen2.5-Coder-0.5B, int8 weights) with
a price per model, and five names: ``small`` and ``large`` (each model alone) and three
``cascade`` routes whose check is the small answer's mean token logprob at three
thresholds (defaults from ``benchmarks/cascade_offline.py``: they accepted about 70/50/30%
of the small answers offline). Every question goes to every name, one request at a time,
greedy, ``max_tokens`` 24 and ``stop: ["\\n"]`` (the first line is the answer). Cost comes
from the server's own request log (every attempt priced, the rejected small answers of the
cascade included), latency from the client.

usage:
  flock /tmp/bench.lock .venv/bin/python benchmarks/cascade.py [--limit N] [--out DIR]
      [--thresholds -0.362 -0.472 -0.602]

Prefix caching stays on (as served): a prompt seen before may be answered from cached
blocks, which can change an int8 model's greedy answer slightly (the offline probe saw one
such question out of 138).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
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
sys.path.insert(0, str(ROOT))
from cascade_offline import is_correct, load_questions  # noqa: E402

from inferline.bench.host import cpu_description  # noqa: E402

DEFAULT_QUESTIONS = ROOT / "data" / "cascade_questions.jsonl"
PRICES = {"small": 0.05, "large": 0.20}  # USD per million tokens, input and output alike
BIN = Path(sys.executable).parent / "inferline"


def config_text(thresholds: list[float]) -> str:
    """The gateway config: the two models and one cascade route per threshold."""
    routes = "".join(
        f"""
  - name: cascade-{i}
    strategy: cascade
    targets: [small, large]
    checks: [{{kind: logprob_mean, threshold: {t}}}]"""
        for i, t in enumerate(thresholds, 1)
    )
    return f"""models:
  - name: small
    kind: llm
    source: smollm2-135m
    weight_format: int8
    price: {{input_per_mtok: {PRICES["small"]}, output_per_mtok: {PRICES["small"]}}}
  - name: large
    kind: llm
    source: qwen2.5-coder-0.5b
    weight_format: int8
    price: {{input_per_mtok: {PRICES["large"]}, output_per_mtok: {PRICES["large"]}}}
routes:{routes}
"""


def start_server(directory: Path, config: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``inferline serve --config`` on a free port; returns it once /ready answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    database = f"sqlite:///{directory / 'requests.db'}"
    log = (directory / "server.log").open("wb")
    process = subprocess.Popen(
        [str(BIN), "serve", "--config", str(config), "--port", str(port)]
        + ["--database-url", database],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "INFERLINE_API_KEY": ""},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited; see {directory / 'server.log'}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not become ready")


def ask(client: httpx.Client, name: str, question: dict[str, Any]) -> dict[str, Any]:
    """One greedy answer: text, who answered, request id, latency."""
    body = {
        "model": name,
        "messages": question["messages"],
        "max_tokens": 24,
        "temperature": 0,
        "stop": ["\n"],
    }
    started = time.perf_counter()
    response = client.post("/v1/chat/completions", json=body)
    latency_s = time.perf_counter() - started
    response.raise_for_status()
    reply = response.json()
    text = reply["choices"][0]["message"]["content"] or ""
    return {
        "id": question["id"],
        "name": name,
        "text": text,
        "correct": is_correct(text, question["answers"], question["match"]),
        "answered_by": reply["model"],
        "request_id": response.headers["x-request-id"],
        "latency_s": latency_s,
    }


def costs(database: Path) -> dict[str, tuple[float, int]]:
    """Cost (USD, every attempt) and attempt count per request id, from the request log."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT request_id, cost_usd, num_attempts FROM requests")
        return {r[0]: (float(r[1]), int(r[2])) for r in rows}


def summarize(answers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Accuracy, escalation, cost and latency of one name over every question."""
    mine = [a for a in answers if a["name"] == name]
    latencies = sorted(a["latency_s"] for a in mine)
    correct = sum(a["correct"] for a in mine)
    cost = sum(a["cost_usd"] for a in mine)
    return {
        "name": name,
        "questions": len(mine),
        "accuracy": correct / len(mine),
        "large_share": sum(a["answered_by"] == "large" for a in mine) / len(mine),
        "cost_usd_per_1k_questions": 1000 * cost / len(mine),
        "cost_usd_per_1k_correct": 1000 * cost / correct if correct else None,
        "latency_s_mean": statistics.fmean(latencies),
        "latency_s_p50": latencies[len(latencies) // 2],
        "latency_s_p90": latencies[int(0.9 * (len(latencies) - 1))],
    }


def markdown(report: dict[str, Any]) -> str:
    """The table of the run, with how it was made."""
    head = (
        "| route | threshold | accuracy | answered by large | cost / 1k questions (USD) "
        "| cost / 1k correct (USD) | latency mean / p50 / p90 (s) |\n|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for row in report["rows"]:
        per_correct = row["cost_usd_per_1k_correct"]
        lines.append(
            f"| {row['name']} | {row.get('threshold', '–')} | {row['accuracy']:.1%} "
            f"| {row['large_share']:.1%} | {row['cost_usd_per_1k_questions']:.5f} "
            f"| {per_correct:.5f} | {row['latency_s_mean']:.3f} / {row['latency_s_p50']:.3f} "
            f"/ {row['latency_s_p90']:.3f} |"
        )
    setup = (
        f"\n\n{report['questions']} questions, {report['machine']}, inferline "
        f"{report['commit']}, {report['date']}. Prices per million tokens: small "
        f"{PRICES['small']}, large {PRICES['large']}. Command: `{report['command']}`.\n"
    )
    return "# Cascade small -> large, served\n\n" + "\n".join(lines) + setup


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Starts the gateway, asks every question under every name, stops it, reads costs."""
    questions = load_questions(args.questions, args.limit)
    names = ["small", "large"] + [f"cascade-{i}" for i in range(1, len(args.thresholds) + 1)]
    with tempfile.TemporaryDirectory(prefix="inferline-cascade-") as tmp:
        directory = Path(tmp)
        config = directory / "gateway.yaml"
        config.write_text(config_text(args.thresholds))
        process, url = start_server(directory, config)
        answers = []
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                for name in names:
                    for question in questions:
                        answers.append(ask(client, name, question))
                    print(f"{name}: done", file=sys.stderr)
        finally:
            process.send_signal(signal.SIGTERM)  # flushes the request log
            process.wait(120)
        spent = costs(directory / "requests.db")
    for answer in answers:
        answer["cost_usd"], answer["attempts"] = spent.get(answer["request_id"], (0.0, 0))
    rows = [summarize(answers, name) for name in names]
    for row, threshold in zip(rows[2:], args.thresholds, strict=True):
        row["threshold"] = threshold
    return {"rows": rows, "answers": answers}


def main() -> None:
    """Runs the benchmark, prints the table, writes JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[-0.362, -0.472, -0.602])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = run(args)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    report |= {
        "questions": len(load_questions(args.questions, args.limit)),
        "machine": cpu_description(),
        "commit": commit,
        "date": date.today().isoformat(),
        "command": " ".join(["python", *sys.argv]),
    }
    out = args.out or ROOT / "results" / f"{date.today().isoformat()}-cascade"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cascade.json").write_text(json.dumps(report, indent=2))
    (out / "cascade.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
