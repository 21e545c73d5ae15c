"""What a route's checks cost: each check kind evaluated once (µs), and the output tokens/s
of a served route with no checks, with an output logprob check, and with input checks.

Micro: `inferline.guard.evaluate.input_outcomes` / `output_outcomes` called directly, one
check at a time, ``--runs`` times each after a warm-up (median and p95, µs): pattern (all
detectors) on a 200-word user message with and without a match, length, missing_context,
logprob on a 64-token answer (logprobs only, and ``max_entropy`` with 5 alternatives a
token), json_schema (a small schema), tool (three calls), and classifier with the real
MiniLM sentence-embeddings model, built as ``serve`` builds it (`build_predictors`, then
`guard_classifiers`), on the 200-word message (clipped to 150 words) and on the answer.

Served: one ``inferline serve --config`` (SmolLM2-135M int8 on the CPU) with three routes
to the same model: ``plain`` (no checks), ``logprob`` (``{on: output, kind: logprob,
min_mean: -100, action: abstain}``: never fires, but the answer is held until the end and
the engine computes token logprobs) and ``input`` (pattern with all detectors + length on
the input). Closed loop of streamed chat requests (``ignore_eos``, ``--max-tokens`` out) at
concurrency 1 and 16; in each of ``--rounds`` rounds every route runs once per concurrency,
the route order rotated each round, the same prompts for every route. A held stream
delivers its tokens at the end, so the figures are output tokens/s and end-to-end time;
TTFT only means something for ``plain`` and ``input``. Before each cell the benchmark waits
(up to ``--max-wait`` s) until other processes use < 0.1 cores and counts the cores they
used during it († when > 0.1).

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/check_overhead.py [--quick]
           [--rounds 8] [--requests-c1 12] [--requests-c16 48] [--max-tokens 64] [--out DIR]
Writes check_overhead.json and check_overhead.md to ``--out`` (default
benchmarks/results/<date>-<cpu tag>/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from inferline.bench.host import cpu_description, cpu_seconds, host_busy_s
from inferline.core import CompletionOutput, GenerationRequest
from inferline.core.outputs import Logprob, ToolCall
from inferline.core.sampling_params import SamplingParams
from inferline.core.structured import StructuredOutput
from inferline.guard import GuardCheck, GuardPolicy
from inferline.guard.detectors import DETECTORS
from inferline.guard.evaluate import input_outcomes, output_outcomes

REPO = Path(__file__).resolve().parents[1]
ROUTES = ("plain", "logprob", "input")
CONCURRENCIES = (1, 16)
QUIET_CORES = 0.1
TEXT = ("the quarterly report shows steady growth in every region while costs stayed flat and "
        "the team plans to hire two engineers next spring to support the new billing service "
        "that customers asked for during the last review meeting")  # fmt: skip
WORDS = TEXT.split()
ALL_DETECTORS = tuple(DETECTORS)
CONFIG = f"""models:
  - {{name: small, kind: llm, source: smollm2-135m, weight_format: int8}}
routes:
  - name: plain
    targets: [small]
  - name: logprob
    targets: [small]
    checks: [{{on: output, kind: logprob, min_mean: -100, action: abstain}}]
  - name: input
    targets: [small]
    checks:
      - {{on: input, kind: pattern, detectors: [{", ".join(ALL_DETECTORS)}], action: block}}
      - {{on: input, kind: length, max_chars: 20000, action: block}}
"""


def words(n: int, offset: int = 0) -> str:
    """``n`` plain English words (no PII)."""
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n))


# --- micro ---------------------------------------------------------------------------------


def ask(text: str, **more: Any) -> GenerationRequest:
    return GenerationRequest("r", messages=[{"role": "user", "content": text}], model="m", **more)


def answer(tokens: int, top: int) -> CompletionOutput:
    """A ``tokens``-token answer with logprobs (``top`` alternatives a token)."""
    lps = [Logprob(i, w, -0.1 - (i % 7) * 0.2,
                   tuple((i + k, w, -0.1 - k * 0.7) for k in range(top)))
           for i, w in enumerate(words(tokens).split())]  # fmt: skip
    return CompletionOutput(0, text=words(tokens), logprobs=lps, finish_reason="length")


async def timed(call: Callable[[], Awaitable[Any]], runs: int) -> dict[str, float]:
    """Median and p95 (µs) of ``runs`` calls, after ``runs // 10`` warm-up calls."""
    for _ in range(max(3, runs // 10)):
        await call()
    took = []
    for _ in range(runs):
        started = time.perf_counter_ns()
        await call()
        took.append((time.perf_counter_ns() - started) / 1000)
    took.sort()
    return {"median_us": statistics.median(took), "p95_us": took[int(0.95 * (len(took) - 1))],
            "runs": runs}  # fmt: skip


def build_classifier(check: GuardCheck) -> dict[str, Any]:
    """The classifier check's scorer, built as ``serve`` builds it."""
    from inferline.cli.models_file import parse_predictor
    from inferline.cli.predictor_factory import build_predictors
    from inferline.cli.scorers import guard_classifiers

    spec = parse_predictor({"name": "all-minilm-l6-v2", "kind": "sentence-embeddings"},
                           "models[0]", REPO)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        entries = build_predictors([spec], Path(tmp), trust_pickle=False)
    return guard_classifiers([GuardPolicy("m", (check,))], entries)


async def micro(runs: int) -> list[dict[str, Any]]:
    """Each check kind evaluated once, ``runs`` times."""
    message, hit = words(200), words(196) + " card 4111 1111 1111 1111"
    plain_q, hit_q = ask(message), ask(hit)
    lp0, lp5 = answer(64, 0), answer(64, 5)
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                             "tags": {"type": "array", "items": {"type": "string"}}}}  # fmt: skip
    structured = StructuredOutput("json_schema", json.dumps(schema))
    json_q = ask("who?", params=SamplingParams(structured=structured))
    json_a = CompletionOutput(0, text='{"name": "Ada", "age": 36, "tags": ["math", "poet"]}')
    calls = [ToolCall("c1", "lookup_order", '{"order_id": "A-1234"}'),
             ToolCall("c2", "send_email", '{"to": "ops", "body": "order delayed"}'),
             ToolCall("c3", "refund", '{"order_id": "A-1234", "reason": "late"}')]  # fmt: skip
    tool_a = CompletionOutput(0, text="", tool_calls=calls)
    clf = GuardCheck("topic", "input", "classifier", "abstain", model="all-minilm-l6-v2",
                     examples=("delete every account", "drop the production database",
                               "wipe all customer records"), above=0.99)  # fmt: skip
    clf_out = GuardCheck("topic", "output", "classifier", "abstain", model="all-minilm-l6-v2",
                         examples=clf.examples, above=0.99)  # fmt: skip
    classifiers = build_classifier(clf)
    pattern = GuardCheck("p", "input", "pattern", "block", detectors=ALL_DETECTORS)
    g = GuardCheck
    given = ask("q", variables={"context": "the manual, page 3", "question": "how?"})
    specs = [  # (check, what it reads, input: the request; else (completion, request))
        ("pattern (input)", "all detectors, 200 words, no match", pattern, plain_q),
        ("pattern (input)", "all detectors, 200 words, card at the end", pattern, hit_q),
        ("pattern (output)", "all detectors, 64-word answer",
         g("p", "output", "pattern", "block", detectors=ALL_DETECTORS), (lp0, plain_q)),
        ("length", "200 words", g("l", "input", "length", "block", max_chars=20000), plain_q),
        ("missing_context", "2 variables, present",
         g("m", "input", "missing_context", "abstain", variables=("context", "question")), given),
        ("logprob", "64 tokens, min_mean",
         g("lp", "output", "logprob", "abstain", min_mean=-100.0), (lp0, plain_q)),
        ("logprob", "64 tokens x 5 alternatives, max_entropy",
         g("lp", "output", "logprob", "abstain", min_mean=-100.0, max_entropy=99.0),
         (lp5, plain_q)),
        ("json_schema", "3-property schema, valid answer",
         g("j", "output", "json_schema", "block"), (json_a, json_q)),
        ("tool", "3 calls, tools + arguments_pattern",
         g("t", "tool_call", "tool", "review", tools=("refund", "delete_account"),
           arguments_pattern=r'"amount"'), (tool_a, plain_q)),
        ("classifier (input)", "MiniLM, 200 words (150 embedded), 3 examples", clf, plain_q),
        ("classifier (output)", "MiniLM, 64-word answer, 3 examples", clf_out, (lp0, plain_q)),
    ]  # fmt: skip
    cases: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = []
    for label, detail, check, on in specs:
        if isinstance(on, GenerationRequest):
            call = functools.partial(input_outcomes, [check], on, classifiers)
        else:
            call = functools.partial(output_outcomes, [check], on[0], on[1], classifiers)
        cases.append((label, detail, call))
    rows = []
    for label, detail, call in cases:
        n = max(50, runs // 20) if label.startswith("classifier") else runs
        (outcome,) = await call()
        rows.append({"check": label, "input": detail, "fired": outcome.fired,
                     **await timed(call, n)})  # fmt: skip
        print(f"  {label:20s} {detail:45s} {rows[-1]['median_us']:10.1f} µs", flush=True)
    return rows


# --- served --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``inferline serve --config`` with the three routes, ready."""
    config = workdir / "checks.yaml"
    config.write_text(CONFIG)
    port, log = free_port(), workdir / "server.log"
    process = subprocess.Popen(
        [str(REPO / ".venv/bin/inferline"), "serve", "--port", str(port), "--database-url",
         f"sqlite:///{workdir / 'requests.db'}", "--config", str(config)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "INFERLINE_API_KEY": ""},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return process, url
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"serve did not start: see {log}")


def other_cores(pid: int, seconds: float) -> float:
    """Cores used by processes other than the server and this one over ``seconds``."""
    host0, server0, own0 = host_busy_s(), cpu_seconds(pid), time.process_time()
    time.sleep(seconds)
    ours = cpu_seconds(pid) - server0 + time.process_time() - own0
    return max(0.0, (host_busy_s() - host0 - ours) / seconds)


def prompt(i: int) -> str:
    return f"Request {i}. Write a long, detailed story about this: {words(40, i)}"


async def one(client: httpx.AsyncClient, url: str, route: str, i: int, max_tokens: int) -> dict:
    """One streamed chat request: TTFT, end-to-end and output tokens."""
    body = {"model": route, "messages": [{"role": "user", "content": prompt(i)}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    started, ttft, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{route}: HTTP {response.status_code} {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"{route}: {chunk['error']}")
            choices = chunk.get("choices") or [{}]
            if ttft is None and choices[0].get("delta", {}).get("content"):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"ttft_s": ttft, "e2e_s": time.perf_counter() - started, "tokens": tokens}


async def closed_loop(url: str, route: str, concurrency: int, n: int, max_tokens: int) -> tuple:
    pending = iter(range(n))
    results: list[dict] = []
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker() -> None:
            for i in pending:
                results.append(await one(client, url, route, i, max_tokens))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results, time.perf_counter() - started


def cell(args: argparse.Namespace, pid: int, url: str, route: str, c: int) -> dict[str, Any]:
    """One route at one concurrency on a quiet host, again (up to ``--retries`` times) while
    other processes used > `QUIET_CORES` during it; the least disturbed run."""
    n, best = args.requests_c1 if c == 1 else args.requests_c16, None
    for attempt in range(1 + args.retries):
        waited = time.monotonic()
        while other_cores(pid, 1.0) >= QUIET_CORES and time.monotonic() - waited < args.max_wait:
            pass
        host0, server0, own0 = host_busy_s(), cpu_seconds(pid), time.process_time()
        results, wall = asyncio.run(closed_loop(url, route, c, n, args.max_tokens))
        server, own = cpu_seconds(pid) - server0, time.process_time() - own0
        other = max(0.0, (host_busy_s() - host0 - server - own) / wall)
        tokens = sum(r["tokens"] for r in results)
        ttfts = [r["ttft_s"] for r in results if r["ttft_s"] is not None]
        run = {"route": route, "concurrency": c, "requests": n, "output_tokens": tokens,
               "wall_s": wall, "tokens_per_s": tokens / wall,
               "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
               "e2e_p50_s": statistics.median(r["e2e_s"] for r in results),
               "server_cpu_ms_per_token": server / max(1, tokens) * 1000,
               "client_cpu_ms_per_token": own / max(1, tokens) * 1000,
               "other_cpu_cores": other, "runs": attempt + 1}  # fmt: skip
        if best is None or other < best["other_cpu_cores"]:
            best = run
        best["runs"] = attempt + 1
        if other <= QUIET_CORES:
            break
    assert best is not None
    return best


def served(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    process, url = start_server(workdir)
    try:
        for route in ROUTES:  # warm-up: every route at c=16 (the first c=16 run is slower)
            asyncio.run(closed_loop(url, route, 16, 32, args.max_tokens))
        cells = []
        for r in range(args.rounds):
            order = ROUTES[r % 3 :] + ROUTES[: r % 3]
            for c in CONCURRENCIES:
                for route in order:
                    cells.append({"round": r + 1, **cell(args, process.pid, url, route, c)})
                    x = cells[-1]
                    print(f"  round {r + 1} c={c} {route:8s} {x['tokens_per_s']:7.1f} tok/s  "
                          f"e2e p50 {x['e2e_p50_s']:.2f} s  other cores "
                          f"{x['other_cpu_cores']:.2f}", flush=True)  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    return cells


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency and route: tok/s over rounds, spread, ratio to ``plain`` per round."""
    rows = []
    for c in CONCURRENCIES:
        by_round: dict[int, dict[str, dict[str, Any]]] = {}
        for x in cells:
            if x["concurrency"] == c:
                by_round.setdefault(x["round"], {})[x["route"]] = x
        for route in ROUTES:
            own = [r[route] for r in by_round.values()]
            speeds = [x["tokens_per_s"] for x in own]
            ratios = [r[route]["tokens_per_s"] / r["plain"]["tokens_per_s"]
                      for r in by_round.values()]  # fmt: skip
            ttft = [x["ttft_p50_s"] for x in own if x["ttft_p50_s"] is not None]
            rows.append({"concurrency": c, "route": route, "tokens_per_s": speeds,
                         "mean": statistics.fmean(speeds),
                         "spread_pct": (max(speeds) - min(speeds)) / statistics.fmean(speeds) * 100,
                         "ratio_per_round": ratios, "ratio_mean": statistics.fmean(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "ttft_p50_s": statistics.median(ttft) if ttft else None,
                         "e2e_p50_s": statistics.median(x["e2e_p50_s"] for x in own),
                         **{k: statistics.fmean(x[k] for x in own) for k in
                            ("server_cpu_ms_per_token", "client_cpu_ms_per_token")},
                         "max_other_cores": max(x["other_cpu_cores"] for x in own)})  # fmt: skip
    return rows


# --- report --------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [f"# Check overhead ({meta['date']})", "",
             f"Host: {meta['host']}. Commit {meta['commit']}{' (dirty)' if meta['dirty'] else ''}."
             f" Command: `{meta['command']}`", "",
             f"## Micro: one check evaluated once ({meta['runs']} runs; classifier fewer)", "",
             "| check | input | fired | median µs | p95 µs |", "|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['check']} | {r['input']} | {r['fired']} | {r['median_us']:.1f} | "
              f"{r['p95_us']:.1f} |" for r in result["micro"]]  # fmt: skip
    if not result["summary"]:
        return "\n".join(lines) + "\n"
    lines += ["", f"## Served: SmolLM2-135M int8, streamed chat, {meta['max_tokens']} tokens out "
              f"(ignore_eos), {meta['rounds']} rounds, requests per cell: c=1 "
              f"{meta['requests_c1']}, c=16 {meta['requests_c16']}", "",
              "| c | route | tok/s per round | mean tok/s | spread % | ratio to plain per round "
              "| ratio mean (min..max) | TTFT p50 s | e2e p50 s | server CPU ms/token "
              "| client CPU ms/token | max other cores |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for s in result["summary"]:
        ttft = "held" if s["route"] == "logprob" else f"{s['ttft_p50_s']:.3f}"
        other = f"{s['max_other_cores']:.2f}" + (" †" if s["max_other_cores"] > QUIET_CORES else "")
        speeds, ratios = (
            ", ".join(f"{v:{f}}" for v in s[k])
            for k, f in (("tokens_per_s", ".1f"), ("ratio_per_round", ".3f"))
        )
        lines.append(
            f"| {s['concurrency']} | {s['route']} | {speeds} | {s['mean']:.1f} | "
            f"{s['spread_pct']:.1f} | {ratios} | {s['ratio_mean']:.3f} "
            f"({s['ratio_min']:.3f}..{s['ratio_max']:.3f}) | {ttft} | {s['e2e_p50_s']:.2f} | "
            f"{s['server_cpu_ms_per_token']:.2f} | {s['client_cpu_ms_per_token']:.2f} | "
            f"{other} |")  # fmt: skip
    lp = next(r for r in result["micro"] if r["check"] == "logprob")
    lines += ["", "- logprob's ratio is net: the engine computes logprobs, and the held answer's "
              "chunks are written in one burst at the end (see client CPU ms/token)"]  # fmt: skip
    for s in (s for s in result["summary"] if s["route"] == "plain"):
        token_us = 1e6 / s["mean"]
        share = lp["median_us"] / meta["max_tokens"] / token_us * 100
        lines.append(f"- c={s['concurrency']}: the logprob check (min_mean) costs "
                     f"{lp['median_us'] / meta['max_tokens']:.3f} µs per answer token, "
                     f"{share:.4f}% of a served token ({token_us:.0f} µs at plain's)")  # fmt: skip
    return "\n".join(lines) + "\n"


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def default_out() -> Path:
    """benchmarks/results/<date>-<cpu tag>/ (``Intel(R) Xeon(R) Processor`` -> intel-xeon)."""
    name = re.sub(r"\([^)]*\)|@.*|,.*", "", cpu_description().lower())
    name = re.sub(r"\b(cpu|processor)\b", "", name)
    tag = re.sub(r"[^a-z0-9]+", "-", name).strip("-")[:32] or "cpu"
    return REPO / "benchmarks" / "results" / f"{date.today()}-{tag}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000, help="micro: calls per check")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests-c1", type=int, default=12)
    parser.add_argument("--requests-c16", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-wait", type=float, default=120.0, help="s to wait for quiet")
    parser.add_argument("--retries", type=int, default=2, help="reruns of a disturbed cell")
    parser.add_argument("--skip-served", action="store_true")
    parser.add_argument("--quick", action="store_true", help="500 runs, 1 round, few requests")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.rounds, args.requests_c1, args.requests_c16 = 500, 1, 3, 16
    print("micro:", flush=True)
    rows = asyncio.run(micro(args.runs))
    cells: list[dict[str, Any]] = []
    if not args.skip_served:
        print("served:", flush=True)
        with tempfile.TemporaryDirectory(prefix="inferline-check-overhead-") as tmp:
            cells = served(args, Path(tmp))
    result = {
        "meta": {"date": str(date.today()), "host": cpu_description(),
                 "commit": git("rev-parse", "--short", "HEAD"),
                 "dirty": bool(git("status", "--porcelain", "--", "src")),
                 "command": " ".join(["python", *sys.argv]),
                 **{k: v for k, v in vars(args).items() if k != "out"}},
        "micro": rows, "cells": cells, "summary": summarize(cells) if cells else [],
    }  # fmt: skip
    table = markdown(result)
    print(table)
    out = args.out or default_out()
    out.mkdir(parents=True, exist_ok=True)
    (out / "check_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "check_overhead.md").write_text(table)
    print(f"wrote {out / 'check_overhead.json'} and check_overhead.md")


if __name__ == "__main__":
    main()
