"""The layer stack of a decode step in one native call (``native/decode_stack.c``).

`fused_forward` calls ~9 kernels per layer from Python; for a step that runs the 4-bit
kernels end to end (every row a single-token query, no more rows than the smallest
int4/W8A8 crossover) `DecodeStack` makes the same calls from C, with the same results,
without ~2 ms of per-call overhead a step (SmolLM2, 30 layers).
"""

from __future__ import annotations

import ctypes
import sys
from typing import TYPE_CHECKING, cast

import torch

from inferline.models.attention import AttentionMetadata
from inferline.models.kv_layout import cache_kind
from inferline.models.native import NativeKernels, Q4Weight

if TYPE_CHECKING:
    from inferline.models.llama import DecoderForCausalLM, DecoderLayer, Linear

_p, _i32, _i64, _f32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float


class _Layer(ctypes.Structure):
    _fields_ = [(name, _p) for name in (
        "input_norm", "post_attention_norm", "qkv_bias", "qkv", "o", "gate_up", "down",
    )]  # fmt: skip


class _Stack(ctypes.Structure):
    _fields_ = [
        *[(name, _i32) for name in (
            "num_layers", "hidden", "heads", "kv_heads", "head_dim", "intermediate",
        )],
        ("eps", _f32), ("attention_scale", _f32),
        ("final_norm", _p), ("cos_table", _p), ("sin_table", _p),
        ("layers", ctypes.POINTER(_Layer)),
    ]  # fmt: skip


class _Step(ctypes.Structure):
    _fields_ = [
        ("rows", _i64), ("num_seqs", _i64),
        ("positions", _p), ("slots", _p), ("token_rows", _p),
        ("block_tables", _p), ("context_lens", _p),
        ("max_blocks", _i32), ("block_size", _i32), ("cache_kind", _i32),
        ("kv_caches", _p), ("layer_bytes", _i64), ("v_bytes", _i64),
    ]  # fmt: skip


def q4_row_limit(linear: Linear) -> int:
    """The most rows for which ``linear`` runs our 4-bit kernel (0: never)."""
    if not isinstance(linear.int4, Q4Weight):
        return 0
    return linear.int4_max_rows if linear.int8 is not None else sys.maxsize


def decode_stack_of(model: DecoderForCausalLM, kernels: NativeKernels) -> DecodeStack | None:
    """The model's `DecodeStack`; None where some projection never runs our 4-bit kernel or
    the norms differ in epsilon (the C stack takes one, the final norm's)."""
    norms = [getattr(layer, name) for layer in model.layers for name in _NORMS]
    if any(norm.eps != model.norm.eps for norm in norms):
        return None
    projections = [getattr(layer, name) for layer in model.layers for name in _PROJECTIONS]
    max_rows = min(q4_row_limit(linear) for linear in projections)
    return DecodeStack(model, kernels, max_rows) if max_rows > 0 else None


class DecodeStack:
    """A model's weights as ``decode_stack.c`` takes them (pointers into the model's own
    tensors, which it keeps alive), and the steps it runs: decodes of up to ``max_rows``
    rows (the smallest int4/W8A8 crossover of its projections)."""

    def __init__(self, model: DecoderForCausalLM, kernels: NativeKernels, max_rows: int) -> None:
        config = model.config
        layers = list(model.layers)
        self.max_rows = max_rows
        shared = [model.norm.weight, model.rotary.cos, model.rotary.sin]
        self._tensors = list(shared)  # kept alive: the structures point into them
        self._layers = (_Layer * len(layers))(*(self._layer(layer) for layer in layers))
        self._stack = _Stack(
            len(layers), config.hidden_size, config.num_heads, config.num_kv_heads,
            config.head_dim, config.intermediate_size, model.norm.eps, config.head_dim**-0.5,
            *map(_pointer, shared), self._layers,
        )  # fmt: skip
        self._call = kernels.lib.decode_stack

    def _layer(self, module: torch.nn.Module) -> _Layer:
        layer = cast("DecoderLayer", module)
        norms = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        bias = layer.qkv_proj.bias
        packed = [getattr(layer, name).int4.packed for name in _PROJECTIONS]
        self._tensors += [*norms, *packed] + ([bias] if bias is not None else [])
        return _Layer(*map(_pointer, norms), _pointer(bias), *map(_pointer, packed))

    def runs(self, rows: int, metadata: AttentionMetadata) -> bool:
        """Whether a step of ``rows`` rows (the kernels' row count) is one this runs."""
        decode = metadata.decode
        return (
            0 < rows <= self.max_rows
            and metadata.prefill is None
            and not metadata.groups
            and decode is not None
            and decode.token_rows.shape[0] == metadata.slot_mapping.shape[0]
        )

    def run(
        self,
        residual: torch.Tensor,  # [T, hidden] float32 embeddings, updated in place
        positions: torch.Tensor,  # [T] int64
        kv_caches: torch.Tensor,  # [num_layers, 2, num_slots, kv_heads, width] (`kv_layout`)
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """The final-normed hidden states ``[T, hidden]``, as `fused_forward` computes them."""
        decode = metadata.decode
        assert decode is not None
        tensors = [positions, metadata.slot_mapping, decode.token_rows, decode.block_tables,
                   decode.context_lens, kv_caches, residual]  # fmt: skip
        if any(not t.is_contiguous() for t in tensors) or residual.dtype != torch.float32:
            raise ValueError("decode_stack needs contiguous CPU tensors, float32 rows")
        size = kv_caches.element_size()
        step = _Step(
            residual.shape[0], decode.token_rows.shape[0], *(t.data_ptr() for t in tensors[:5]),
            decode.block_tables.shape[1], decode.block_size, cache_kind(kv_caches[0]),
            kv_caches.data_ptr(), kv_caches.stride(0) * size, kv_caches.stride(1) * size,
        )  # fmt: skip
        hidden = torch.empty_like(residual)
        status = self._call(
            ctypes.addressof(self._stack), ctypes.addressof(step), residual.data_ptr(),
            hidden.data_ptr(),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"decode_stack failed ({status}): head layout or memory")
        return hidden


_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
_NORMS = ("input_layernorm", "post_attention_layernorm")


def _pointer(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    if not tensor.is_contiguous() or tensor.dtype not in (torch.float32, torch.uint8):
        raise ValueError("decode_stack takes contiguous float32 or packed tensors")
    return tensor.data_ptr()
