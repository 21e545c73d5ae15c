"""Micro-batching benchmark: embeddings and the example classifier, batching on versus off.

For each setting (``on``: the models file's batching; ``off``: max_batch_size 1, no wait) a
real `inferline serve --config` process runs, and a closed-loop client sends one-row requests
at concurrency 1, 8 and 32 for a fixed time per cell: a 64-token sentence to
``/v1/embeddings``, a 30-feature row to ``/v1/predict/risk-classifier`` and to
``/v1/predict/noop`` (a model that costs nothing: the server's own ceiling). The offline
ceiling of the embedding model is measured in the same run: sentence-transformers ``encode``
at batch 64 and 1, and our own forward pass at batch 64, on the same sentences.

usage: .venv/bin/python benchmarks/batching.py [--seconds 8] [--out DIR]
Prints a table and writes batching.json and batching.md (default: benchmarks/results/
<date>-<cpu>/). Hold ``flock /tmp/bench.lock`` around it, as benchmarks/compare does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "inferline"
SENTENCE_TOKENS = 64
CONCURRENCIES = (1, 8, 32)
MODELS = """
models:
  - name: all-minilm-l6-v2
    kind: sentence-embeddings
    batching: {batching_embed}
  - name: risk-classifier
    kind: onnx
    source: example:risk-classifier
    batching: {batching_table}
  - name: noop
    kind: noop
    options: {{num_features: 30}}
    batching: {batching_table}
"""
SETTINGS = {
    "on": ("{max_batch_size: 32, max_wait_ms: 10}", "{max_batch_size: 64, max_wait_ms: 2}"),
    "off": ("{max_batch_size: 1, max_wait_ms: 0}", "{max_batch_size: 1, max_wait_ms: 0}"),
}


def sentences(count: int) -> list[str]:
    """Distinct sentences of exactly SENTENCE_TOKENS tokens ([CLS] and [SEP] included)."""
    from inferline.predictors import SentenceEmbedder

    embedder = SentenceEmbedder("probe")
    words = [
        "risk",
        "model",
        "score",
        "batch",
        "queue",
        "latency",
        "token",
        "vector",
        "server",
        "client",
    ]
    rng = random.Random(0)
    out = []
    for i in range(count):
        text = f"request {i}"
        while len(embedder.decode(text, "x")) < SENTENCE_TOKENS:
            text += " " + rng.choice(words)
        out.append(text)
    return out


def offline_ceiling(texts: list[str]) -> dict[str, float]:
    """Sentences/s: sentence-transformers at batch 64 and 1, ours at batch 64."""
    import torch
    from sentence_transformers import SentenceTransformer

    from inferline.predictors import SentenceEmbedder
    from inferline.predictors.embeddings import resolve_model_dir

    torch.set_num_threads(2)
    reference = SentenceTransformer(str(resolve_model_dir("all-minilm-l6-v2")), device="cpu")
    ours = SentenceEmbedder("ours")
    ours.setup()
    rows = [ours.decode(t, "x") for t in texts]

    def rate(run: Any, batch: int, total: int) -> float:
        run(texts[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, total, batch):
            run(texts[i : i + batch])
        return total / (time.perf_counter() - start)

    def st(batch_texts: list[str]) -> None:
        reference.encode(batch_texts, batch_size=len(batch_texts))

    def own(batch_texts: list[str]) -> None:
        ours.predict(rows[: len(batch_texts)])

    return {
        "sentence_transformers_b64": rate(st, 64, 512),
        "sentence_transformers_b1": rate(st, 1, 64),
        "inferline_forward_b64": rate(own, 64, 512),
        "inferline_forward_b32": rate(own, 32, 512),
    }


CLIENTS_PER_PROCESS = 8  # one asyncio httpx client saturates its core beyond about 8


def closed_loop(
    url: str, bodies: list[dict[str, Any]], concurrency: int, seconds: float
) -> dict[str, Any]:
    """``concurrency`` clients, each sending one request after the other, for ``seconds``.

    The clients are spread over processes of at most 8 each: a single asyncio httpx client
    at 32 connections measured 335 requests/s against the no-op model where 4 processes of
    8 measured 1020, so one process would have measured the client.
    """
    shares = [CLIENTS_PER_PROCESS] * (concurrency // CLIENTS_PER_PROCESS)
    if concurrency % CLIENTS_PER_PROCESS:
        shares.append(concurrency % CLIENTS_PER_PROCESS)
    offsets = [sum(shares[:i]) for i in range(len(shares))]
    with ProcessPoolExecutor(len(shares), mp_context=get_context("spawn")) as pool:
        runs = list(
            pool.map(
                _client_process,
                [url] * len(shares),
                [bodies] * len(shares),
                shares,
                offsets,
                [seconds] * len(shares),
            )
        )
    latencies = sorted(x for run in runs for x in run[0]) or [float("nan")]
    elapsed = max(run[2] for run in runs)
    return {
        "requests": sum(len(run[0]) for run in runs),
        "failed": sum(run[1] for run in runs),
        "throughput_rps": sum(len(run[0]) for run in runs) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def _client_process(
    url: str, bodies: list[dict[str, Any]], concurrency: int, offset: int, seconds: float
) -> tuple[list[float], int, float]:
    return asyncio.run(_clients(url, bodies, concurrency, offset, seconds))


async def _clients(
    url: str, bodies: list[dict[str, Any]], concurrency: int, offset: int, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    failures = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for body in bodies[offset : offset + concurrency]:  # warm-up: connections, batches
            await client.post(url, json=body)
        stop = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            nonlocal failures
            n = index
            while time.perf_counter() < stop:
                start = time.perf_counter()
                response = await client.post(url, json=bodies[n % len(bodies)])
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    failures += 1
                n += concurrency

        begin = time.perf_counter()
        await asyncio.gather(*(worker(offset + i) for i in range(concurrency)))
        return latencies, failures, time.perf_counter() - begin


def start_server(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`inferline serve --config`, waited for until /ready answers."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "INFERLINE_API_KEY": ""}
    process = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--config", str(config), "--no-log-text"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not become ready")


def run_setting(setting: str, texts: list[str], seconds: float, work: Path) -> list[dict[str, Any]]:
    """Every model x concurrency cell against one server."""
    from inferline.predictors.examples import train_risk_classifier

    embed, table = SETTINGS[setting]
    config = work / f"models-{setting}.yaml"
    config.write_text(MODELS.format(batching_embed=embed, batching_table=table))
    port = 8200 + (setting == "off")
    process = start_server(config, port, work / f"server-{setting}.log")
    base = f"http://127.0.0.1:{port}/v1"
    _, data = train_risk_classifier()
    feature_rows = data.data.tolist()
    targets = {
        "embeddings": (
            f"{base}/embeddings",
            [{"model": "all-minilm-l6-v2", "input": t} for t in texts],
        ),
        "classifier": (
            f"{base}/predict/risk-classifier",
            [{"instances": [r]} for r in feature_rows],
        ),
        "noop": (f"{base}/predict/noop", [{"instances": [r]} for r in feature_rows]),
    }
    cells = []
    try:
        for model, (url, bodies) in targets.items():
            for concurrency in CONCURRENCIES:
                result = closed_loop(url, bodies, concurrency, seconds)
                cell = {"model": model, "batching": setting, "concurrency": concurrency, **result}
                print(_row(cell), flush=True)
                cells.append(cell)
    finally:
        process.terminate()
        process.wait(60)
    return cells


def _row(cell: dict[str, Any]) -> str:
    return (
        f"| {cell['model']:10s} | {cell['batching']:3s} | {cell['concurrency']:3d} | "
        f"{cell['throughput_rps']:9.1f} | {cell['p50_ms']:8.1f} | {cell['p95_ms']:8.1f} | "
        f"{cell['requests']:6d} | {cell['failed']:3d} |"
    )


HEADER = (
    "| model      | on? |   c | req/s     | p50 ms   | p95 ms   | ok     | err |\n"
    "|------------|-----|-----|-----------|----------|----------|--------|-----|"
)


def targets(cells: list[dict[str, Any]], ceiling: dict[str, float]) -> dict[str, Any]:
    """The issue's three targets, as ratios from this run."""

    def cell(model: str, setting: str, concurrency: int) -> dict[str, Any]:
        return next(
            c
            for c in cells
            if (c["model"], c["batching"], c["concurrency"]) == (model, setting, concurrency)
        )

    embed = cell("embeddings", "on", 32)["throughput_rps"] / ceiling["sentence_transformers_b64"]
    classify = (
        cell("classifier", "on", 32)["throughput_rps"] / cell("noop", "on", 32)["throughput_rps"]
    )
    p95 = {
        model: cell(model, "on", 1)["p95_ms"] / cell(model, "off", 1)["p95_ms"]
        for model in ("embeddings", "classifier")
    }
    return {
        "embeddings_c32_vs_offline_b64": embed,
        "classifier_c32_vs_noop_c32": classify,
        "c1_p95_on_vs_off": p95,
        "met": {
            "embeddings >= 0.9 offline": embed >= 0.9,
            "classifier >= 0.8 noop": classify >= 0.8,
            "c1 p95 <= 1.2x": all(v <= 1.2 for v in p95.values()),
        },
    }


def main() -> None:
    """Runs everything, prints the table, writes JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per cell")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    texts = sentences(512)
    ceiling = offline_ceiling(texts)
    print("offline sentences/s:", json.dumps({k: round(v, 1) for k, v in ceiling.items()}))
    print(HEADER)
    cells = []
    with tempfile.TemporaryDirectory() as work:
        for setting in ("on", "off"):
            cells += run_setting(setting, texts, args.seconds, Path(work))
    summary = targets(cells, ceiling)
    print(json.dumps(summary, indent=2))
    out = args.out or _default_out()
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "cpu": _cpu(),
        "seconds_per_cell": args.seconds,
        "sentence_tokens": SENTENCE_TOKENS,
        "offline_sentences_per_s": ceiling,
        "cells": cells,
        "targets": summary,
    }
    (out / "batching.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Micro-batching, {result['when']}, {result['cpu']}",
        "",
        "Closed loop, one row per request, "
        f"{args.seconds:.0f} s per cell; embeddings: {SENTENCE_TOKENS}-token sentences.",
        "",
        "Offline (sentences/s): " + ", ".join(f"{k} {v:.1f}" for k, v in ceiling.items()),
        "",
        HEADER,
        *(_row(c) for c in cells),
        "",
        "```json",
        json.dumps(summary, indent=2),
        "```",
    ]
    (out / "batching.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'batching.json'} and batching.md")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _default_out() -> Path:
    cpu = "amd-epyc" if "AMD" in _cpu() else "intel-xeon" if "Intel" in _cpu() else "cpu"
    return REPO / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-{cpu}"


if __name__ == "__main__":
    main()
