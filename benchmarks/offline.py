"""Scenario d: 64 prompts of 256 tokens, 128 output tokens each, submitted at once through
an engine's own Python API (no server), timed from submission to the last token.

usage:
  .venv/bin/python benchmarks/offline.py prompts OUT.json         # write the prompts
  PYTHON benchmarks/offline.py run --engine inferline|vllm --prompts P.json --model M --json OUT

``prompts`` needs inferline (its bench word list: one token per word for SmolLM2);
``run --engine vllm`` imports only vLLM, so it runs in vLLM's own virtualenv. Prints the
figures and writes JSON: output tokens/s, wall time, load time, and the output token count
actually produced (ignore_eos, so it should be 64 x 128).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

NUM_PROMPTS, INPUT_TOKENS, OUTPUT_TOKENS = 64, 256, 128


def write_prompts(path: Path) -> None:
    """The d prompts, from the same generator as the served scenarios (seed 0)."""
    from inferline.bench.scenarios import Scenario

    scenario = Scenario("d", INPUT_TOKENS, OUTPUT_TOKENS, NUM_PROMPTS, concurrency=NUM_PROMPTS)
    path.write_text(json.dumps(scenario.prompts(seed=0)))


def run_inferline(prompts: list[str], model: str) -> tuple[float, float, int]:
    """(load s, generate s, output tokens) with the default engine settings."""
    from inferline import LLM, SamplingParams
    from inferline.cli.main import default_cache_dir
    from inferline.engine import EngineConfig, SchedulerConfig

    start = time.perf_counter()
    llm = LLM(
        config=EngineConfig(
            model=model,
            cache_dir=default_cache_dir(),
            scheduler=SchedulerConfig(max_num_seqs=NUM_PROMPTS),
        )
    )
    loaded = time.perf_counter()
    llm.generate(prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True)
    begin = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - begin
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return loaded - start, elapsed, tokens


def run_vllm(prompts: list[str], model: str) -> tuple[float, float, int]:
    """(load s, generate s, output tokens) with vLLM's LLM class, bf16, as its server runs."""
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=model, dtype="bfloat16", max_model_len=2048)
    loaded = time.perf_counter()
    llm.generate(prompts[:1], SamplingParams(max_tokens=4))  # warm-up
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0, ignore_eos=True)
    begin = time.perf_counter()
    outputs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - begin
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return loaded - start, elapsed, tokens


def main() -> None:
    """Writes prompts, or runs scenario d on one engine and prints/writes the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("prompts")
    make.add_argument("out", type=Path)
    run = sub.add_parser("run")
    run.add_argument("--engine", choices=["inferline", "vllm"], required=True)
    run.add_argument("--prompts", type=Path, required=True)
    run.add_argument("--model", default="smollm2-135m")
    run.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "prompts":
        write_prompts(args.out)
        return
    prompts = json.loads(args.prompts.read_text())
    runner = run_inferline if args.engine == "inferline" else run_vllm
    load_s, elapsed, tokens = runner(prompts, args.model)
    result: dict[str, Any] = {
        "scenario": "d",
        "engine": args.engine,
        "machine": platform.processor() or platform.machine(),
        "num_prompts": len(prompts),
        "output_tokens": tokens,
        "expected_output_tokens": len(prompts) * OUTPUT_TOKENS,
        "load_s": load_s,
        "wall_s": elapsed,
        "output_tokens_per_s": tokens / elapsed,
        "failed": 0 if tokens == len(prompts) * OUTPUT_TOKENS else 1,
    }
    print(
        f"d ({args.engine}): {tokens} tokens in {elapsed:.1f} s = "
        f"{result['output_tokens_per_s']:.1f} tok/s (load {load_s:.1f} s)"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
