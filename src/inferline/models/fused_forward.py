"""The decoder's forward pass on the native kernels: ~9 calls per layer instead of ~45 ops.

Same math as `DecoderForCausalLM`'s torch path (checked against it in the tests); the
residual stream stays float32 and is updated in place, and activations feed each projection
in the dtype its kernel takes (bf16 for int4), so no conversion op runs between them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, cast

import torch

from inferline.models.attention import AttentionMetadata, attend_groups
from inferline.models.kv_layout import rows_rotated
from inferline.models.native import Activation, NativeKernels
from inferline.models.row_choice import kernel_rows

# The gate/up product of the int8 matmul: bf16 where it is written by the AVX-512 VNNI
# kernel (rounded once, 2^-9, before a float32 SiLU whose result is quantized to int8 rows:
# half the bytes of int32 sums to write and read back; 512-token SmolLM2 prefill 132 -> 113
# ms on an AMX Xeon before AMX stored its sums from the tiles), int32 sums where AMX runs
# (its sums go from the tiles straight to memory: 512-token prefill 2-3 % faster than bf16
# products, decode steps of 32 and 64 rows level, paired in one process). The outputs' KL
# to fp32 is the same either way (int8 KV cache: SmolLM2 0.0049 / 0.0050, Qwen2.5-Coder
# 0.0025 / 0.0025; results/2026-12-05-intel-xeon-amx/accuracy-*-stop39.json).
# INFERLINE_BF16_PRODUCTS=0 / 1 forces int32 sums / bf16. o and down stay int32: their
# products go into the residual stream. layer_stack.c does the same, from `LayerStack`'s
# flag set at load. Only torch.bfloat16 or None: the C stack knows no other.
AUTO = "auto"
COMPACT: torch.dtype | str | None = {"0": None, "1": torch.bfloat16}.get(
    os.environ.get("INFERLINE_BF16_PRODUCTS", ""), AUTO
)


def products_dtype(kernels: NativeKernels) -> torch.dtype | None:
    """The gate/up product's dtype (`COMPACT`): None for int32 sums, or bf16."""
    if COMPACT == AUTO:
        return None if kernels.amx_rows else torch.bfloat16
    return cast("torch.dtype | None", COMPACT)


if TYPE_CHECKING:
    from inferline.models.llama import DecoderForCausalLM, DecoderLayer


def fused_forward(
    model: DecoderForCausalLM,
    kernels: NativeKernels,
    input_ids: torch.Tensor,  # [T]
    positions: torch.Tensor,  # [T] int64
    kv_caches: torch.Tensor,  # [num_layers, 2, num_slots, num_kv_heads, head_dim]
    metadata: AttentionMetadata,
    rows: torch.Tensor | None = None,  # [R] the rows wanted (None: all)
) -> torch.Tensor:
    """Runs the layer stack; returns the final-normed hidden states ``[R, hidden]`` fp32 of
    ``rows`` (``[T, hidden]`` without)."""
    residual = model.embed_tokens(input_ids)  # a fresh tensor: updated in place below
    stack = model.layer_stack
    if stack is not None and stack.runs(kernel_rows(residual.shape[0]), metadata):
        # the same calls, from C (the last layer's attention and MLP for ``rows`` alone)
        return stack.run(residual, positions, kv_caches, metadata, rows)
    delta: Activation | None = None
    for layer, kv_cache in zip(model.layers, kv_caches, strict=True):
        delta = _layer(
            model,
            cast("DecoderLayer", layer),
            kernels,
            residual,
            delta,
            positions,
            kv_cache,
            metadata,
        )
    norm = model.norm
    hidden = kernels.add_rms_norm(residual, delta, norm.weight, norm.eps, torch.float32)
    assert isinstance(hidden, torch.Tensor)
    return hidden if rows is None else hidden[rows]


def _layer(
    model: DecoderForCausalLM,
    layer: DecoderLayer,
    kernels: NativeKernels,
    residual: torch.Tensor,
    delta: Activation | None,
    positions: torch.Tensor,
    kv_cache: torch.Tensor,
    metadata: AttentionMetadata,
) -> Activation:
    """Adds the previous layer's output to ``residual``; returns this layer's MLP output."""
    rows = residual.shape[0]
    norm = layer.input_layernorm
    x = kernels.add_rms_norm(
        residual, delta, norm.weight, norm.eps, layer.qkv_proj.input_dtype(rows)
    )
    shape = (layer.num_heads, layer.num_kv_heads, layer.head_dim)
    rotary = model.rotary
    q = kernels.rope_store_kv(
        layer.qkv_proj.matmul(x), layer.qkv_proj.bias, shape, positions, rotary.cos,
        rotary.sin, metadata.slot_mapping, kv_cache,
    )  # fmt: skip
    o_dtype = layer.o_proj.input_dtype(rows)
    attention = torch.empty(rows, layer.num_heads * layer.head_dim,
                            dtype=torch.float32 if o_dtype == torch.int8 else o_dtype)  # fmt: skip
    # W8A8 o over a rotated cache: the outputs stay in its basis (the kernels' rotation back
    # and quantize_rows' rotation would cancel; layer_stack.c does the same); not where
    # SDPA writes some rows
    basis = (o_dtype == torch.int8 and not metadata.groups
             and rows_rotated(kv_cache, layer.head_dim))  # fmt: skip
    decode = metadata.decode
    if decode is not None:
        kernels.decode_attention(
            q, kv_cache, decode.block_tables, decode.context_lens, decode.token_rows,
            decode.block_size, attention, basis,
        )  # fmt: skip
    prefill = metadata.prefill
    if prefill is not None and not kernels.prefill_attention(
        q, kv_cache, prefill.chunks, prefill.block_tables, prefill.block_size, attention, basis
    ):
        raise RuntimeError("prefill_attention refused a batch the runner built for it")
    # SDPA, for the prefill chunks of a head layout the kernel does not handle
    attend_groups(q, kv_cache, metadata.groups, attention)
    o_input = kernels.quantize_rows(attention, basis) if o_dtype == torch.int8 else attention
    norm = layer.post_attention_layernorm
    x = kernels.add_rms_norm(
        residual, layer.o_proj.matmul(o_input), norm.weight, norm.eps,
        layer.gate_up_proj.input_dtype(rows),
    )  # fmt: skip
    gate_up = layer.gate_up_proj.matmul(x, products_dtype(kernels))
    h = kernels.silu_mul(gate_up, layer.down_proj.input_dtype(rows))
    return layer.down_proj.matmul(h)
