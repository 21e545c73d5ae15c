"""`inferline generate PROMPT`: one answer, streamed to stdout."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from inferline.cli.engine_factory import build_llm, sampling_params
from inferline.cli.main import add_engine_arguments, add_sampling_arguments


def register(sub: Any) -> None:
    """Adds the ``generate`` subcommand."""
    parser = sub.add_parser("generate", help="generate a completion for one prompt")
    parser.add_argument("prompt", help="the user message (or raw text with --raw)")
    parser.add_argument("--raw", action="store_true", help="no chat template: plain completion")
    parser.add_argument("--system", default=None, help="system message for the chat template")
    parser.add_argument("--stats", action="store_true", help="print timings to stderr")
    add_engine_arguments(parser)
    add_sampling_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Streams the completion to stdout; returns 0."""
    params = sampling_params(args)  # validate before the (slow) model load
    llm = build_llm(args)
    if args.raw:
        prompt = args.prompt
    else:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        prompt = llm.render_chat([*messages, {"role": "user", "content": args.prompt}])
    start = time.perf_counter()
    output = None
    for output in llm.stream(prompt, params):
        sys.stdout.write(output.outputs[0].text_delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats and output is not None:
        elapsed = time.perf_counter() - start
        ttft = output.metrics.time_to_first_token_s or 0.0
        num_tokens = output.num_generated_tokens
        print(
            f"[load {llm.engine.loaded.load_time_s:.2f}s | prompt {len(output.prompt_token_ids)} "
            f"tokens | ttft {ttft:.3f}s | {num_tokens} tokens in {elapsed:.2f}s = "
            f"{num_tokens / elapsed:.1f} tok/s | finish {output.outputs[0].finish_reason}]",
            file=sys.stderr,
        )
    return 0
