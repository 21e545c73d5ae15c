"""Quantized linear kernels for the CPU, chosen per layer at load and per batch size at run.

Two formats, both from torch's own CPU kernels (signatures in ``shared/bench/limits.md``):

- ``int8``: W8A8. Weights int8 per output channel; activations quantized per row on the fly;
  ``torch._int_mm`` multiplies in int32 (with the native kernels, `PackedInt8Weight`
  computes the same sums faster). Integer accumulation is exact, and the scales are per
  row, so a row's result does not depend on the other rows: batching stays invariant.
- ``int4``: weight-only, groups of 32, asymmetric (``w = (q - 8) * scale + zero``), with bf16
  activations (``_weight_int4pack_mm_for_cpu``). Fastest for a handful of rows (decode); a
  Q4_1 GGUF tensor maps onto it with only the scales rounded to bf16.

``mixed`` keeps both copies: 4-bit for the smallest batches, W8A8 above a row count that
`probe_int4_max_rows` measures on this CPU at load, with cold caches as in a decode step.
With the native kernels the 4-bit copy is our own `native.Q4Weight` (``q4_gemm.c``: one
pass over the weights for all rows, won at every probed count, up to 64 rows, on the
2026-12-03 AMX Xeon); without them torch's int4 (on the AVX512-VNNI EPYC it won at 1-2
rows; W8A8 3x faster at 32).

W8A8 weights and their input rows are rotated first (``rotated``: a Walsh-Hadamard
transform of each block of 64 inputs, the same on both sides, so the product is unchanged):
one outlier channel no longer sets a whole row's int8 step. Measured on SmolLM2-135M (9
windows of 512 tokens, fake-quantized on the fp32 model): mean KL to fp32 0.032 -> 0.0043,
top-1 agreement 0.878 -> 0.953 (per-group scales of 64 read 0.0078; weights alone 0.0036).

Both kernels compute each output row from its input row alone (checked bit for bit in the
tests), so a request's tokens do not depend on what else is in the batch; fp32 MKL GEMMs do
not have that property.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from inferline.models import quant_native
from inferline.models.rotation import rotated

if TYPE_CHECKING:
    from inferline.models.native import NativeKernels, Q4Weight

WeightFormat = Literal["fp32", "int8", "int4", "mixed"]
WEIGHT_FORMATS: tuple[WeightFormat, ...] = ("fp32", "int8", "int4", "mixed")
INT4_GROUP = 32


@dataclass
class Int8Weight:
    """``weight ~= w8.T * scale[:, None]``; ``w8_t`` is ``[in, out]`` int8, ``scale`` ``[out]``.

    Multiplied by ``torch._int_mm``; the native kernels' `PackedInt8Weight` (the same integers
    in a VNNI layout, `NativeKernels.pack_int8`) stands in for it where they run."""

    w8_t: torch.Tensor
    scale: torch.Tensor

    @property
    def in_features(self) -> int:
        """Inputs of the weight."""
        return self.w8_t.shape[0]

    def matmul(self, x: Int8Rows) -> Int32Product:
        """The exact int32 products of int8 rows ``[M, in]`` with the weight."""
        return Int32Product(torch._int_mm(x.values, self.w8_t), x.scales, self.scale)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Float rows ``[M, in]`` -> ``x W^T`` float32 (rows rotated and quantized per row)."""
        x = rotated(x)
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0  # [M, 1]
        # times 1 / scale, as the C kernels do (no division a value)
        x8 = torch.round(x * (1.0 / x_scale)).to(torch.int8)
        return torch._int_mm(x8, self.w8_t).float() * (x_scale * self.scale)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors a product reads (for dropping them from the caches)."""
        return (self.w8_t,)


class W8A8Weight(Protocol):
    """An int8 weight with per-output-channel ``scale``: `Int8Weight` or the native
    `PackedInt8Weight` (same products, bit for bit)."""

    scale: torch.Tensor

    @property
    def in_features(self) -> int:
        """Inputs of the weight."""

    def matmul(self, x: Int8Rows) -> Int32Product:
        """The exact int32 products of int8 rows ``[M, in]`` with the weight."""

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Float rows ``[M, in]`` -> ``x W^T`` float32 (rows quantized per row)."""

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors a product reads."""


@dataclass
class Int4Weight:
    """Packed 4-bit weights and bf16 ``[in / 32, out, 2]`` (scale, zero) pairs."""

    packed: torch.Tensor
    scales_zeros: torch.Tensor


@dataclass
class Int8Rows:
    """W8A8 input: ``values`` ``[M, K]`` int8 with per-row ``scales`` ``[M, 1]`` float32."""

    values: torch.Tensor
    scales: torch.Tensor


@dataclass
class Int32Product:
    """W8A8 output before dequantization: ``values * (row_scales * col_scales)`` is the result.

    ``values`` ``[M, N]`` int32, ``row_scales`` ``[M, 1]``, ``col_scales`` ``[N]`` float32.
    """

    values: torch.Tensor
    row_scales: torch.Tensor
    col_scales: torch.Tensor


# Rows quantized per torch step when the C kernels are off: the temporaries stay in cache
# (2.5x faster than whole-tensor ops) and every row's values are the same either way.
_TORCH_CHUNK_ROWS = 256


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel int8 of a float ``[out, in]`` weight (for W8A8), its
    rows `rotated` first (as its inputs will be)."""
    weight = weight.float().contiguous()
    kernels = quant_native.active()
    if kernels is not None:
        w8_t, scale = kernels.quantize_int8(weight)
        return Int8Weight(w8_t, scale)
    out_features, in_features = weight.shape
    w8_t = torch.empty(in_features, out_features, dtype=torch.int8)
    scale = torch.empty(out_features)
    for start in range(0, out_features, _TORCH_CHUNK_ROWS):
        rows = rotated(weight[start : start + _TORCH_CHUNK_ROWS])
        chunk_scale = rows.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        w8 = torch.round(rows / chunk_scale[:, None]).clamp(-127, 127).to(torch.int8)
        w8_t[:, start : start + rows.shape[0]] = w8.t()
        scale[start : start + rows.shape[0]] = chunk_scale
    return Int8Weight(w8_t, scale)


# Rows quantized and packed per step: the int32 codes the packer takes (4 bytes a value) then
# never exist for a whole weight (SmolLM2's head: 113 MB). A multiple of 64 so the packed
# chunks concatenate to the whole weight's packing (checked in the tests).
_INT4_CHUNK_ROWS = 1024


def quantize_int4(weight: torch.Tensor) -> Int4Weight:
    """Asymmetric group-32 int4 of a float ``[out, in]`` weight (min/max per group)."""
    weight = weight.float().contiguous()
    out_features = weight.shape[0]
    packed_parts, scales, zeros = [], [], []
    kernels = quant_native.active()
    for start in range(0, out_features, _INT4_CHUNK_ROWS):
        rows = weight[start : start + _INT4_CHUNK_ROWS]
        if kernels is not None:
            q, scale, zero = kernels.quantize_int4(rows)
        else:
            q, scale, zero = _int4_codes_torch(rows)
        packed_parts.append(torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1))
        scales.append(scale)
        zeros.append(zero)
    packed = packed_parts[0] if len(packed_parts) == 1 else torch.cat(packed_parts)
    scale, zero = torch.cat(scales), torch.cat(zeros)  # [out, in / 32]
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return Int4Weight(packed, scales_zeros.to(torch.bfloat16))


def quantize_in_chunks(
    rows: Callable[[torch.Tensor], torch.Tensor],
    num_rows: int,
    chunk_rows: int = 8192,
    q4: NativeKernels | None = None,
) -> tuple[Int4Weight | Q4Weight, W8A8Weight]:
    """4-bit and int8 copies of a ``[num_rows, in]`` weight read ``chunk_rows`` rows at a
    time (``rows(ids)`` gives float32 rows, e.g. `BlockRows.rows`): the same values as
    quantizing the whole weight (each row is quantized alone, and the 4-bit and packed
    int8 layouts are per 64 or 16 rows), without the whole float weight in memory. With
    ``q4`` (the native kernels) both copies are theirs (`pack_q4`, `pack_int8`), else
    torch's int4 (`quantize_int4`) and `Int8Weight`."""
    if chunk_rows % 64:
        raise ValueError(f"chunk_rows must be a multiple of 64, got {chunk_rows}")
    int4_parts: list[Int4Weight | Q4Weight] = []
    int8_parts: list[W8A8Weight] = []
    for ids in torch.arange(num_rows).split(chunk_rows):
        chunk = rows(ids)
        int4_parts.append(q4.pack_q4(chunk) if q4 is not None else quantize_int4(chunk))
        int8_chunk = quantize_int8(chunk)
        int8_parts.append(q4.pack_int8(int8_chunk) if q4 is not None else int8_chunk)
    int8 = _int8_concatenated(int8_parts)
    if q4 is not None:
        from inferline.models.native import Q4Weight  # native imports this module

        packed = torch.cat([p.packed for p in int4_parts])
        return Q4Weight(packed, num_rows, int8.in_features, q4), int8
    torch_parts = [p for p in int4_parts if isinstance(p, Int4Weight)]
    int4 = Int4Weight(
        torch.cat([p.packed for p in torch_parts]),
        torch.cat([p.scales_zeros for p in torch_parts], dim=1),  # [in / 32, out, 2]
    )
    return int4, int8


def _int8_concatenated(parts: list[W8A8Weight]) -> W8A8Weight:
    """One int8 weight of parts along the outputs (all packed, or all `Int8Weight`)."""
    if all(isinstance(p, Int8Weight) for p in parts):
        torch_parts = [p for p in parts if isinstance(p, Int8Weight)]
        w8_t = torch.cat([p.w8_t for p in torch_parts], dim=1)
        return Int8Weight(w8_t, torch.cat([p.scale for p in torch_parts]))
    from inferline.models.native import PackedInt8Weight  # native imports this module

    packed_parts = [p for p in parts if isinstance(p, PackedInt8Weight)]
    if len(packed_parts) != len(parts):
        raise ValueError("int8 parts of both kinds")
    return PackedInt8Weight.concatenated(packed_parts)


def _int4_codes_torch(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes ``[out, in]`` int32 and scale, zero ``[out, in / 32]`` float32 (in row chunks:
    the temporaries stay in cache, 2.5x faster than whole-tensor ops, same values)."""
    out_features, in_features = weight.shape
    q = torch.empty(out_features, in_features, dtype=torch.int32)
    scale = torch.empty(out_features, in_features // INT4_GROUP)
    zero = torch.empty_like(scale)
    for start in range(0, out_features, _TORCH_CHUNK_ROWS):
        end = min(start + _TORCH_CHUNK_ROWS, out_features)
        groups = weight[start:end].view(end - start, -1, INT4_GROUP)
        low, high = groups.amin(dim=-1), groups.amax(dim=-1)
        chunk_scale = ((high - low) / 15.0).clamp(min=1e-8)
        codes = torch.round((groups - low[..., None]) / chunk_scale[..., None]).clamp(0, 15)
        q[start:end] = codes.view(end - start, in_features).to(torch.int32)
        scale[start:end] = chunk_scale
        zero[start:end] = low + 8.0 * chunk_scale
    return q, scale, zero


def int8_linear(x: torch.Tensor, weight: W8A8Weight) -> torch.Tensor:
    """``x [M, in]`` float -> ``[M, out]`` float32 through int8 x int8 -> int32."""
    return weight.linear(x)


def int8_matmul(x: Int8Rows, weight: W8A8Weight) -> Int32Product:
    """The W8A8 product of already quantized rows, left in int32 for the next kernel."""
    return weight.matmul(x)


def int4_linear(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """``x [M, in]`` float -> ``[M, out]`` float32 through the int4 weight-only kernel."""
    return int4_matmul(x.to(torch.bfloat16), weight).float()


def int4_matmul(x: torch.Tensor, weight: Int4Weight) -> torch.Tensor:
    """``x [M, in]`` bf16 -> ``[M, out]`` bf16: the kernel's own dtypes, no conversions."""
    return torch.ops.aten._weight_int4pack_mm_for_cpu(
        x, weight.packed, INT4_GROUP, weight.scales_zeros
    )


def supports_int4(in_features: int) -> bool:
    """The int4 kernel needs whole groups along the input dimension."""
    return in_features % INT4_GROUP == 0


# Probed up to 2 rows. int4 also measures faster at 4-8 rows offline (SmolLM2 batch 4: 280
# against 216 tok/s), but the 16-stream server benchmark read 204-245 tok/s in seven runs
# with a crossover of 4 or 8 (six of them under 220) and 212-254 in seven runs with 2: too
# wide a spread to decide; until a longer A/B settles it, the crossover stays at 2.
PROBE_ROWS = (1, 2)
# Our own 4-bit kernel (``native/q4_gemm.c``) reads its weights once for all rows, so it
# races W8A8 much further: on the 2026-12-03 AMX Xeon, SmolLM2's 30 layers' matmuls took
# 2.8 / 5.1 / 19.5 / 37.3 ms at 1 / 5 / 32 / 64 rows against W8A8's 16.4 / 18.7 / 27.1 /
# 34.6 (torch's int4: 4.0 / 11.5 / 44.0 / 84.1). On the 2-core AMD EPYC (2026-12-03,
# `benchmarks/native_kernels.py`): 3.0 / 4.8 / 24.1 / 53.0 against W8A8's 12.6 / 15.1 / 25.9
# / 35.9. The probe races the kernels as the native forward runs them: W8A8 on rows
# already in int8 (the kernel before it writes them so), not through `int8_linear` (whose
# torch-side quantization put the MLP's crossover at 64 on that EPYC, where W8A8 is 1.5x
# faster at 64 rows).
Q4_PROBE_ROWS = (1, 4, 16, 32, 48, 64)


# Read between timed runs to push the weights out of the caches where the kernels cannot
# flush them (`NativeKernels.flush_caches`): a decode step streams every layer's weights
# from memory, so a probe on cache-hot weights favours W8A8 wrongly (measured on the 32
# MiB-L3 EPYC: for Qwen2.5-0.5B's MLP at one row, W8A8 205 us hot but 684 us cold, int4
# 238 / 272 us; the hot probe chose W8A8 and batch-1 decode ran at 36 instead of 19 ms).
EVICT_BYTES = 64 * 2**20


@functools.cache
def probe_int4_max_rows(
    in_features: int, out_features: int, repeats: int = 5, q4: NativeKernels | None = None
) -> int:
    """The largest batch (of `PROBE_ROWS`, or `Q4_PROBE_ROWS` with ``q4``) where the 4-bit
    kernel beats W8A8 on this CPU; 0 if none. The 4-bit kernel is ours (``q4``'s
    `pack_q4`, raced against W8A8 on int8 rows, as the native forward runs both) when
    given, else torch's int4 (against `int8_linear`, as the torch forward runs it).

    Times both kernels on a random weight of the projection's shape, with the weights
    dropped from the caches before each run, as in a decode step; the two kernels' runs
    interleaved, best of ``repeats`` each. Measured once per shape and process: the loader
    probes before reading weights (so the probe's buffers never coexist with them).
    """
    weight = torch.empty(out_features, in_features).uniform_(-1.0, 1.0)
    int8 = quantize_int8(weight)
    evict: Callable[[], object] | None = None
    if q4 is not None:
        packed, w8a8 = q4.pack_q4(weight), q4.pack_int8(int8)
        race = _q4_race(packed, w8a8)
        if q4.flush_caches(packed.packed, *w8a8.tensors()):  # the weights' own lines, cheaply
            evict = functools.partial(q4.flush_caches, packed.packed, *w8a8.tensors())
    else:
        race = _torch_int4_race(quantize_int4(weight), int8)
    if evict is None:  # read a buffer larger than the last-level cache
        evict = torch.ones(EVICT_BYTES // 4).sum
    best = 0
    for rows in Q4_PROBE_ROWS if q4 is not None else PROBE_ROWS:
        int4_s, int8_s = _fastest_of_two(*race(rows, in_features), repeats, evict)
        if int4_s >= int8_s:
            break
        best = rows
    return best


Race = Callable[[int, int], tuple[Callable[[], object], Callable[[], object]]]


def _q4_race(packed: Q4Weight, int8: W8A8Weight) -> Race:
    """``rows, in_features`` -> our 4-bit kernel on float rows, W8A8 on int8 rows."""

    def kernels(rows: int, in_features: int) -> tuple[Callable[[], object], Callable[[], object]]:
        x = torch.empty(rows, in_features).uniform_(-1.0, 1.0)
        x8 = Int8Rows(torch.randint(-127, 128, (rows, in_features), dtype=torch.int8),
                      torch.rand(rows, 1))  # fmt: skip
        return functools.partial(packed.matmul, x), functools.partial(int8_matmul, x8, int8)

    return kernels


def _torch_int4_race(int4: Int4Weight, int8: Int8Weight) -> Race:
    """``rows, in_features`` -> torch's int4 on bf16 rows, W8A8 with its own quantization."""

    def kernels(rows: int, in_features: int) -> tuple[Callable[[], object], Callable[[], object]]:
        x = torch.empty(rows, in_features).uniform_(-1.0, 1.0)
        return lambda: int4_matmul(x.to(torch.bfloat16), int4), lambda: int8_linear(x, int8)

    return kernels


def _fastest_of_two(
    first: Callable[[], object],
    second: Callable[[], object],
    repeats: int,
    evict: Callable[[], object],
) -> tuple[float, float]:
    """The best time of each of two kernels, their runs interleaved: a burst of load from
    another process then slows both, not only the one being timed (on a busy 2-core
    machine, timing one kernel's runs and then the other's read 0 rows for shapes whose
    4-bit kernel is 5x faster at one row). ``evict`` runs before each timed run."""
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for run, spent in ((first, times[0]), (second, times[1])):
            evict()
            start = time.perf_counter()
            run()
            spent.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])
