"""A float32 table kept in its GGUF blocks' size, whose rows decode to the exact floats.

The embedding table and the LM head's exact rows are read a few rows at a time (the tokens
of a step; each row's top candidates), yet held as float32: 113 MB for SmolLM2's tied
table, 2 x 544 MB for Qwen2.5-0.5B's. Stored as one int8 code per value plus a float32
scale (and, for the asymmetric formats, an offset) per block, as in the file, they take
~1.1-1.3 bytes a value, and `rows` decodes the rows asked for with the ``gguf`` package's
own float operations in the same order, so every float is bit for bit the decoded table's
(checked in the tests). Formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inferline.models import gguf_quants as gq
from inferline.models import quant_native
from inferline.models.gguf_header import GGUFHeader

Q = GGMLQuantizationType
# The formats whose values are ``scale * code`` (+ ``offset``): block fields -> (codes,
# scale, offset) per group, with the decoders' own float32 products.
SUPPORTED = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K)


@dataclass
class BlockRows:
    """``[rows, cols]`` values as int8 ``codes``, per-group float32 ``scale`` and, for
    Q4_1/Q5_1/Q4_K/Q5_K, ``offset``: value = code * scale (+ offset), group by group."""

    codes: torch.Tensor  # [rows, cols] int8
    scale: torch.Tensor  # [rows, cols / group] float32
    offset: torch.Tensor | None  # [rows, cols / group] float32, or None (symmetric)
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the float table."""
        return self.codes.shape[0], self.codes.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held (codes, scales, offsets)."""
        extra = 0 if self.offset is None else self.offset.nbytes
        return self.codes.nbytes + self.scale.nbytes + extra

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 ``[*ids.shape, cols]``: the decoded table's rows ``ids``, bit for bit."""
        cols = self.shape[1]
        flat = ids.reshape(-1)
        # index_select and in-place products: 2048 rows of 576 in 0.35 ms against 0.95 ms
        # for indexing and fresh tensors (less than a gather of the float rows, 0.44 ms)
        values = self.codes.index_select(0, flat).view(-1, cols // self.group, self.group).float()
        values.mul_(self.scale.index_select(0, flat).unsqueeze(-1))
        if self.offset is not None:
            values.add_(self.offset.index_select(0, flat).unsqueeze(-1))
        return values.view(*ids.shape, cols)

    def dequantize(self, chunk_rows: int = 4096) -> torch.Tensor:
        """The whole float32 table (e.g. to quantize an approximate head from it)."""
        rows, cols = self.shape
        out = torch.empty(rows, cols)
        for start in range(0, rows, chunk_rows):
            out[start : start + chunk_rows] = self.rows(
                torch.arange(start, min(start + chunk_rows, rows))
            )
        return out


def from_gguf(header: GGUFHeader, name: str) -> BlockRows | None:
    """Tensor ``name`` of a parsed GGUF file as `BlockRows`; None when it is missing or
    stored in a format kept as floats (F32, F16, BF16)."""
    tensor = next((t for t in header.tensors if t.name == name), None)
    if tensor is None or GGMLQuantizationType(tensor.type_id) not in SUPPORTED:
        return None
    qtype = GGMLQuantizationType(tensor.type_id)
    num_bytes = gq.tensor_bytes(qtype, tensor.shape[0] * tensor.shape[1])
    rows_cols = (int(tensor.shape[1]), int(tensor.shape[0]))  # GGUF dims are (cols, rows)
    table = from_blocks(header.data[tensor.offset : tensor.offset + num_bytes], qtype, rows_cols)
    header.release_pages(tensor.offset, num_bytes)  # the file's pages leave our RSS
    return table


_CHUNK_BLOCKS = 4096  # blocks unpacked per step: the temporaries stay in cache


def from_blocks(raw: np.ndarray, qtype: Q, shape: tuple[int, int]) -> BlockRows:
    """The `BlockRows` of a tensor's raw GGUF bytes (uint8) of ``shape`` (numpy order)."""
    if qtype not in SUPPORTED:
        raise ValueError(f"{qtype.name} is not stored as BlockRows")
    type_size = GGML_QUANT_SIZES[qtype][1]
    blocks = torch.from_numpy(np.ascontiguousarray(raw)).view(-1, type_size)
    fields = _FIELDS[qtype]
    first = fields(blocks[:1])  # codes [1, groups, group], scale/offset [1, groups]
    groups, group = first[0].shape[1], first[0].shape[2]
    num_blocks = blocks.shape[0]
    codes = torch.empty(num_blocks, groups, group, dtype=torch.int8)
    scale = torch.empty(num_blocks, groups)
    offset = None if first[2] is None else torch.empty(num_blocks, groups)
    kernels = quant_native.active()
    if kernels is not None and kernels.can_dequantize(qtype):  # the same fields, in C
        kernels.block_fields(blocks.numpy().reshape(-1), qtype, codes, scale, offset)
        return _shaped(codes, scale, offset, shape, group)
    for start in range(0, num_blocks, _CHUNK_BLOCKS):
        end = min(start + _CHUNK_BLOCKS, num_blocks)
        chunk_codes, chunk_scale, chunk_offset = fields(blocks[start:end])
        codes[start:end] = chunk_codes
        scale[start:end] = chunk_scale.view(end - start, groups)
        if offset is not None and chunk_offset is not None:
            offset[start:end] = chunk_offset.view(end - start, groups)
    return _shaped(codes, scale, offset, shape, group)


def _shaped(
    codes: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    shape: tuple[int, int],
    group: int,
) -> BlockRows:
    rows, cols = shape
    return BlockRows(
        codes.view(rows, cols),
        scale.view(rows, -1),
        None if offset is None else offset.view(rows, -1),
        group,
    )


Fields = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def _legacy(b: torch.Tensor, qh_at: int | None, qs_at: int, bias: int, has_min: bool) -> Fields:
    """Q4_0/Q4_1/Q5_0/Q5_1: one float16 scale (and min) per 32 values."""
    q = gq._nibbles(b[:, qs_at:], 16)
    if qh_at is not None:
        q = q | (gq._bits32(b[:, qh_at : qh_at + 4]) << 4)
    codes = q.to(torch.int8) - bias if bias else q.to(torch.int8)
    offset = gq._half(b, 2) if has_min else None
    return codes.unsqueeze(1), gq._half(b, 0), offset  # value = d * code (+ m)


def _q8_0(b: torch.Tensor) -> Fields:
    return b[:, 2:].contiguous().view(torch.int8).unsqueeze(1), gq._half(b, 0), None


def _k_fields(b: torch.Tensor, q: torch.Tensor) -> Fields:
    """Q4_K/Q5_K: value = (d * sc) * q - (dmin * m) = q * scale + (-(dmin * m))."""
    sc, mn = gq._k_scale_min(b[:, 4:16])
    scale = gq._half(b, 0) * sc.float()  # [n, 8], the decoder's own product
    offset = -(gq._half(b, 2) * mn.float())
    return q.to(torch.int8), scale, offset


def _q4_k(b: torch.Tensor) -> Fields:
    return _k_fields(b, gq._nibbles(b[:, 16:], 32).reshape(-1, 8, 32))


def _q5_k(b: torch.Tensor) -> Fields:
    n = b.shape[0]
    qh = (b[:, 16:48].reshape(n, 1, 32) >> gq._BIT_SHIFTS.view(1, 8, 1)) & 1
    return _k_fields(b, gq._nibbles(b[:, 48:], 32).reshape(n, 8, 32) | (qh << 4))


def _q6_k(b: torch.Tensor) -> Fields:
    """value = (d * scale) * (q - 32), sixteen groups of 16."""
    n = b.shape[0]
    scales = b[:, 192:208].contiguous().view(torch.int8).float()
    scale = gq._half(b, 208) * scales  # [n, 16]
    ql = gq._nibbles(b[:, :128], 64).reshape(n, 8, 32)
    qh = (b[:, 128:192].reshape(n, 2, 1, 32) >> gq._CROUMB_SHIFTS.view(1, 1, 4, 1)) & 3
    q = (ql | (qh.reshape(n, 8, 32) << 4)).to(torch.int8) - 32
    return q.reshape(n, 16, 16), scale, None


_FIELDS = {
    Q.Q4_0: lambda b: _legacy(b, None, 2, 8, False),
    Q.Q4_1: lambda b: _legacy(b, None, 4, 0, True),
    Q.Q5_0: lambda b: _legacy(b, 2, 6, 16, False),
    Q.Q5_1: lambda b: _legacy(b, 4, 8, 0, True),
    Q.Q8_0: _q8_0,
    Q.Q4_K: _q4_k,
    Q.Q5_K: _q5_k,
    Q.Q6_K: _q6_k,
}
