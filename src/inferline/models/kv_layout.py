"""How K and V values sit in the paged cache, one definition for the torch path and the
native kernels (``native/kernels_common.h`` mirrors it).

A layer's cache is ``[2, num_slots, num_kv_heads, width]``. float32 and bfloat16 caches
hold the values (``width = head_dim``). An int8 cache holds each (slot, kv head) row as
``head_dim`` int8 values followed by the 4 bytes of their float32 scale (``width = head_dim
+ 4``): value = int8 * scale, scale = max|row| / 127, rounded half to even. A scale per
token and head follows outliers where they are (a per-channel scale would need the whole
sequence first) and costs 4 bytes per 64 or 128 values. The int8 rows are stored rotated
(`rotation.rotated`, head_dim a multiple of 64): one outlier channel then no longer sets the
row's step (Qwen2.5-Coder's KL to fp32 0.0289 -> see ARCHITECTURE.md); `read_rows` rotates
them back, and the native kernels rotate queries in and outputs out instead.
"""

from __future__ import annotations

import torch

from inferline.models.rotation import ROTATION_BLOCK, rotated

SCALE_BYTES = 4
KV_DTYPES = ("float32", "bfloat16", "int8")
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}  # CACHE_* in C


def row_width(head_dim: int, dtype: torch.dtype) -> int:
    """Elements of one (slot, kv head) row of a cache of ``dtype``."""
    return head_dim + SCALE_BYTES if dtype == torch.int8 else head_dim


def cache_kind(cache: torch.Tensor) -> int:
    """The native kernels' code for a cache's element type (``CACHE_*`` in C)."""
    if cache.dtype not in _KINDS:
        raise ValueError(f"a KV cache is float32, bfloat16 or int8, not {cache.dtype}")
    return _KINDS[cache.dtype]


def rows_rotated(cache: torch.Tensor, head_dim: int) -> bool:
    """Whether the cache holds its rows rotated (int8, head_dim a multiple of 64): attention
    over it can leave its outputs in that basis for a W8A8 projection (`fused_forward`)."""
    return cache.dtype == torch.int8 and head_dim % ROTATION_BLOCK == 0


def write_rows(cache: torch.Tensor, slots: torch.Tensor, values: torch.Tensor) -> None:
    """Stores ``values [T, kv_heads, head_dim]`` (float) at ``slots`` of one half (K or V)
    ``[num_slots, kv_heads, width]`` of a layer's cache."""
    if cache.dtype != torch.int8:
        cache.index_copy_(0, slots, values.to(cache.dtype))
        return
    head_dim = values.shape[-1]
    values = rotated(values.float().reshape(-1, head_dim)).view(values.shape)  # native/hadamard.h
    scales = values.abs().amax(dim=-1, keepdim=True).clamp(min=1e-30) / 127.0
    rows = torch.empty(*values.shape[:-1], head_dim + SCALE_BYTES, dtype=torch.int8)
    rows[..., :head_dim] = torch.round(values / scales).to(torch.int8)
    rows[..., head_dim:] = scales.view(torch.int8)
    cache.index_copy_(0, slots, rows)


def cache_of(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A layer's cache ``[2, num_slots, kv_heads, width]`` of ``dtype`` holding ``values``
    ``[2, num_slots, kv_heads, head_dim]`` (benchmarks and tests fill caches with it)."""
    if dtype != torch.int8:
        return values.to(dtype)
    cache = torch.empty(*values.shape[:-1], row_width(values.shape[-1], dtype), dtype=dtype)
    for half in (0, 1):
        write_rows(cache[half], torch.arange(values.shape[1]), values[half])
    return cache


def read_rows(cache: torch.Tensor, slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values at ``slots`` (any shape) of one half of a layer's cache, as ``dtype``:
    ``[*slots.shape, kv_heads, head_dim]``."""
    rows = cache[slots]
    if cache.dtype != torch.int8:
        return rows.to(dtype)
    head_dim = rows.shape[-1] - SCALE_BYTES
    scales = rows[..., head_dim:].contiguous().view(torch.float32)
    values = rows[..., :head_dim].to(torch.float32) * scales
    return rotated(values.reshape(-1, head_dim)).view(values.shape).to(dtype)  # back (H H = I)
