"""How closely the quantized engine follows fp32, position by position, and whether the
prefill levers change that.

    .venv/bin/python benchmarks/accuracy_agreement.py [--model smollm2-135m]
        [--kv-cache-dtype auto|bfloat16|int8] [--json F]

Loads the model in fp32 and in the default format, runs windows of 512 tokens of three
texts (tests/models/data/perplexity_text.md, README.md, ARCHITECTURE.md; up to 4 windows
each) through both, and compares each position's next-token distribution with fp32's:
mean and p99 KL, the share of positions with the same most likely token, mean / p99 / max
|d logprob| of the actual next token, and the perplexity ratio. The default format runs
with each prefill attention kernel this host has (float32; AMX bf16 tiles,
`NativeKernels.amx_attention_on`, on an AMX host; VNNI int16 products over an int8 cache,
`i16_attention_on`) times the gate/up product as int32 sums / bf16
(`fused_forward.COMPACT`, and the layer stack's own flag).
Then each window's last 128 positions again as one-token decode steps (the given token in
place of a sampled one) with each decode attention kernel (float32; AMX int8; VNNI bytes,
`i16_decode_on`): `decode_*` figures over those positions only, to compare with each
other (at one row the head's candidate pass and, in `mixed`, the projections run int4:
their KL is not the one-pass figures').
A greedy answer to one prompt is a poor accuracy check for a quantized model: single
logprobs move by their noise (this script's p99), and any change re-draws it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
TEXTS = ("tests/models/data/perplexity_text.md", "README.md", "ARCHITECTURE.md")
WINDOW = 512
WINDOWS_PER_TEXT = 4
DECODED = 128  # each window's last positions, run again one decode step at a time


def _windows(tokenizer: Any) -> list[list[int]]:
    windows: list[list[int]] = []
    for name in TEXTS:
        ids = tokenizer.encode((REPO / name).read_text())
        starts = range(0, len(ids) - WINDOW + 1, WINDOW)
        windows += [ids[start : start + WINDOW] for start in starts][:WINDOWS_PER_TEXT]
    return windows


def _compare(reference: list[torch.Tensor], got: list[torch.Tensor],
             windows: list[list[int]], start: int = 0) -> dict[str, float]:  # fmt: skip
    """The figures over each window's positions from ``start`` on."""
    from inferline.engine.evaluate import agreement

    reference, got = [r[start:] for r in reference], [g[start:] for g in got]
    figures = agreement(torch.cat(reference), torch.cat(got))
    targets = [torch.tensor(w[1 + start :]) for w in windows]
    picked = [
        (lp[torch.arange(len(t)), t], ref[torch.arange(len(t)), t])
        for lp, ref, t in zip(got, reference, targets, strict=True)
    ]
    ours = torch.cat([p[0] for p in picked])
    theirs = torch.cat([p[1] for p in picked])
    moved = (ours - theirs).abs()
    figures.update(
        logprob_moved_mean=float(moved.mean()),
        logprob_moved_p99=float(moved.quantile(0.99)),
        logprob_moved_max=float(moved.max()),
        perplexity_ratio=float((theirs.mean() - ours.mean()).exp()),
    )
    return figures


def _attention_kernel(kernels: Any, wanted: str, kv_cache_dtype: str) -> str:
    """Switches prefill attention to ``wanted`` (float32, amx or i16); returns the kernel
    that runs now (i16 only over an int8 cache)."""
    if kernels is None:
        return "float32"
    amx = kernels.amx_attention_on(wanted == "amx")
    i16 = kernels.i16_attention_on(wanted == "i16") and kv_cache_dtype != "bfloat16"
    return "amx" if amx else ("i16" if i16 else "float32")


def _decode_kernel(kernels: Any, wanted: str, kv_cache_dtype: str) -> str:
    """Switches decode attention to ``wanted`` (float32, amx or i16); returns the kernel
    that runs now (amx and i16 only over an int8 cache)."""
    if kernels is None:
        return "float32"
    amx = kernels.amx_decode_on(wanted == "amx") and kv_cache_dtype != "bfloat16"
    i16 = kernels.i16_decode_on(wanted == "i16") and kv_cache_dtype != "bfloat16"
    return "amx" if amx else ("i16" if i16 else "float32")


def _decode_figures(quantized: Any, kernels: Any, kv_cache_dtype: str,
                    reference: list[torch.Tensor], windows: list[list[int]]) -> dict[str, Any]:  # fmt: skip
    """The figures of each window's last DECODED positions run as decode steps, by decode
    attention kernel (the default prefill kernels for the positions before)."""
    from inferline.engine.evaluate import next_token_logprobs

    first = WINDOW - DECODED
    defaults = (kernels.amx_decode, kernels.i16_decode) if kernels else (False, False)
    out: dict[str, Any] = {}
    try:
        for attention in ("float32", "amx", "i16"):
            if _decode_kernel(kernels, attention, kv_cache_dtype) != attention:
                continue
            got = [next_token_logprobs(quantized, w, decode_from=first) for w in windows]
            name = f"decode_{attention}"
            out[name] = _compare(reference, got, windows, start=first)
            print(name, json.dumps({k: round(v, 4) for k, v in out[name].items()}), flush=True)
    finally:
        if kernels:
            kernels.amx_decode_on(defaults[0])
            kernels.i16_decode_on(defaults[1])
    return out


def measure(model: str, kv_cache_dtype: str = "auto") -> dict[str, Any]:
    """The figures for ``model`` (one process: fp32 first, then the default format with
    ``kv_cache_dtype``; fp32 runs its default cache)."""
    from inferline.cli.main import default_cache_dir
    from inferline.engine import CacheConfig, EngineConfig, LLMEngine
    from inferline.engine.evaluate import next_token_logprobs
    from inferline.models import fused_forward, load_model
    from inferline.models.native import load_kernels

    cache_dir = default_cache_dir()

    def engine(weight_format: str) -> LLMEngine:
        loaded = load_model(model, cache_dir=cache_dir, weight_format=weight_format)
        cache = CacheConfig(kv_cache_dtype="auto" if weight_format == "fp32" else kv_cache_dtype)
        config = EngineConfig(cache_dir=cache_dir, weight_format=weight_format, cache=cache)
        return LLMEngine(config, loaded=loaded)

    fp32 = engine("fp32")
    windows = _windows(fp32.tokenizer)
    reference = [next_token_logprobs(fp32, w) for w in windows]
    del fp32
    quantized = engine("auto")
    kernels = load_kernels(cache_dir)
    defaults = (
        fused_forward.COMPACT,
        kernels.amx_attention if kernels else False,
        kernels.i16_attention if kernels else False,
    )
    out: dict[str, Any] = {"model": model, "kv_cache_dtype": kv_cache_dtype,
                           "windows": len(windows), "window_tokens": WINDOW}  # fmt: skip
    out.update(_decode_figures(quantized, kernels, kv_cache_dtype, reference, windows))
    try:
        for attention in ("float32", "amx", "i16"):
            for compact in (None, torch.bfloat16):
                fused_forward.COMPACT = compact
                stack = getattr(quantized.loaded.model, "layer_stack", None)
                if stack is not None:  # built at load with the default
                    stack.use_products(compact)
                if _attention_kernel(kernels, attention, kv_cache_dtype) != attention:
                    continue  # not on this host, or not over this cache
                products = "bf16" if compact else "int32"
                name = f"attention_{attention}-gate_up_{products}"
                got = [next_token_logprobs(quantized, w) for w in windows]
                out[name] = _compare(reference, got, windows)
                print(name, json.dumps({k: round(v, 4) for k, v in out[name].items()}), flush=True)
    finally:
        fused_forward.COMPACT = defaults[0]
        stack = getattr(quantized.loaded.model, "layer_stack", None)
        if stack is not None and kernels is not None:
            stack.use_products(fused_forward.products_dtype(kernels))
        if kernels:
            kernels.amx_attention_on(defaults[1])
            kernels.i16_attention_on(defaults[2])
    return out


def main() -> None:
    """Prints the figures and writes them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "bfloat16", "int8"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = measure(args.model, args.kv_cache_dtype)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
