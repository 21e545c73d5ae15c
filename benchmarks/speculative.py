"""N-gram speculative decoding on a realistic task set: acceptance and single-stream speed.

Usage: flock /tmp/bench.lock .venv/bin/python benchmarks/speculative.py
           [--models smollm2-135m,qwen2.5-coder-0.5b] [--num-tokens 4] [--repeats 2]

Tasks (benchmarks/data/speculative_tasks.jsonl, written for this benchmark): field
extraction from documents (JSON answer copying values), three-sentence summaries, and code
edits that return the whole file. Each task runs alone (one stream), greedy with
speculation off and on (outputs compared token for token), and sampled (temperature 0.7,
unseeded: seeded requests do not speculate) off and on. Figures per task kind: output
tokens per second (output tokens over the time from the first to the last token, median of
--repeats), drafts proposed per output token, the share of drafts accepted, and the
speed-up. Writes JSON into benchmarks/results/<date>-<cpu>/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from inferline.bench.host import cpu_description, results_dir
from inferline.cli.main import default_cache_dir
from inferline.core.sampling_params import SamplingParams
from inferline.engine import EngineConfig, LLMEngine, SpeculativeConfig

TASKS = Path(__file__).parent / "data" / "speculative_tasks.jsonl"


def run_one(engine: LLMEngine, prompt: str, params: SamplingParams) -> dict:
    """Runs one request alone; its tokens, decode rate and the drafts verified for it."""
    scheduler = engine.scheduler
    drafts0, accepted0 = scheduler.num_draft_tokens, scheduler.num_accepted_tokens
    engine.add_request(prompt, params)
    start = time.perf_counter()
    first = None
    final = None
    while engine.has_unfinished_requests():
        for output in engine.step():
            first = first or time.perf_counter()
            final = output
    end = time.perf_counter()
    assert final is not None and first is not None
    tokens = final.outputs[0].token_ids
    return {
        "tokens": list(tokens),
        "total_s": end - start,
        "decode_tok_s": (len(tokens) - 1) / (end - first) if len(tokens) > 1 else 0.0,
        "drafts": scheduler.num_draft_tokens - drafts0,
        "accepted": scheduler.num_accepted_tokens - accepted0,
    }


def measure(
    engine: LLMEngine,
    prompts: list[tuple[str, str]],
    spec: SpeculativeConfig,
    params: SamplingParams,
    repeats: int,
) -> list[dict]:
    """Each prompt ``repeats`` times with ``spec``; the median run's figures per prompt."""
    engine.scheduler.speculative = spec
    rows = []
    for kind, prompt in prompts:
        runs = [run_one(engine, prompt, params) for _ in range(repeats)]
        runs.sort(key=lambda r: r["decode_tok_s"])
        median = runs[len(runs) // 2]
        rows.append({"kind": kind, **median})
    return rows


def summarise(off: list[dict], on: list[dict], greedy: bool) -> dict:
    """Per task kind (and all): decode rates, speed-up, drafts and acceptance."""
    kinds = sorted({r["kind"] for r in off}) + ["all"]
    out = {}
    for kind in kinds:
        pairs = [(a, b) for a, b in zip(off, on, strict=True) if kind in ("all", a["kind"])]
        tokens_on = sum(len(b["tokens"]) for _, b in pairs)
        drafts = sum(b["drafts"] for _, b in pairs)
        accepted = sum(b["accepted"] for _, b in pairs)
        row = {
            "tasks": len(pairs),
            "output_tokens": tokens_on,
            "off_tok_s": statistics.median(a["decode_tok_s"] for a, _ in pairs),
            "on_tok_s": statistics.median(b["decode_tok_s"] for _, b in pairs),
            "speedup_median": statistics.median(
                b["decode_tok_s"] / a["decode_tok_s"] for a, b in pairs
            ),
            "time_ratio_total": sum(a["total_s"] for a, _ in pairs)
            / sum(b["total_s"] for _, b in pairs),
            "drafts_per_token": drafts / max(tokens_on, 1),
            "acceptance": accepted / drafts if drafts else 0.0,
        }
        if greedy:
            row["identical_outputs"] = sum(a["tokens"] == b["tokens"] for a, b in pairs)
        out[kind] = row
    return out


def main() -> None:
    """Runs the task set per model and writes the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-coder-0.5b")
    parser.add_argument("--num-tokens", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    tasks = [json.loads(line) for line in TASKS.read_text().splitlines() if line.strip()]
    results: dict = {"num_tokens": args.num_tokens, "max_tokens": args.max_tokens, "models": {}}
    for model in args.models.split(","):
        engine = LLMEngine(EngineConfig(model=model, cache_dir=default_cache_dir()))
        prompts = [
            (
                t["kind"],
                engine.tokenizer.apply_chat_template(t["messages"], add_generation_prompt=True),
            )
            for t in tasks
        ]
        run_one(engine, prompts[0][1], SamplingParams(max_tokens=8))  # warm-up
        off = SpeculativeConfig(method="off")
        on = SpeculativeConfig(num_tokens=args.num_tokens)
        per_model = {}
        for mode, params in (
            ("greedy", SamplingParams(max_tokens=args.max_tokens, temperature=0)),
            ("sampled", SamplingParams(max_tokens=args.max_tokens, temperature=0.7)),
        ):
            rows_off = measure(engine, prompts, off, params, args.repeats)
            rows_on = measure(engine, prompts, on, params, args.repeats)
            per_model[mode] = summarise(rows_off, rows_on, mode == "greedy")
            for kind, row in per_model[mode].items():
                print(
                    f"{model:20s} {mode:8s} {kind:11s} off {row['off_tok_s']:6.1f} on "
                    f"{row['on_tok_s']:6.1f} tok/s  x{row['speedup_median']:.2f}  drafts/tok "
                    f"{row['drafts_per_token']:.2f} accepted {row['acceptance']:.2f}"
                    + (
                        f" identical {row['identical_outputs']}/{row['tasks']}"
                        if "identical_outputs" in row
                        else ""
                    ),
                    flush=True,
                )
        results["models"][model] = per_model
    results["cpu"] = cpu_description()
    out = args.out or results_dir(Path(__file__).parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speculative.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'speculative.json'}")


if __name__ == "__main__":
    main()
