"""Fused CPU kernels in C, compiled on first use with the system compiler, called by ctypes.

The decoder layer's row-wise work (residual add + RMSNorm, bias + RoPE + KV-cache write,
decode attention over the paged cache, SiLU-gate) runs as one call each instead of ~45
eager torch ops per layer. ``q4_gemm.c`` adds our own 4-bit weight matmul for a handful
of rows (`Q4Weight`: one pass over the weights for all rows of a step), and ``i8_gemm.c``
W8A8 on weights packed once for VNNI, run on AMX tiles where the CPU has them
(`PackedInt8Weight`: the same int32 sums as ``torch._int_mm``, faster). The library is
built with ``-O3 -march=native -fopenmp`` into the model cache (keyed by source, compiler and
CPU) in about a second, so nothing is compiled at install time. Without a C compiler, or
with ``INFERLINE_NATIVE_KERNELS=0``, `load_kernels` returns None and the model runs its
plain torch path.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
from functools import cache
from pathlib import Path

import torch

from inferline.models.kv_layout import cache_kind
from inferline.models.native.arguments import (
    _F32_ROTATED,
    Activation,
    MatmulInput,
    _is_bf16,
    _out_form,
    _p,
    _rows,
    _sink,
    _source,
)
from inferline.models.native.build import compiled, compiler
from inferline.models.native.packed import PackedInt8Weight, Q4Weight
from inferline.models.native.row_selection import RowSelection
from inferline.models.native.signatures import RESULT_TYPES, SIGNATURES
from inferline.models.quant import Int8Rows, Int8Weight, Int32Product

logger = logging.getLogger(__name__)

__all__ = ["AMX_MIN_ROWS", "NativeKernels", "PackedInt8Weight", "Q4Weight", "load_kernels"]

SOURCES = tuple(
    Path(__file__).with_name(name)
    for name in (
        "cpu_kernels.c",
        "attention.c",
        "attention_plain.c",
        "prefill_attention.c",
        "prefill_attention_amx.c",
        "prefill_attention_amx64.c",
        "prefill_attention_i16.c",
        "decode_attention_i16.c",
        "decode_attention_amx.c",
        "q4_gemm.c",
        "i8_gemm.c",
        "gate_up_silu.c",
        "layer_stack.c",
        "row_select.c",
    )
)
# -mprefer-vector-width=512: GCC's default on these CPUs is 256-bit vectors for the loops
# it vectorizes itself (silu_mul to int8, 512 rows: 1.06 -> 0.91 ms a layer, one thread)
COMPILE_FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fPIC",
                 "-shared", "-std=c11")  # fmt: skip


# AMX (TDPBSSD) against VNNI's packed kernel on a 2-core Sapphire Rapids guest: hot caches
# (576x1536 .. 4864x896 weights) 0.9-1.1x at 4 rows, 1.3-1.7x at 8, 2.5-3.9x from 32;
# SmolLM2's 30 layers, weights cold (benchmarks/native_kernels.py), 1.2x at 5 rows, 0.93x at 1.
# INFERLINE_AMX=0 keeps the VNNI kernel alone (for A/B runs).
AMX_MIN_ROWS = 4


@cache
def load_kernels(cache_dir: Path) -> NativeKernels | None:
    """The compiled kernels, building them if needed; None where they cannot be had."""
    if os.environ.get("INFERLINE_NATIVE_KERNELS", "1") == "0":
        return None
    cc = compiler()
    if cc is None:
        logger.warning("no C compiler found: running the plain torch path (slower)")
        return None
    try:
        return NativeKernels(compiled(SOURCES, COMPILE_FLAGS, cache_dir, cc))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        logger.warning("native kernels unavailable (%s): running the torch path", detail)
        return None


class NativeKernels(RowSelection):
    """Typed wrappers over the C functions; each allocates and returns its output."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        for name, argtypes in SIGNATURES.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = RESULT_TYPES.get(name)
        self.lib = lib
        self.q4_path: str = lib.q4_path().decode()  # "avx512-vnni", "avx2" or "plain-c"
        self.i8_path: str = lib.i8_path().decode()  # "avx512-vnni", or "": torch._int_mm
        self.amx_rows = 0  # i8_matmul on AMX from this many rows (0: never), `amx_from`
        amx = os.environ.get("INFERLINE_AMX", "1") != "0"
        self.amx_from(AMX_MIN_ROWS if amx else 0)
        # prefill attention on AMX bf16 tiles (`amx_attention_on`); INFERLINE_AMX_ATTENTION=0
        # keeps the float32 kernel (its outputs' KL to fp32 equals the float32 kernel's:
        # ARCHITECTURE.md)
        self.amx_attention = False
        self.amx_attention_on(amx and os.environ.get("INFERLINE_AMX_ATTENTION", "1") != "0")
        # decode attention over an int8 cache on AMX int8 tiles (`amx_decode_on`);
        # INFERLINE_AMX_DECODE=0 keeps the AVX-512 kernel
        self.amx_decode = False
        self.amx_decode_on(amx and os.environ.get("INFERLINE_AMX_DECODE", "1") != "0")
        # prefill attention over an int8 cache on VNNI int16 products where AMX does not
        # run it (`i16_attention_on`); INFERLINE_I16_ATTENTION=0 keeps the float32 kernel
        # and decode attention over it likewise (`i16_decode_on`); INFERLINE_I16_DECODE=0
        # keeps the float32 kernel
        self.i16_attention = False
        self.i16_attention_on(os.environ.get("INFERLINE_I16_ATTENTION", "1") != "0")
        self.i16_decode = False
        self.i16_decode_on(os.environ.get("INFERLINE_I16_DECODE", "1") != "0")

    def amx_from(self, rows: int) -> int:
        """Run `i8_matmul` on AMX from ``rows`` rows (0: never); returns the setting in
        force, 0 where this CPU, build or OS has no AMX int8."""
        self.amx_rows = self.lib.i8_amx_rows(rows) if self.i8_path else 0
        return self.amx_rows

    def amx_attention_on(self, on: bool) -> bool:
        """Run `prefill_attention` over a bf16 cache on AMX bf16 tiles (or not); returns
        the setting in force, False where this CPU, build or OS has no AMX bf16."""
        self.amx_attention = bool(self.lib.prefill_attention_amx(int(on)))
        return self.amx_attention

    def amx_decode_on(self, on: bool) -> bool:
        """Run `decode_attention` over an int8 cache on AMX int8 tiles (or not); returns
        the setting in force, False where this CPU, build or OS has no AMX int8."""
        self.amx_decode = bool(self.lib.decode_attention_amx(int(on)))
        return self.amx_decode

    def i16_attention_on(self, on: bool) -> bool:
        """Run `prefill_attention` over an int8 cache on VNNI int16 products (or not)
        where AMX does not; returns the setting in force, False where this build has no
        AVX-512 VNNI."""
        self.i16_attention = bool(self.lib.prefill_attention_i16(int(on)))
        return self.i16_attention

    def i16_decode_on(self, on: bool) -> bool:
        """Run `decode_attention` over an int8 cache on VNNI int16 products (or not)
        where AMX does not; returns the setting in force, False where this build has no
        AVX-512 VNNI."""
        self.i16_decode = bool(self.lib.decode_attention_i16(int(on)))
        return self.i16_decode

    def add_rms_norm(
        self,
        residual: torch.Tensor,  # [T, hidden] float32, updated in place
        delta: Activation | None,  # [T, hidden]
        weight: torch.Tensor,
        eps: float,
        out_dtype: torch.dtype,
    ) -> MatmulInput:
        """``residual += delta``; returns ``rms_norm(residual) * weight`` as ``out_dtype``
        (float32, bf16, or int8 for `Int8Rows`)."""
        rows, hidden = residual.shape
        out, sink = _sink(rows, hidden, out_dtype)
        self.lib.add_rms_norm(rows, hidden, *_source(delta), _p(residual), _p(weight), eps, *sink)
        return out

    def quantize_rows(self, x: torch.Tensor, rotated: bool = False) -> Int8Rows:
        """Float32 or bf16 rows -> int8 with per-row scales (W8A8 input); ``rotated``:
        float32 rows already in the rotated basis (attention's ``in_cache_basis``)."""
        rows, width = x.shape
        out = Int8Rows(torch.empty(rows, width, dtype=torch.int8), torch.empty(rows, 1))
        kind = _F32_ROTATED if rotated else _is_bf16(x)
        self.lib.quantize_rows(rows, width, _p(x), kind, _p(out.values), _p(out.scales))
        return out

    def rope_store_kv(
        self,
        qkv: Activation,  # [T, (heads + 2 kv_heads) * head_dim]
        bias: torch.Tensor | None,
        shape: tuple[int, int, int],  # heads, kv_heads, head_dim
        positions: torch.Tensor,  # [T] int64
        cos: torch.Tensor,  # [max_positions, head_dim]
        sin: torch.Tensor,
        slots: torch.Tensor,  # [T] int64
        kv_cache: torch.Tensor,  # [2, num_slots, kv_heads, width] (`kv_layout`)
    ) -> torch.Tensor:
        """Writes rotated k and v to the cache; returns rotated q ``[T, heads, head_dim]``."""
        heads, kv_heads, head_dim = shape
        rows = _rows(qkv)[0]
        q = torch.empty(rows, heads, head_dim)
        self.lib.rope_store_kv(
            rows, heads, kv_heads, head_dim, *_source(qkv), _p(bias), _p(positions),
            _p(cos), _p(sin), _p(slots), _p(kv_cache[0]), _p(kv_cache[1]), cache_kind(kv_cache),
            _p(q),
        )  # fmt: skip
        return q

    def decode_attention(
        self,
        q: torch.Tensor,  # [T, heads, head_dim] float32
        kv_cache: torch.Tensor,  # [2, num_slots, kv_heads, width] (`kv_layout`)
        block_tables: torch.Tensor,  # [S, max_blocks] int32
        context_lens: torch.Tensor,  # [S] int32
        token_rows: torch.Tensor,  # [S] int64: each sequence's row of q and out
        block_size: int,
        out: torch.Tensor,  # [T, heads * head_dim] float32 or bf16, rows filled here
        in_cache_basis: bool = False,
    ) -> None:
        """Attention of one query token per sequence over its paged context (outputs left
        in a rotated cache's basis with ``in_cache_basis``: `quantize_rows(rotated=True)`)."""
        _, heads, head_dim = q.shape
        kv_heads = kv_cache.shape[2]
        status = self.lib.decode_attention(
            token_rows.shape[0], heads, kv_heads, head_dim, _p(q), _p(kv_cache[0]),
            _p(kv_cache[1]), cache_kind(kv_cache), _p(block_tables), block_tables.shape[1],
            _p(context_lens), _p(token_rows), block_size, head_dim**-0.5, _p(out),
            _out_form(out, in_cache_basis),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"decode_attention: {heads} heads over {kv_heads} kv heads")

    def handles_prefill(self, heads: int, kv_heads: int, head_dim: int) -> bool:
        """Whether `prefill_attention` computes this head layout in this build (AVX-512,
        head_dim 64 or 128, at most 8 query heads per kv head)."""
        return bool(self.lib.prefill_attention_supported(heads, kv_heads, head_dim))

    def prefill_attention(
        self,
        q: torch.Tensor,  # [T, heads, head_dim] float32
        kv_cache: torch.Tensor,  # [2, num_slots, kv_heads, width] (`kv_layout`)
        chunks: torch.Tensor,  # [C, 3] int64: first row, first position, token count
        block_tables: torch.Tensor,  # [C, max_blocks] int32
        block_size: int,
        out: torch.Tensor,  # [T, heads * head_dim] float32 or bf16, rows filled here
        in_cache_basis: bool = False,
    ) -> bool:
        """Causal attention of prefill chunks over their paged context (this step's K/V
        already written); False (nothing computed) where this build or head size is not
        handled: the caller runs torch's SDPA instead. ``in_cache_basis``: as
        `decode_attention`."""
        _, heads, head_dim = q.shape
        kv_heads = kv_cache.shape[2]
        status = self.lib.prefill_attention(
            chunks.shape[0], heads, kv_heads, head_dim, _p(q), _p(kv_cache[0]),
            _p(kv_cache[1]), cache_kind(kv_cache), _p(block_tables), block_tables.shape[1],
            _p(chunks), block_size, head_dim**-0.5, _p(out), _out_form(out, in_cache_basis),
        )  # fmt: skip
        return status == 0

    def silu_mul(self, gate_up: Activation, out_dtype: torch.dtype) -> MatmulInput:
        """``[T, 2I]`` -> ``silu(gate) * up`` ``[T, I]`` as ``out_dtype``."""
        rows, width = _rows(gate_up)
        out, sink = _sink(rows, width // 2, out_dtype)
        self.lib.silu_mul(rows, width // 2, *_source(gate_up), *sink)
        return out

    def pack_q4(self, weight: torch.Tensor) -> Q4Weight:
        """A float ``[out, in]`` weight (``in`` a multiple of 32) in the q4x16 format of
        ``q4_gemm.c``: 4-bit codes with an fp16 scale and minimum per column and group of
        32 inputs (GGUF's Q4_1 values, laid out for VNNI), 5 bits a weight."""
        weight = weight.float().contiguous()
        out_features, in_features = weight.shape
        if in_features % 32:
            raise ValueError(f"q4 needs whole groups of 32 inputs, got {in_features}")
        packed = torch.empty(self.lib.q4_packed_bytes(out_features, in_features), dtype=torch.uint8)
        self.lib.q4_pack(out_features, in_features, _p(weight), _p(packed))
        return Q4Weight(packed, out_features, in_features, self)

    def pack_int8(self, weight: Int8Weight) -> PackedInt8Weight | Int8Weight:
        """``weight``'s integers in the layout of ``i8_gemm.c`` (the same products as
        ``torch._int_mm``, faster); ``weight`` itself where this build has no such kernel."""
        in_features, out_features = weight.w8_t.shape
        if not self.i8_path or in_features % 4:
            return weight
        packed = torch.empty(self.lib.i8_packed_bytes(out_features, in_features), dtype=torch.int8)
        comp = torch.empty(self.lib.i8_padded_columns(out_features), dtype=torch.int32)
        self.lib.i8_pack(out_features, in_features, _p(weight.w8_t), _p(packed), _p(comp))
        return PackedInt8Weight(packed, comp, weight.scale, out_features, in_features, self)

    def i8_matmul(self, x: Int8Rows, weight: PackedInt8Weight) -> Int32Product:
        """Int8 rows ``[M, in]`` times a packed weight: exact int32 ``[M, out]``."""
        values = x.values
        if values.shape[1] != weight.in_features:
            raise ValueError(f"i8_matmul: {values.shape[1]} inputs for {weight.in_features}")
        out = torch.empty(values.shape[0], weight.out_features, dtype=torch.int32)
        self.lib.i8_matmul(
            values.shape[0], weight.out_features, weight.in_features, _p(values),
            _p(weight.packed), _p(weight.comp), _p(out), None, None, None, 0,
        )  # fmt: skip
        return Int32Product(out, x.scales, weight.scale)

    def i8_matmul_scaled(
        self, x: Int8Rows, weight: PackedInt8Weight, dtype: torch.dtype
    ) -> torch.Tensor:
        """Int8 rows ``[M, in]`` times a packed weight, dequantized in the same pass:
        ``[M, out]`` float32 (``values.float() * (row_scales * col_scales)`` of the
        `Int32Product`, torch's roundings) or bf16 (that rounded to nearest even: half the
        bytes for the next kernel to read)."""
        values = x.values
        if values.shape[1] != weight.in_features:
            raise ValueError(f"i8_matmul: {values.shape[1]} inputs for {weight.in_features}")
        out = torch.empty(values.shape[0], weight.out_features, dtype=dtype)
        self.lib.i8_matmul(
            values.shape[0], weight.out_features, weight.in_features, _p(values),
            _p(weight.packed), _p(weight.comp), None, _p(x.scales), _p(weight.scale), _p(out),
            _is_bf16(out),
        )  # fmt: skip
        return out

    def i8_linear(self, x: torch.Tensor, weight: PackedInt8Weight) -> torch.Tensor:
        """Float rows ``[M, in]`` -> ``[M, out]`` float32: quantized per row
        (`quantize_rows`), multiplied and dequantized in one pass, bit for bit
        `quant.int8_linear`'s result."""
        if x.shape[-1] != weight.in_features:
            raise ValueError(f"i8_linear: {x.shape[-1]} inputs for {weight.in_features}")
        rows = self.quantize_rows(x.contiguous())
        out = torch.empty(x.shape[0], weight.out_features)
        self.lib.i8_matmul(
            x.shape[0], weight.out_features, weight.in_features, _p(rows.values),
            _p(weight.packed), _p(weight.comp), None, _p(rows.scales), _p(weight.scale), _p(out),
            0,
        )  # fmt: skip
        return out

    def flush_caches(self, *tensors: torch.Tensor) -> bool:
        """Drops ``tensors``' bytes from every cache level (as a decode step finds a layer's
        weights); False where this build cannot (then nothing was done)."""
        return all(self.lib.flush_cache_lines(_p(t), t.numel() * t.element_size()) for t in tensors)

    def q4_matmul(self, x: torch.Tensor, weight: Q4Weight) -> torch.Tensor:
        """``x [M, in]`` float32 or bf16 -> ``x W^T`` ``[M, out]`` float32; each row computed
        from its own input alone, whatever ``M`` (batch invariant)."""
        if x.shape[-1] != weight.in_features:
            raise ValueError(
                f"q4_matmul: {x.shape[-1]} inputs for a {weight.in_features}-wide weight"
            )
        out = torch.empty(x.shape[0], weight.out_features)
        self.lib.q4_matmul(
            x.shape[0], weight.out_features, weight.in_features, _p(x), _is_bf16(x),
            _p(weight.packed), _p(out),
        )  # fmt: skip
        return out
