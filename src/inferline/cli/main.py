"""`inferline` entry point: `serve`, `generate`, `chat`, `models`, `logs`, `bench`, `batch`,
`config`, `keys`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from inferline.core.errors import InferlineError


def default_cache_dir() -> Path:
    """``$INFERLINE_HOME`` or ``~/.cache/inferline`` (the CLI is the only reader of env)."""
    return Path(os.environ.get("INFERLINE_HOME") or Path.home() / ".cache" / "inferline")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every command that runs the engine shares."""
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="short name (smollm2-135m, qwen2.5-coder-0.5b), a .gguf file or an HF directory",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--kv-cache-gib", type=float, default=0.5, help="KV cache budget in GiB")
    parser.add_argument("--max-model-len", type=int, default=None, help="cap the context window")
    parser.add_argument(
        "--weight-format",
        default="auto",
        choices=["auto", "fp32", "int8", "int4", "mixed"],
        help="projection weights: auto = mixed on the CPU (int4 for the smallest batches, int8 "
        "W8A8 above, crossover measured at load), fp32 on CUDA",
    )
    parser.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "int8"],
        help="KV cache precision: auto = int8 with quantized weights on the native kernels "
        "(a scale per token and kv head: half of bf16's bytes), bfloat16 with quantized "
        "weights otherwise, float32 with fp32",
    )
    parser.add_argument(
        "--kernels",
        default="auto",
        choices=["auto", "native", "torch"],
        help="the layers' row-wise work: auto = fused C kernels where a C compiler builds them",
    )
    parser.add_argument(
        "--generation-config",
        default="auto",
        choices=["auto", "none"],
        help="sampling fields a request leaves unset: auto = the model's own defaults (its "
        "generation_config.json / GGUF general.sampling.*), none = inferline's (temperature 1)",
    )
    parser.add_argument(
        "--speculative",
        default="ngram",
        choices=["ngram", "off"],
        help="speculative decoding: ngram = prompt-lookup drafts verified in one forward pass "
        "(greedy output unchanged; sampled output keeps its distribution), for requests "
        "whose drafts keep being accepted, while few requests decode at once",
    )
    parser.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=4,
        help="the most draft tokens a request verifies per step",
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of commands that run engines behind the app (``serve``, ``batch run``)."""
    parser.add_argument("--max-num-batched-tokens", type=int, default=1024)
    parser.add_argument("--max-num-seqs", type=int, default=64)
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        default=256,
        help="waiting requests beyond this get 503 + Retry-After",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="seconds a step may run before the engine counts as hung",
    )
    parser.add_argument(
        "--batch-token-share",
        type=float,
        default=0.25,
        help="in a step with live work, the share of its tokens batch lines may hold",
    )
    parser.add_argument(
        "--batch-prefill-tokens",
        type=int,
        default=128,
        help="prompt tokens batch lines may prefill per step (bounds a live arrival's wait)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file (YAML): models (local llm, remote openai, embedding and classic "
        "models) and routes over them",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow pickled scikit-learn models in --config (loading a pickle runs its code)",
    )


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Sampling options (the same names as the OpenAI API)."""
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    from inferline.cli import (
        batch,
        bench,
        chat,
        config_cmd,
        datasets,
        evals,
        generate,
        keys,
        logs,
        models,
        prompts,
        replay,
        reviews,
        rollouts,
        serve,
        traces,
    )

    parser = argparse.ArgumentParser(prog="inferline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (
        serve,
        generate,
        chat,
        models,
        logs,
        traces,
        prompts,
        reviews,
        datasets,
        evals,
        replay,
        rollouts,
        bench,
        batch,
        config_cmd,
        keys,
    )
    for module in commands:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
        return code
    except InferlineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
