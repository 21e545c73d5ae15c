"""Load time and generation speed of the engine at batch 1 and batch 16.

Usage: flock /tmp/bench.lock .venv/bin/python benchmarks/generate_speed.py [--json OUT]
Prints a table and writes JSON. Each figure is the median (and min) of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from inferline import LLM, SamplingParams
from inferline.cli.main import default_cache_dir
from inferline.engine import EngineConfig
from inferline.models import load_model

PROMPT = "Write a short story about a lighthouse keeper who"


def measure_batch(llm: LLM, batch: int, max_tokens: int, repeats: int) -> dict[str, float]:
    """Output tokens/s over ``repeats`` runs of ``batch`` prompts (fixed output length)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    prompts = [f"{PROMPT} (story {i})" for i in range(batch)]
    llm.generate(prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    rates, ttfts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = llm.generate(prompts, params)
        elapsed = time.perf_counter() - start
        rates.append(batch * max_tokens / elapsed)
        ttfts.append(statistics.median(o.metrics.time_to_first_token_s or 0 for o in outputs))
    return {
        "batch": batch,
        "output_tokens_per_s_median": statistics.median(rates),
        "output_tokens_per_s_max": max(rates),
        "ttft_s_median": statistics.median(ttfts),
        "per_stream_tokens_per_s": statistics.median(rates) / batch,
    }


def main() -> None:
    """Runs the benchmark and prints/writes the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load_times = []
    for _ in range(args.repeats):
        load_times.append(load_model(args.model, cache_dir=default_cache_dir()).load_time_s)
    llm = LLM(config=EngineConfig(model=args.model, cache_dir=default_cache_dir()))
    results = {
        "model": args.model,
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "load_time_s_median": statistics.median(load_times),
        "load_time_s_min": min(load_times),
        "runs": [measure_batch(llm, b, args.max_tokens, args.repeats) for b in (1, 16)],
    }
    print(f"model {args.model}: load {results['load_time_s_median']:.2f} s (median)")
    print(f"{'batch':>5} {'out tok/s':>10} {'per stream':>11} {'TTFT p50':>9}")
    for run in results["runs"]:
        print(
            f"{run['batch']:>5} {run['output_tokens_per_s_median']:>10.1f} "
            f"{run['per_stream_tokens_per_s']:>11.1f} {run['ttft_s_median']:>8.3f}s"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
