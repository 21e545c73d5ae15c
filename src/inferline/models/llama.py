"""Llama-family decoder (Llama, Qwen2) over a flattened batch of tokens and a paged KV cache.

Shapes use ``T`` = tokens scheduled this step (all requests, prefill and decode together)
and ``S`` = tokens whose next-token logits are needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inferline.models.attention import AttentionMetadata, paged_attention
from inferline.models.block_rows import BlockRows
from inferline.models.config import ModelConfig
from inferline.models.fused_forward import fused_forward
from inferline.models.head import ApproximateThenExactHead
from inferline.models.layer_stack import LayerStack, layer_stack_of
from inferline.models.native import NativeKernels, PackedInt8Weight, Q4Weight
from inferline.models.quant import (
    Int4Weight,
    Int8Rows,
    Int32Product,
    W8A8Weight,
    WeightFormat,
    int4_linear,
    int4_matmul,
    int8_linear,
    int8_matmul,
    quantize_int4,
    quantize_int8,
    supports_int4,
)
from inferline.models.row_choice import kernel_rows


class Linear(nn.Module):
    """``y = x W^T + b`` with uninitialised storage: weights always come from a checkpoint.

    After `quantize`, the float weight is dropped and the layer runs int8 (W8A8) or 4-bit
    weight kernels (torch's int4, or our own `Q4Weight` with the native kernels; see
    `inferline.models.quant`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.int8: W8A8Weight | None = None
        self.int4: Int4Weight | Q4Weight | None = None
        self.int4_max_rows = 0  # with both copies: int4 up to this many rows, int8 above

    def quantize(
        self, weight_format: WeightFormat, int4_max_rows: int = 0, q4: NativeKernels | None = None
    ) -> None:
        """Replaces the float weight by 4-bit and/or int8 copies; ``fp32`` keeps it.

        ``mixed`` keeps both: 4-bit for up to ``int4_max_rows`` rows, int8 W8A8 above, where
        it runs faster (the crossover is measured at load: `probe_int4_max_rows`); with a
        crossover of 0 (4-bit slower even at one row) it keeps the int8 copy alone. The
        4-bit copy is ours (`Q4Weight`) with ``q4`` kernels, else torch's int4; the int8
        copy is packed for them (`NativeKernels.pack_int8`) where they have an int8 kernel.
        """
        if weight_format == "fp32":
            return
        weight = self.weight.data
        self.int4_max_rows = int4_max_rows
        wants_int4 = weight_format == "int4" or (weight_format == "mixed" and int4_max_rows > 0)
        if wants_int4 and supports_int4(weight.shape[1]):
            self.int4 = q4.pack_q4(weight) if q4 is not None else quantize_int4(weight)
        if weight_format in ("int8", "mixed") or self.int4 is None:
            self.int8 = quantize_int8(weight)
            if q4 is not None:
                self.int8 = q4.pack_int8(self.int8)
        self.weight = nn.Parameter(torch.empty(0), requires_grad=False)  # frees the floats

    def _uses_int4(self, rows: int) -> bool:
        rows = kernel_rows(rows)
        return self.int4 is not None and (self.int8 is None or rows <= self.int4_max_rows)

    def input_dtype(self, rows: int) -> torch.dtype:
        """What `matmul` takes for ``rows`` rows: bf16 (torch's int4), int8 (`Int8Rows`) or
        float32 (`Q4Weight`, or float weights)."""
        if self._uses_int4(rows):
            return torch.float32 if isinstance(self.int4, Q4Weight) else torch.bfloat16
        return torch.int8 if self.int8 is not None else torch.float32

    def matmul(
        self, x: torch.Tensor | Int8Rows, scaled: torch.dtype | None = None
    ) -> torch.Tensor | Int32Product:
        """``x W^T`` without the bias, ``x`` as `input_dtype` says; the kernel's own output
        (bf16 for torch's int4, `Int32Product` for int8 rows, float32 otherwise). With
        ``scaled``, a packed int8 weight's product comes dequantized as that dtype in the
        same pass (bf16: half the bytes of the int32 sums for the next kernel to read)."""
        if isinstance(x, Int8Rows):
            assert self.int8 is not None
            if scaled is not None and isinstance(self.int8, PackedInt8Weight):
                return self.int8.scaled(x, scaled)
            return int8_matmul(x, self.int8)
        if self._uses_int4(x.shape[0]):
            assert self.int4 is not None
            if isinstance(self.int4, Q4Weight):
                return self.int4.matmul(x)
            return int4_matmul(x, self.int4)
        if self.int8 is not None:
            return int8_linear(x, self.int8)
        return F.linear(x, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.int4, Q4Weight) and self._uses_int4(x.shape[0]):
            y = self.int4.matmul(x.float())
        elif self._uses_int4(x.shape[0]):
            assert isinstance(self.int4, Int4Weight)
            y = int4_linear(x, self.int4)
        elif self.int8 is not None:
            y = int8_linear(x, self.int8)
        else:
            return F.linear(x, self.weight, self.bias)
        return y if self.bias is None else y + self.bias


class Embedding(nn.Module):
    """Token embedding table with uninitialised storage (filled by the loader); with a
    compact ``table`` (installed by `inferline.models.assemble`) the rows are decoded from it."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim), requires_grad=False)
        self.table: BlockRows | None = None

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.table is not None:
            return self.table.rows(token_ids)
        return F.embedding(token_ids, self.weight)


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 as in the reference."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused kernel


class RotaryEmbedding(nn.Module):
    """RoPE in the ``rotate_half`` convention, with a precomputed cos/sin table."""

    cos: torch.Tensor  # [max_positions, head_dim]
    sin: torch.Tensor

    def __init__(self, head_dim: int, theta: float, max_positions: int) -> None:
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float()
        inv_freq = 1.0 / (theta ** (exponents / head_dim))
        positions = torch.arange(max_positions, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [max_positions, head_dim]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[T, 1, head_dim]`` of ``positions`` ``[T]`` (once per forward pass)."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates ``x`` ``[T, heads, head_dim]`` (q and k heads together) by cos/sin ``[T, 1, D]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class DecoderLayer(nn.Module):
    """Pre-norm attention + gated MLP, with fused qkv and gate/up projections."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        q_size, kv_size = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
        self.qk_size = q_size + kv_size
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.qkv_proj = Linear(config.hidden_size, q_size + 2 * kv_size, config.attention_bias)
        self.o_proj = Linear(q_size, config.hidden_size)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size)

    def forward(
        self,
        hidden: torch.Tensor,  # [T, hidden]
        rope: tuple[torch.Tensor, torch.Tensor],  # cos, sin [T, 1, head_dim]
        kv_cache: torch.Tensor,  # [2, num_slots, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(self.input_layernorm(hidden))
        # q and k heads rotate together: one RoPE call per layer
        qk = apply_rotary(
            qkv[:, : self.qk_size].view(-1, self.num_heads + self.num_kv_heads, self.head_dim),
            *rope,
        )
        q, k = qk[:, : self.num_heads], qk[:, self.num_heads :]
        v = qkv[:, self.qk_size :].view(-1, self.num_kv_heads, self.head_dim)
        hidden = hidden + self.o_proj(paged_attention(q, k, v, kv_cache, metadata))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(hidden)).chunk(2, dim=-1)
        return hidden + self.down_proj(F.silu(gate) * up)


class DecoderForCausalLM(nn.Module):
    """The whole model: embeddings, decoder layers, final norm and LM head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.rope_theta, config.max_position_embeddings
        )
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        self.fast_head: ApproximateThenExactHead | None = None  # set by `assemble`
        self.head_table: BlockRows | None = None  # set by `assemble` (GGUF blocks)
        self.int4_max_rows = 0  # ``mixed``: the MLP's measured int4/W8A8 crossover, else 0
        # fused C kernels for the layers' row-wise work (set by `use_native`); None: torch ops
        self.native: NativeKernels | None = None
        self.layer_stack: LayerStack | None = None  # a step's layers in one call (`use_native`)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: torch.Tensor,  # [num_layers, 2, num_slots, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        logits_indices: torch.Tensor,  # [S] rows of the batch whose logits are needed
    ) -> torch.Tensor:
        """Returns float32 logits ``[S, vocab_size]``."""
        hidden = self.hidden_states(input_ids, positions, kv_caches, metadata, logits_indices)
        return self.compute_logits(hidden)

    def hidden_states(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: torch.Tensor,  # [num_layers, 2, num_slots, num_kv_heads, head_dim]
        metadata: AttentionMetadata,
        rows: torch.Tensor,  # [R] rows of the batch whose hidden states are needed
    ) -> torch.Tensor:
        """Runs the layer stack (writing the K/V cache); returns the final-normed hidden
        states ``[R, hidden]`` of ``rows``, for `compute_logits` or `exact_logits`."""
        if self.native is not None:
            return fused_forward(self, self.native, input_ids, positions, kv_caches, metadata, rows)
        hidden = self.embed_tokens(input_ids)
        rope = self.rotary(positions)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            hidden = layer(hidden, rope, kv_cache, metadata)
        return self.norm(hidden[rows])

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The sampling head: float32 logits ``[R, vocab_size]``, exact for each row's best
        candidates (`ApproximateThenExactHead` on quantized weights)."""
        if self.fast_head is not None:
            return self.fast_head(hidden)
        return self.exact_logits(hidden)

    def exact_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[R, vocab_size]`` from the fp32 head for every token (prompt
        logprobs score tokens far from the top, where the fast head approximates)."""
        if self.head_table is not None:  # decoded 8192 rows at a time: the same floats
            table, hidden = self.head_table, hidden.float()
            chunks = torch.arange(table.shape[0]).split(8192)
            return torch.cat([hidden @ table.rows(ids).t() for ids in chunks], dim=-1)
        return self.lm_head(hidden.float()).float()

    def use_native(self, kernels: NativeKernels | None) -> None:
        """Runs the layers on ``kernels`` (`fused_forward`) where the model allows it.

        The fused path adds a bias only to the qkv projection (Llama and Qwen2 have no
        other); a model with other biases keeps the torch path. Where every projection has
        our own kernels, a step's layers run as one call (`LayerStack`).
        """
        other_biases = any(
            getattr(layer, name).bias is not None
            for layer in self.layers
            for name in ("o_proj", "gate_up_proj", "down_proj")
        )
        self.native = None if other_biases else kernels
        self.layer_stack = None if self.native is None else layer_stack_of(self, self.native)

    @property
    def native_prefill(self) -> bool:
        """Whether `native` computes prefill attention for this model's head layout."""
        config = self.config
        return self.native is not None and self.native.handles_prefill(
            config.num_heads, config.num_kv_heads, config.head_dim
        )
