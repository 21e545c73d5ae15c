"""The shape of a decoder-only transformer, read from GGUF metadata or config.json."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inferline.core.errors import ModelLoadError
from inferline.models import kv_layout


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Llama-family decoder (Llama, Qwen2).

    Attributes:
        architecture: registry name of the architecture (``"llama"``, ``"qwen2"``).
        attention_bias: q/k/v projections carry biases (Qwen2 does, Llama does not).
        max_position_embeddings: the context window in tokens.
    """

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    name: str = ""

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ModelLoadError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2 != 0:
            raise ModelLoadError(f"head_dim must be even for RoPE, got {self.head_dim}")

    def kv_bytes_per_token(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of K and V one token takes over all layers in a cache of ``dtype``
        (an int8 cache's rows carry their scales: `kv_layout`)."""
        width = kv_layout.row_width(self.head_dim, dtype)
        return self.num_layers * 2 * self.num_kv_heads * width * dtype.itemsize

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each decoder layer's fused projection."""
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        return {
            "qkv_proj": (self.hidden_size, q_size + 2 * kv_size),
            "o_proj": (q_size, self.hidden_size),
            "gate_up_proj": (self.hidden_size, 2 * self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }
