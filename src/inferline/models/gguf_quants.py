"""GGUF block formats decoded with torch, bit for bit as the ``gguf`` package decodes them.

The ``gguf`` package's numpy kernels split a tensor into groups of 16 rows and spend most of
their time in Python and temporaries (5.8 s of Qwen2.5-0.5B's 12 s load). Here each format is
a handful of whole-chunk torch ops over cache-sized chunks of blocks, written straight into
the caller's output (a slice of a fused weight), with the same float32 operations in the same
order as ``gguf.quants`` so the values are identical (checked against it in the tests on the
real model files). Where `quant_native` is enabled its C decoders run instead (the same
values again, one pass). Formats we do not decode fall back to the ``gguf`` package.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from inferline.models import quant_native

Q = GGMLQuantizationType
_CHUNK_ELEMENTS = 1 << 16  # elements decoded per step: the temporaries stay in L2
_NIBBLE_SHIFTS = torch.tensor([0, 4], dtype=torch.uint8)
_CROUMB_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_BIT_SHIFTS = torch.arange(8, dtype=torch.uint8)


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The float16 at byte ``start`` of each block, as float32 ``[n, 1]``."""
    return blocks[:, start : start + 2].contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor, width: int) -> torch.Tensor:
    """Low then high nibbles of each ``width``-byte run: ``[n, bytes]`` -> ``[n, bytes*2]``."""
    n = qs.shape[0]
    parts = qs.reshape(n, -1, 1, width) >> _NIBBLE_SHIFTS.view(1, 1, 2, 1)
    return (parts & 0x0F).reshape(n, -1)


def _bits32(qh: torch.Tensor) -> torch.Tensor:
    """Bit ``i`` of the little-endian 32-bit word ``qh`` ``[n, 4]`` as ``[n, 32]`` uint8."""
    return ((qh.unsqueeze(-1) >> _BIT_SHIFTS) & 1).reshape(qh.shape[0], 32)


def _q4_0(b: torch.Tensor) -> torch.Tensor:
    q = (_nibbles(b[:, 2:], 16).to(torch.int8) - 8).float()
    return _half(b, 0) * q


def _q4_1(b: torch.Tensor) -> torch.Tensor:
    return (_half(b, 0) * _nibbles(b[:, 4:], 16).float()) + _half(b, 2)


def _q5_0(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 6:], 16) | (_bits32(b[:, 2:6]) << 4)
    return _half(b, 0) * (q.to(torch.int8) - 16).float()


def _q5_1(b: torch.Tensor) -> torch.Tensor:
    q = _nibbles(b[:, 8:], 16) | (_bits32(b[:, 4:8]) << 4)
    return (_half(b, 0) * q.float()) + _half(b, 2)


def _q8_0(b: torch.Tensor) -> torch.Tensor:
    return b[:, 2:].contiguous().view(torch.int8).float() * _half(b, 0)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 6-bit sub-block scales and mins from their 12 packed bytes."""
    n = scales.shape[0]
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mn  # [n, 8] each


def _q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (_half(b, 0) * sc.float()).unsqueeze(-1)  # [n, 8, 1]
    dm = (_half(b, 2) * mn.float()).unsqueeze(-1)
    q = _nibbles(b[:, 16:], 32).reshape(n, 8, 32).float()
    return (d * q - dm).reshape(n, 256)


def _q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = (_half(b, 0) * sc.float()).unsqueeze(-1)
    dm = (_half(b, 2) * mn.float()).unsqueeze(-1)
    qh = (b[:, 16:48].reshape(n, 1, 32) >> _BIT_SHIFTS.view(1, 8, 1)) & 1  # [n, 8, 32]
    q = _nibbles(b[:, 48:], 32).reshape(n, 8, 32) | (qh << 4)
    return (d * q.float() - dm).reshape(n, 256)


def _q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    d = (_half(b, 208) * scales).reshape(n, 16, 1)
    ql = _nibbles(b[:, :128], 64).reshape(n, 8, 32)
    qh = (b[:, 128:192].reshape(n, 2, 1, 32) >> _CROUMB_SHIFTS.view(1, 1, 4, 1)) & 3
    q = (ql | (qh.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    return (d * q.reshape(n, 16, 16).float()).reshape(n, 256)


def _f16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float()


def _bf16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.bfloat16).float()


def _f32(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float32)


_DECODERS: dict[Q, Callable[[torch.Tensor], torch.Tensor]] = {
    Q.F32: _f32,
    Q.F16: _f16,
    Q.BF16: _bf16,
    Q.Q4_0: _q4_0,
    Q.Q4_1: _q4_1,
    Q.Q5_0: _q5_0,
    Q.Q5_1: _q5_1,
    Q.Q8_0: _q8_0,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}


def tensor_bytes(qtype: Q, num_elements: int) -> int:
    """Bytes ``num_elements`` values of ``qtype`` take in a GGUF file."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return num_elements // block_size * type_size


def dequantize_into(raw: np.ndarray, qtype: Q, out: torch.Tensor) -> torch.Tensor:
    """Decodes ``raw`` (a tensor's bytes, uint8) into float32 ``out`` (any shape with the
    tensor's element count, contiguous), chunk by chunk; returns ``out``."""
    flat = out.view(-1)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if raw.size != flat.numel() // block_size * type_size:
        raise ValueError(f"{raw.size} bytes do not hold {flat.numel()} {qtype.name} values")
    kernels = quant_native.active()
    if kernels is not None and kernels.can_dequantize(qtype) and out.is_contiguous():
        kernels.dequantize_into(np.ascontiguousarray(raw), qtype, flat)
        return out
    decoder = _DECODERS.get(qtype)
    if decoder is None:  # a format not decoded here: the gguf package's kernels
        rows = raw.reshape(-1, type_size)
        flat.copy_(torch.from_numpy(gguf_dequantize(rows, qtype).astype(np.float32).ravel()))
        return out
    blocks = torch.from_numpy(raw).view(-1, type_size)
    step = max(1, _CHUNK_ELEMENTS // block_size)
    for start in range(0, blocks.shape[0], step):
        chunk = blocks[start : start + step]
        flat[start * block_size : (start + chunk.shape[0]) * block_size] = decoder(chunk).view(-1)
    return out


def dequantize(raw: np.ndarray, qtype: Q, shape: tuple[int, ...]) -> torch.Tensor:
    """``raw`` decoded to a new float32 tensor of ``shape`` (numpy order: rows last)."""
    return dequantize_into(raw, qtype, torch.empty(shape, dtype=torch.float32))
