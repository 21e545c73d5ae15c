"""The native kernels against what they replaced, on SmolLM2-135M's shapes, weights cold.

- 4-bit matmul: our `Q4Weight` (``q4_gemm.c``) vs torch's int4 and W8A8 (``torch._int_mm``)
  and our packed W8A8 (``i8_gemm.c``, VNNI alone and with AMX where the CPU has it) over
  30 layers' projections (q/k/v, o, gate/up, down), at 1..64 rows;
- decode attention (``attention.c``) over a bf16 and an int8 paged cache with scattered
  blocks;
- prefill attention (``prefill_attention.c``) vs SDPA over a gathered, masked tile, one
  512-token chunk, bf16 and int8 caches;
- prefill matmuls: W8A8 (torch's and our packed one, VNNI and AMX) vs torch's bf16 and fp32 matmuls
  (oneDNN; AMX where the CPU has it) at 128 and 512 rows.

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/native_kernels.py [--json OUT]
Prints a table and writes JSON (median of --repeats timed runs after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from inferline.cli.main import default_cache_dir
from inferline.models.kv_layout import cache_of
from inferline.models.native import NativeKernels, load_kernels
from inferline.models.quant import int4_matmul, int8_linear, quantize_int4, quantize_int8

LAYERS = 30
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # (out, in) per layer
HEADS, KV_HEADS, HEAD_DIM, BLOCK = 9, 3, 64, 16


def timed(run: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` runs after one warm-up."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def packed_vnni_and_amx(
    kernels: NativeKernels, run: Callable[[], object], repeats: int
) -> dict[str, float]:
    """``run`` timed with the packed kernel on VNNI alone ("w8a8_packed") and, where the
    CPU has AMX int8, on AMX from 1 row ("w8a8_amx")."""
    default = kernels.amx_rows
    try:
        kernels.amx_from(0)
        times = {"w8a8_packed": timed(run, repeats)}
        if kernels.amx_from(1):
            times["w8a8_amx"] = timed(run, repeats)
        return times
    finally:
        kernels.amx_from(default)


def matmuls(kernels: NativeKernels, rows_list: list[int], repeats: int) -> dict[str, dict]:
    """30 layers' projections at each row count, in each kernel (distinct weights per layer:
    ~66 MB in 4 bits, so each step reads them from memory as a decode step does)."""
    torch.manual_seed(0)
    layers = []
    for _ in range(LAYERS):
        for out_features, in_features in SHAPES:
            weight = torch.randn(out_features, in_features) * 0.02
            int8 = quantize_int8(weight)
            packed = kernels.pack_int8(int8)
            layers.append((kernels.pack_q4(weight), quantize_int4(weight), int8, packed))
    return {str(rows): _time_layers(kernels, layers, rows, repeats) for rows in rows_list}


def _time_layers(
    kernels: NativeKernels, layers: list[tuple], rows: int, repeats: int
) -> dict[str, float]:
    xs = {k: torch.randn(rows, k) for _, k in SHAPES}
    xb = {k: x.bfloat16() for k, x in xs.items()}
    runs = {
        "q4": lambda: [q4.matmul(xs[q4.in_features]) for q4, *_ in layers],
        "torch_int4": lambda: [int4_matmul(xb[q4.in_features], i4) for q4, i4, *_ in layers],
        "w8a8": lambda: [int8_linear(xs[q4.in_features], i8) for q4, _, i8, _ in layers],
    }
    packed = packed_vnni_and_amx(
        kernels, lambda: [int8_linear(xs[q4.in_features], p) for q4, *_, p in layers], repeats
    )
    return {name: timed(run, repeats) for name, run in runs.items()} | packed


def prefill_matmuls(kernels: NativeKernels, rows_list: list[int], repeats: int) -> dict[str, dict]:
    """30 layers' projections at prefill-sized row counts: W8A8 (activations quantized in
    the timing) against torch's bf16 and fp32 matmuls."""
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * 0.02 for o, i in SHAPES]
    int8 = [quantize_int8(w) for w in weights]
    packed = [kernels.pack_int8(w) for w in int8]
    bf16 = [w.bfloat16() for w in weights]
    report = {}
    for rows in rows_list:
        xs = [torch.randn(rows, i) for _, i in SHAPES]
        xb = [x.bfloat16() for x in xs]
        products: dict[str, Callable[[int], object]] = {
            "w8a8": lambda k, xs=xs: int8_linear(xs[k], int8[k]),
            "bf16": lambda k, xb=xb: xb[k] @ bf16[k].T,
            "fp32": lambda k, xs=xs: xs[k] @ weights[k].T,
        }

        def all_layers(matmul: Callable[[int], object]) -> Callable[[], object]:
            return lambda: [matmul(k) for _ in range(LAYERS) for k in range(len(SHAPES))]

        report[str(rows)] = {
            name: timed(all_layers(matmul), repeats) for name, matmul in products.items()
        } | packed_vnni_and_amx(
            kernels, all_layers(lambda k, xs=xs: int8_linear(xs[k], packed[k])), repeats
        )
    return report


def _cache(slots: int, dtype: torch.dtype) -> torch.Tensor:
    return cache_of(torch.randn(2, slots, KV_HEADS, HEAD_DIM), dtype)


def decode_attention(
    kernels: NativeKernels, seqs: int, context: int, repeats: int, dtype: torch.dtype
) -> float:
    """ms for 30 layers of one decode step: ``seqs`` sequences of ``context`` positions."""
    blocks = -(-context // BLOCK)
    caches = [_cache(seqs * blocks * BLOCK, dtype) for _ in range(LAYERS)]
    tables = torch.randperm(seqs * blocks).int().view(seqs, blocks).contiguous()
    lens = torch.full((seqs,), context, dtype=torch.int32)
    q = torch.randn(seqs, HEADS, HEAD_DIM)
    out = torch.empty(seqs, HEADS * HEAD_DIM)
    rows = torch.arange(seqs)

    def run() -> None:
        for cache in caches:
            kernels.decode_attention(q, cache, tables, lens, rows, BLOCK, out)

    return timed(run, repeats)


def prefill_attention(kernels: NativeKernels, tokens: int, repeats: int) -> dict[str, float]:
    """ms for 30 layers of one ``tokens``-token chunk from position 0: ours (bf16 and int8
    caches) vs SDPA over the gathered keys with a boolean causal mask (what the engine ran
    before)."""
    blocks = -(-tokens // BLOCK)
    cache = _cache(blocks * BLOCK, torch.bfloat16)
    int8_cache = _cache(blocks * BLOCK, torch.int8)
    table = torch.arange(blocks, dtype=torch.int32)[None]
    chunks = torch.tensor([[0, 0, tokens]])
    q = torch.randn(tokens, HEADS, HEAD_DIM)
    out = torch.empty(tokens, HEADS * HEAD_DIM)
    positions = torch.arange(tokens)
    mask = (positions[None, :] <= positions[:, None])[None, None]

    def ours(cache: torch.Tensor) -> Callable[[], None]:
        return lambda: [
            kernels.prefill_attention(q, cache, chunks, table, BLOCK, out) for _ in range(LAYERS)
        ]  # type: ignore[func-returns-value]

    def sdpa() -> None:
        for _ in range(LAYERS):
            k = cache[0][positions].float().transpose(0, 1)[None]
            v = cache[1][positions].float().transpose(0, 1)[None]
            F.scaled_dot_product_attention(
                q.transpose(0, 1)[None], k, v, attn_mask=mask, enable_gqa=True
            )

    return {
        "native": timed(ours(cache), repeats),
        "native_int8": timed(ours(int8_cache), repeats),
        "sdpa": timed(sdpa, repeats),
    }


def main() -> None:
    """Runs the three measurements; prints them and writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    kernels = load_kernels(default_cache_dir())
    if kernels is None:
        raise SystemExit("the native kernels did not build")
    report = {
        "cpu": platform.processor() or platform.machine(),
        "q4_path": kernels.q4_path,
        "i8_path": kernels.i8_path,
        "amx_from_rows": kernels.amx_rows,
        "torch_threads": torch.get_num_threads(),
        "matmul_ms": matmuls(kernels, [1, 5, 8, 16, 32, 64], args.repeats),
        "decode_attention_ms": {
            f"{s}x{c}": {
                name: decode_attention(kernels, s, c, args.repeats, dtype)
                for name, dtype in (("bf16", torch.bfloat16), ("int8", torch.int8))
            }
            for s, c in ((1, 640), (16, 320), (32, 320))
        },
        "prefill_attention_ms": {"512": prefill_attention(kernels, 512, args.repeats)},
        "prefill_matmul_ms": prefill_matmuls(kernels, [128, 512], args.repeats),
    }
    print(f"30 layers of SmolLM2-135M, q4 path {kernels.q4_path}, ms (median)")
    print(f"{'rows':>5} {'q4':>8} {'int4':>8} {'w8a8':>8} {'packed':>8} {'amx':>8}")
    for rows, t in report["matmul_ms"].items():
        print(f"{rows:>5} {t['q4']:>8.2f} {t['torch_int4']:>8.2f} {t['w8a8']:>8.2f} "
              f"{t['w8a8_packed']:>8.2f} {t.get('w8a8_amx', float('nan')):>8.2f}")  # fmt: skip
    for shape, ms in report["decode_attention_ms"].items():
        print(f"decode attention {shape} positions: bf16 cache {ms['bf16']:.2f} ms, "
              f"int8 cache {ms['int8']:.2f} ms")  # fmt: skip
    prefill = report["prefill_attention_ms"]["512"]
    print(f"prefill attention 512 tokens: native {prefill['native']:.1f} ms (int8 cache "
          f"{prefill['native_int8']:.1f}), SDPA {prefill['sdpa']:.1f} ms")  # fmt: skip
    for rows, t in report["prefill_matmul_ms"].items():
        packed, amx = t["w8a8_packed"], t.get("w8a8_amx", float("nan"))
        print(f"prefill matmuls {rows} rows: w8a8 {t['w8a8']:.1f} ms (packed {packed:.1f}, "
              f"AMX {amx:.1f}), "
              f"bf16 {t['bf16']:.1f} ms, fp32 {t['fp32']:.1f} ms")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
