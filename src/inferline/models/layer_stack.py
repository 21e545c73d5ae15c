"""The layer stack of a step in one native call (``native/layer_stack.c``).

`fused_forward` calls ~9 kernels per layer from Python; for a step of single-token queries
and prefill chunks for the native prefill kernel, on our own kernels (4-bit up to each
projection's crossover, packed int8 above), `LayerStack` makes the same calls from C, with
the same results, without the per-call overhead: ~2 ms a decode step, 101-105 -> 85-86 ms
a 512-token prefill (SmolLM2, 30 layers, AMX Xeon).
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING, cast

import torch

from inferline.models import fused_forward
from inferline.models.attention import AttentionMetadata, DecodeBatch, PrefillBatch
from inferline.models.kv_layout import cache_kind
from inferline.models.native import NativeKernels, PackedInt8Weight, Q4Weight
from inferline.models.row_choice import kernel_rows

if TYPE_CHECKING:
    from inferline.models.llama import DecoderForCausalLM, DecoderLayer, Linear

_p, _i32, _i64, _f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float


class _Projection(ctypes.Structure):
    _fields_ = [
        ("q4", _p), ("i8", _p), ("i8_comp", _p), ("i8_scale", _p), ("q4_max_rows", _i64),
    ]  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [
        *[(name, _p) for name in ("input_norm", "post_attention_norm", "qkv_bias")],
        *[(name, _Projection) for name in ("qkv", "o", "gate_up", "down")],
    ]


class _Stack(ctypes.Structure):
    _fields_ = [
        *[(name, _i32) for name in (
            "num_layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "compact",
        )],
        ("eps", _f32), ("attention_scale", _f32),
        ("final_norm", _p), ("cos_table", _p), ("sin_table", _p),
        ("layers", ctypes.POINTER(_Layer)),
    ]  # fmt: skip


class _Queries(ctypes.Structure):
    _fields_ = [
        ("num_seqs", _i64), ("token_rows", _p), ("block_tables", _p), ("context_lens", _p),
        ("max_blocks", _i32),
        ("num_chunks", _i64), ("chunks", _p), ("chunk_tables", _p), ("chunk_max_blocks", _i32),
    ]  # fmt: skip


class _Step(ctypes.Structure):
    _fields_ = [
        ("rows", _i64), ("choice_rows", _i64), ("positions", _p), ("slots", _p),
        ("block_size", _i32), ("cache_kind", _i32),
        ("kv_caches", _p), ("layer_bytes", _i64), ("v_bytes", _i64),
        ("queries", _Queries), ("num_out", _i64), ("out_rows", _p), ("last_queries", _Queries),
    ]  # fmt: skip


def stack_runs(linear: Linear) -> bool:
    """Whether ``linear`` runs our own kernels at every row count: 4-bit (`Q4Weight`) up
    to its crossover and packed int8 (`PackedInt8Weight`) above, or one of them alone."""
    if linear.int8 is not None:
        return isinstance(linear.int8, PackedInt8Weight) and (
            linear.int4 is None or isinstance(linear.int4, Q4Weight)
        )
    return isinstance(linear.int4, Q4Weight)


def layer_stack_of(model: DecoderForCausalLM, kernels: NativeKernels) -> LayerStack | None:
    """The model's `LayerStack`; None where some projection runs a torch kernel at some
    row count or the norms differ in epsilon (the C stack takes one, the final norm's)."""
    norms = [getattr(layer, name) for layer in model.layers for name in _NORMS]
    if any(norm.eps != model.norm.eps for norm in norms):
        return None
    projections = [getattr(layer, name) for layer in model.layers for name in _PROJECTIONS]
    return LayerStack(model, kernels) if all(map(stack_runs, projections)) else None


class LayerStack:
    """A model's weights as ``layer_stack.c`` takes them (pointers into the model's own
    tensors, which it keeps alive), and the steps it runs: decodes and native prefill
    chunks, of any row count."""

    def __init__(self, model: DecoderForCausalLM, kernels: NativeKernels) -> None:
        config = model.config
        layers = list(model.layers)
        shared = [model.norm.weight, model.rotary.cos, model.rotary.sin]
        self._tensors = list(shared)  # kept alive: the structures point into them
        self._layers = (_Layer * len(layers))(*(self._layer(layer) for layer in layers))
        compact = fused_forward.products_dtype(kernels) is not None
        self._stack = _Stack(
            len(layers), config.hidden_size, config.num_heads, config.num_kv_heads,
            config.head_dim, config.intermediate_size, int(compact),
            model.norm.eps, config.head_dim**-0.5,
            *map(_pointer, shared), self._layers,
        )  # fmt: skip
        self._call = kernels.lib.layer_stack

    def _layer(self, module: torch.nn.Module) -> _Layer:
        layer = cast("DecoderLayer", module)
        norms = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        bias = layer.qkv_proj.bias
        self._tensors += [*norms] + ([bias] if bias is not None else [])
        projections = [self._projection(getattr(layer, name)) for name in _PROJECTIONS]
        return _Layer(*map(_pointer, norms), _pointer(bias), *projections)

    def _projection(self, linear: Linear) -> _Projection:
        q4 = linear.int4.packed if isinstance(linear.int4, Q4Weight) else None
        int8 = linear.int8 if isinstance(linear.int8, PackedInt8Weight) else None
        i8 = [int8.packed, int8.comp, int8.scale] if int8 is not None else [None] * 3
        self._tensors += [t for t in (q4, *i8) if t is not None]
        max_rows = linear.int4_max_rows if int8 is not None else sys.maxsize
        return _Projection(_pointer(q4), *map(_pointer, i8), max_rows)

    def use_products(self, dtype: torch.dtype | None) -> None:
        """The gate/up product's dtype from now on: None (int32 sums) or bf16, as
        `fused_forward.products_dtype` (set at load; a benchmark comparing the two sets
        both)."""
        self._stack.compact = int(dtype is not None)

    def runs(self, rows: int, metadata: AttentionMetadata) -> bool:
        """Whether a step of ``rows`` rows (the kernels' row count) is one this runs: every
        row a decode query or in a chunk for the native prefill kernel (none left to SDPA)."""
        decode, prefill = metadata.decode, metadata.prefill
        covered = (0 if decode is None else decode.token_rows.shape[0]) + (
            0 if prefill is None else int(prefill.chunks[:, 2].sum())
        )
        return rows > 0 and not metadata.groups and covered == metadata.slot_mapping.shape[0]

    def run(
        self,
        residual: torch.Tensor,  # [T, hidden] float32 embeddings, updated in place
        positions: torch.Tensor,  # [T] int64
        kv_caches: torch.Tensor,  # [num_layers, 2, num_slots, kv_heads, width] (`kv_layout`)
        metadata: AttentionMetadata,
        rows: torch.Tensor | None = None,  # [R] int64: the rows wanted (None: all)
    ) -> torch.Tensor:
        """The final-normed hidden states ``[R, hidden]`` of ``rows`` (``[T, hidden]``
        without), as `fused_forward` computes them. The last layer computes attention and
        the MLP for those rows alone (every row's keys and values still go to the cache):
        a 512-token prompt samples one row."""
        decode, prefill = metadata.decode, metadata.prefill
        batch = decode if decode is not None else prefill
        assert batch is not None  # `runs`: a step has decodes, chunks or both
        total = residual.shape[0]
        if rows is not None:
            rows = rows.to(torch.int64).contiguous()
        if rows is not None and rows.shape[0] >= total:  # every row (prompt logprobs): all
            return self.run(residual, positions, kv_caches, metadata)[rows]
        queries = [_decode_tensors(decode), _chunk_tensors(prefill)]
        last = [*_out_queries(rows, decode, prefill)] if rows is not None else queries
        tensors = [positions, metadata.slot_mapping, kv_caches, residual]
        tensors += [t for group in (*queries, *last) for t in group]
        if rows is not None:
            tensors.append(rows)
        if any(not t.is_contiguous() for t in tensors) or residual.dtype != torch.float32:
            raise ValueError("layer_stack needs contiguous CPU tensors, float32 rows")
        size = kv_caches.element_size()
        step = _Step(
            total, kernel_rows(total), positions.data_ptr(), metadata.slot_mapping.data_ptr(),
            batch.block_size, cache_kind(kv_caches[0]),
            kv_caches.data_ptr(), kv_caches.stride(0) * size, kv_caches.stride(1) * size,
            _queries(*queries), -1 if rows is None else rows.shape[0],
            None if rows is None else rows.data_ptr(), _queries(*last),
        )  # fmt: skip
        hidden = torch.empty(total if rows is None else rows.shape[0], residual.shape[1])
        status = self._call(
            ctypes.addressof(self._stack), ctypes.addressof(step), residual.data_ptr(),
            hidden.data_ptr(),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"layer_stack failed ({status}): head layout or memory")
        return hidden


def _queries(seqs: tuple[torch.Tensor, ...], chunks: tuple[torch.Tensor, ...]) -> _Queries:
    """A `_Queries` over decode tensors (token_rows, block_tables, context_lens) and chunk
    tensors (chunks, tables); the tensors must outlive the call."""
    token_rows, tables, lengths = seqs
    chunk_rows, chunk_tables = chunks
    return _Queries(
        token_rows.shape[0], token_rows.data_ptr(), tables.data_ptr(), lengths.data_ptr(),
        tables.shape[1], chunk_rows.shape[0], chunk_rows.data_ptr(), chunk_tables.data_ptr(),
        chunk_tables.shape[1],
    )  # fmt: skip


def _out_queries(
    rows: torch.Tensor, decode: DecodeBatch | None, prefill: PrefillBatch | None
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The queries of ``rows`` alone: their decodes, and each row of a chunk as a chunk of
    one row at its position over the chunk's blocks."""
    token_rows = decode.token_rows if decode is not None else _NO_ROWS
    is_decode = (rows[:, None] == token_rows[None, :]).any(dim=1)
    picked = rows[is_decode]
    if decode is not None and picked.shape[0] > 0:
        index = (picked[:, None] == token_rows[None, :]).int().argmax(dim=1)
        seqs = (picked.contiguous(), decode.block_tables[index].contiguous(),
                decode.context_lens[index].contiguous())  # fmt: skip
    else:
        seqs = (_NO_ROWS, _NO_TABLE, _NO_LENGTHS)
    in_chunks = rows[~is_decode]
    if prefill is None or in_chunks.shape[0] == 0:
        return seqs, (_NO_CHUNKS, _NO_TABLE)
    first, count = prefill.chunks[:, 0], prefill.chunks[:, 2]
    inside = (in_chunks[:, None] >= first[None, :]) & (
        in_chunks[:, None] < (first + count)[None, :]
    )
    if not bool(inside.any(dim=1).all()):
        raise ValueError("a wanted row is neither a decode nor in a prefill chunk")
    which = inside.int().argmax(dim=1)
    positions = prefill.chunks[which, 1] + (in_chunks - first[which])
    chunks = torch.stack([in_chunks, positions, torch.ones_like(in_chunks)], dim=1).contiguous()
    return seqs, (chunks, prefill.block_tables[which].contiguous())


_NO_ROWS = torch.zeros(0, dtype=torch.int64)
_NO_TABLE = torch.zeros(0, 1, dtype=torch.int32)
_NO_LENGTHS = torch.zeros(0, dtype=torch.int32)
_NO_CHUNKS = torch.zeros(0, 3, dtype=torch.int64)


def _decode_tensors(decode: DecodeBatch | None) -> tuple[torch.Tensor, ...]:
    """token_rows, block_tables, context_lens (empty without decodes)."""
    if decode is None:
        return _NO_ROWS, _NO_TABLE, _NO_LENGTHS
    return decode.token_rows, decode.block_tables, decode.context_lens


def _chunk_tensors(prefill: PrefillBatch | None) -> tuple[torch.Tensor, torch.Tensor]:
    """chunks, block_tables (empty without prefill chunks)."""
    if prefill is None:
        return _NO_CHUNKS, _NO_TABLE
    return prefill.chunks, prefill.block_tables


_POINTER_DTYPES = (torch.float32, torch.uint8, torch.int8, torch.int32)
_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")


def _pointer(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    if not tensor.is_contiguous() or tensor.dtype not in _POINTER_DTYPES:
        raise ValueError("layer_stack takes contiguous float32 or packed tensors")
    return tensor.data_ptr()
