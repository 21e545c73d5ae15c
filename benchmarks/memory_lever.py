"""Server RSS at 32 streams and decode speed, for source trees side by side in one run.

Each (variant, scenario) pair gets a fresh ``inferline serve`` (default settings, as
`benchmarks/compare` starts it) whose ``inferline`` package comes from the variant's source
directory (``PYTHONPATH``), then one ``inferline bench --scenario S`` wrapped by
`peers/cpu_account.py` (the server's highest sampled RSS and the foreign CPU load). Pairs
run interleaved (before, after, before, after, ...) so drift hits both alike.

usage (one variant per source tree, e.g. a copy of ``src`` taken before a change):
    flock /tmp/bench.lock .venv/bin/python benchmarks/memory_lever.py \\
        --variant before=/tmp/before/src --variant after=src \\
        --scenarios a,b32 --repeats 2 --json OUT.json --md OUT.md
Two settings of one tree: ``--variant bf16=src --variant int8=src --args
int8="--kv-cache-dtype int8"`` (extra ``inferline serve`` flags per variant; the accuracy
check follows ``--kv-cache-dtype``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
PORT = 8097


def _wait_ready(proc: subprocess.Popen[bytes], timeout_s: float = 300) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/v1/models", timeout=2):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("server did not start")


def run_one(
    src: Path, scenario: str, model: str, out_dir: Path, tag: str, extra: list[str]
) -> dict[str, Any]:
    """One fresh server from ``src`` (``extra`` serve flags), one bench run of
    ``scenario``; the merged figures."""
    env = dict(os.environ, PYTHONPATH=str(src.resolve()), OMP_NUM_THREADS="2")
    log = (out_dir / f"{tag}.server.log").open("wb")
    server = subprocess.Popen(
        [str(BIN / "inferline"), "serve", "--port", str(PORT), "--model", model, *extra],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ready_s = _wait_ready(server)
        bench_json, cpu_json = out_dir / f"{tag}.json", out_dir / f"{tag}.cpu.json"
        command = [
            str(BIN / "python"), str(REPO / "benchmarks" / "peers" / "cpu_account.py"),
            "--pgid", str(server.pid), "--json", str(cpu_json), "--wait-idle", "90", "--",
            str(BIN / "inferline"), "bench", "--base-url", f"http://127.0.0.1:{PORT}",
            "--model", model, "--scenario", scenario, "--json", str(bench_json), "--no-progress",
        ]  # fmt: skip
        subprocess.run(command, check=False, stdout=subprocess.DEVNULL)
        bench = json.loads(bench_json.read_text())
        cpu = json.loads(cpu_json.read_text())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()
    summary = bench["runs"][0]["summary"] if "runs" in bench else bench["summary"]
    tpot = summary["tpot_s"]["p50"]
    return {
        "ready_s": ready_s,
        "completed": summary["completed"],
        "failed": summary["failed"],
        "ttft_p50_ms": summary["ttft_s"]["p50"] * 1000,
        "decode_tok_s": 1 / tpot,  # 1 / TPOT p50, as compare reports scenario a
        "output_tok_s": summary["output_tokens_per_s"],
        "server_rss_mib": cpu["server_rss_mib"],
        "server_peak_rss_mib": cpu["server_peak_rss_mib"],
        "other_cpu_cores": cpu["other_cpu_cores"],
    }


PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "Write a haiku about the sea.",
    "List three uses of copper:",
    "The lighthouse keeper counted ships and",
    "Explain why the sky is blue in one sentence.",
    "import numpy as np\n",
)


def accuracy(model: str, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    """Perplexity (fp32 and the default format, its KV cache ``kv_cache_dtype``) and greedy
    agreement with fp32, for the ``inferline`` on ``sys.path`` (run once per variant, in
    its own process)."""
    from inferline import SamplingParams
    from inferline.cli.main import default_cache_dir
    from inferline.engine import CacheConfig, EngineConfig, LLMEngine
    from inferline.engine.evaluate import perplexity

    text = (REPO / "tests" / "models" / "data" / "perplexity_text.md").read_text()
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    out: dict[str, Any] = {}
    for weight_format in ("fp32", "auto"):
        cache = CacheConfig(kv_cache_dtype="auto" if weight_format == "fp32" else kv_cache_dtype)
        config = EngineConfig(
            model=model, cache_dir=default_cache_dir(), weight_format=weight_format, cache=cache
        )
        engine = LLMEngine(config)
        ids = engine.tokenizer.encode(text)[:1024]
        tokens = []
        for i, prompt in enumerate(PROMPTS):
            engine.add_request(prompt, params, request_id=f"p{i}")
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished:
                        tokens.append(list(output.outputs[0].token_ids))
        out[weight_format] = {"perplexity": perplexity(engine, ids), "greedy_tokens": tokens}
    fp32_tokens, auto_tokens = out["fp32"]["greedy_tokens"], out["auto"]["greedy_tokens"]
    pairs = [
        (a, b)
        for ta, tb in zip(fp32_tokens, auto_tokens, strict=True)
        for a, b in zip(ta, tb, strict=True)
    ]
    out["greedy_agreement_with_fp32"] = sum(a == b for a, b in pairs) / len(pairs)
    out["perplexity_ratio"] = out["auto"]["perplexity"] / out["fp32"]["perplexity"]
    return out


def _table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    keys = ("decode_tok_s", "output_tok_s", "ttft_p50_ms", "server_rss_mib")
    lines = [
        "| variant | scenario | runs | " + " | ".join(f"{k} (median; all)" for k in keys) + " |",
        "|---" * (3 + len(keys)) + "|",
    ]
    for variant, scenarios in results.items():
        for scenario, runs in scenarios.items():
            cells = []
            for key in keys:
                values = [r[key] for r in runs]
                cells.append(
                    f"{statistics.median(values):.1f}; " + ", ".join(f"{v:.1f}" for v in values)
                )
            lines.append(f"| {variant} | {scenario} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Runs every (variant, scenario) ``--repeats`` times, interleaved; writes JSON and md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=SRC_DIR")
    parser.add_argument("--scenarios", default="a,b32")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--accuracy", action="store_true", help="also the accuracy check")
    parser.add_argument("--args", action="append", default=[], help='NAME="SERVE FLAGS"')
    parser.add_argument("--accuracy-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kv-cache-dtype", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.accuracy_only:  # the child process of one variant
        print(json.dumps(accuracy(args.model, args.kv_cache_dtype)))
        return
    variants = dict(v.split("=", 1) for v in args.variant)
    extra = {name: shlex.split(flags) for name, flags in (a.split("=", 1) for a in args.args)}
    raw_dir = args.json.with_suffix(".raw")
    raw_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {v: {} for v in variants}
    for repeat in range(args.repeats):
        for scenario in args.scenarios.split(","):
            for variant, src in variants.items():
                tag = f"{variant}-{scenario}-{repeat}"
                row = run_one(Path(src), scenario, args.model, raw_dir, tag, extra.get(variant, []))
                results[variant].setdefault(scenario, []).append(row)
                print(tag, json.dumps(row), file=sys.stderr, flush=True)
    checks = {}
    for variant, src in variants.items() if args.accuracy else ():
        env = dict(os.environ, PYTHONPATH=str(Path(src).resolve()), OMP_NUM_THREADS="2")
        flags = extra.get(variant, [])
        kv_dtype = (
            flags[flags.index("--kv-cache-dtype") + 1] if "--kv-cache-dtype" in flags else "auto"
        )
        command = [str(BIN / "python"), __file__, "--accuracy-only", "--variant", "x=x",
                   "--json", "-", "--model", args.model, "--kv-cache-dtype", kv_dtype]  # fmt: skip
        result = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        checks[variant] = json.loads(result.stdout.strip().splitlines()[-1])
        keys = ("perplexity_ratio", "greedy_agreement_with_fp32")
        print(variant, {k: checks[variant][k] for k in keys}, file=sys.stderr, flush=True)
    report = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "model": args.model,
        "variants": variants,
        "serve_args": extra,
        "results": results,
        "accuracy": checks,
    }
    args.json.write_text(json.dumps(report, indent=2))
    if args.md:
        args.md.write_text(_table(results) + "\n")
    print(_table(results))


if __name__ == "__main__":
    main()
