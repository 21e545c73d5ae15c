"""`inferline bench`: measure any OpenAI-compatible server (ours or a peer)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from inferline.core.errors import InvalidParameterError


def register(sub: Any) -> None:
    """Adds the ``bench`` subcommand."""
    p = sub.add_parser("bench", help="load-test an OpenAI-compatible server")
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="default: the server's first model")
    p.add_argument("--api-key", default=None)
    p.add_argument("--scenario", default="a", help="a, b4, b16, b32, c, c0, smoke")
    p.add_argument("--concurrency", default=None, help="comma list: a closed-loop sweep")
    p.add_argument("--rate", default=None, help="comma list of requests/s: open-loop sweep")
    p.add_argument("--input-tokens", type=int, default=None)
    p.add_argument("--output-tokens", type=int, default=None)
    p.add_argument(
        "--num-requests",
        type=int,
        default=None,
        help="default: the scenario's (3 x concurrency in a sweep)",
    )
    p.add_argument("--no-ignore-eos", action="store_true", help="let requests stop at EOS")
    p.add_argument("--slo-ttft", type=float, default=2.0, help="goodput SLO, seconds")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="goodput SLO, seconds")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--plot", type=Path, default=None, help="latency vs throughput PNG")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)  # fmt: skip


def _numbers(text: str | None, cast: type) -> list[Any]:
    if text is None:
        return []
    try:
        return [cast(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise InvalidParameterError(f"expected a comma list of numbers, got {text!r}") from exc


def _scenarios(args: argparse.Namespace) -> list[Any]:
    from inferline.bench import SCENARIOS

    base = SCENARIOS.get(args.scenario) if args.scenario in SCENARIOS else None
    if base is None:
        raise InvalidParameterError(f"unknown scenario {args.scenario!r}", "scenario")
    overrides = {
        k: v
        for k, v in (("input_tokens", args.input_tokens), ("output_tokens", args.output_tokens))
        if v is not None
    }
    base = dataclasses.replace(base, **overrides)
    loads = [{"concurrency": c, "rate": None} for c in _numbers(args.concurrency, int)]
    loads += [{"concurrency": None, "rate": r} for r in _numbers(args.rate, float)]
    if not loads:
        return [dataclasses.replace(base, num_requests=args.num_requests or base.num_requests)]
    runs = []
    for load in loads:
        n = args.num_requests or 3 * (load["concurrency"] or max(1, round(load["rate"])))
        runs.append(dataclasses.replace(base, num_requests=n, **load))
    return runs


def _model(args: argparse.Namespace) -> str:
    import httpx

    if args.model:
        return str(args.model)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    response = httpx.get(f"{args.base_url.rstrip('/')}/v1/models", headers=headers, timeout=30)
    response.raise_for_status()
    return str(response.json()["data"][0]["id"])


async def _run_one(args: argparse.Namespace, scenario: Any, model: str) -> dict[str, Any]:
    from rich.progress import Progress

    from inferline.bench import SLO, LoadGenerator, summarize

    generator = LoadGenerator(
        args.base_url, model, api_key=args.api_key, ignore_eos=not args.no_ignore_eos
    )
    label = f"c={scenario.concurrency}" if scenario.concurrency else f"rate={scenario.rate}"
    with Progress(disable=args.no_progress or not sys.stderr.isatty(), transient=True) as bar:
        task = bar.add_task(f"{scenario.name} {label}", total=scenario.num_requests)
        start = time.perf_counter()
        results = await generator.run(scenario, lambda _: bar.advance(task))
        wall_s = time.perf_counter() - start
    summary = summarize(results, wall_s, SLO(args.slo_ttft, args.slo_tpot))
    return {"label": label, "scenario": dataclasses.asdict(scenario), "summary": summary}


def run(args: argparse.Namespace) -> int:
    """Runs each load in turn, prints a table, writes JSON and the plot if asked."""
    from inferline.bench.report import plot, table

    scenarios = _scenarios(args)
    model = _model(args)
    runs = [asyncio.run(_run_one(args, s, model)) for s in scenarios]
    print(table(runs))
    document = {
        "base_url": args.base_url,
        "model": model,
        "machine": {"processor": platform.processor(), "platform": platform.platform()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": runs,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
    if args.plot and not plot(runs, args.plot, f"{model} @ {args.base_url} ({args.scenario})"):
        print("plot skipped: pip install matplotlib", file=sys.stderr)
    return 0 if all(r["summary"]["failed"] == 0 for r in runs) else 1
