"""Keys balanced per channel at load, so that an int8 KV cache can hold Qwen2.5's.

An int8 cache row has one scale, max|row| / 127 (after a Hadamard rotation: `kv_layout`).
Qwen2.5's key projections have a bias, and a few key channels carry values many times
the rest: their rows' scales are set by those channels, and every other channel is
rounded coarsely. Measured (fp32 weights, torch path, a float cache with only the keys
rounded through int8, 5 windows of 512 tokens against no rounding): mean KL of the
next-token distribution 0.0134, top-1 agreement 0.941; the values rounded alone: KL
0.0000. So at load each key channel c is divided by a factor s_c and the matching query
channel of every head of its group multiplied by it: q.k is unchanged. s_c is the fourth
root of the channel's expected square, ``sum_j W[c, j]^2 + b[c]^2`` (unit inputs: the
projection reads RMS-normalised rows), the same for the two channels RoPE turns together
(c and c + head_dim / 2, so the rotation commutes with it) and rounded to a power of two:
every product, quantized weight and float cache is then the same as without it, bit for
bit, and only the int8 cache's roundings change. Qwen2.5-Coder-0.5B with keys rounded:
KL 0.0134 -> 0.0012, top-1 0.941 -> 0.977 (unrounded factors 0.0010; from the window's
own keys 0.0009); SmolLM2 (no bias): 0.0002 either way.
"""

from __future__ import annotations

import torch

from inferline.core.errors import ModelLoadError


def key_factors(
    key_rows: torch.Tensor, key_bias: torch.Tensor | None, kv_heads: int
) -> torch.Tensor:
    """``[kv_heads, head_dim]`` powers of two: each key channel's share of the balance
    (see the module doc), from the key rows ``[kv_heads * head_dim, hidden]`` of the
    projection and their bias."""
    power = key_rows.double().pow(2).sum(-1)
    if key_bias is not None:
        power = power + key_bias.double().pow(2)
    pairs = power.view(kv_heads, 2, -1).mean(1)  # channels c and c + head_dim / 2
    exponents = pairs.clamp(min=1e-30).log2() / 4  # the fourth root of the square
    exponents = torch.round(exponents - exponents.mean(-1, keepdim=True))
    return torch.exp2(torch.cat([exponents, exponents], -1)).float()


def balance_keys(
    weight: torch.Tensor, bias: torch.Tensor | None, heads: int, kv_heads: int, head_dim: int
) -> None:
    """Divides the key rows of a fused q/k/v projection (``weight [(heads + 2 kv_heads)
    head_dim, hidden]``, ``bias``) by `key_factors` and multiplies each head's query rows
    by its kv head's, in place."""
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    keys = slice(q_size, q_size + kv_size)
    factors = key_factors(weight[keys], None if bias is None else bias[keys], kv_heads)
    per_query = factors.repeat_interleave(heads // kv_heads, dim=0).reshape(-1)
    weight[:q_size] *= per_query[:, None]
    weight[keys] /= factors.reshape(-1)[:, None]
    if bias is not None:
        bias[:q_size] *= per_query
        bias[keys] /= factors.reshape(-1)


class KeyBalancer:
    """Balances each layer's q/k/v projection as `assemble` receives it: the weight waits
    for its bias where the model has one (checkpoints give either first)."""

    def __init__(self, heads: int, kv_heads: int, head_dim: int, has_bias: bool) -> None:
        self.shape = (heads, kv_heads, head_dim)
        self.has_bias = has_bias
        self.weights: dict[str, torch.Tensor] = {}  # by module name, waiting for a bias
        self.biases: dict[str, torch.Tensor] = {}  # arrived before their weight

    def arrive(
        self, module: str, attr: str, tensor: torch.Tensor
    ) -> list[tuple[str, torch.Tensor]]:
        """The ``(attr, tensor)`` pairs of ``module`` to assign now: anything but a q/k/v
        projection's weight and bias as it came; those balanced (a bias that came first is
        balanced in place when its weight comes), a weight with a bias to come held back."""
        if not module.endswith("qkv_proj") or attr not in ("weight", "bias"):
            return [(attr, tensor)]
        if attr == "weight":
            if self.has_bias and module not in self.biases:
                self.weights[module] = tensor.clone()  # the tensor may be a reused buffer
                return []
            balance_keys(tensor, self.biases.pop(module, None), *self.shape)
            return [("weight", tensor)]
        weight = self.weights.pop(module, None)
        if weight is None:
            self.biases[module] = tensor
            return [("bias", tensor)]
        balance_keys(weight, tensor, *self.shape)
        return [("bias", tensor), ("weight", weight)]

    def finish(self) -> None:
        """Raises `ModelLoadError` for q/k/v weights whose bias never came."""
        if self.weights:
            raise ModelLoadError(f"q/k/v weights without their biases: {sorted(self.weights)[:5]}")
