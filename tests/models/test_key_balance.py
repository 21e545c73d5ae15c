"""Keys balanced at load (`models.key_balance`): q.k unchanged bit for bit, either arrival
order of a q/k/v weight and its bias, and a weight whose bias never comes refused."""

from __future__ import annotations

import pytest
import torch

from inferline.core.errors import ModelLoadError
from inferline.models.key_balance import KeyBalancer, balance_keys, key_factors

HEADS, KV_HEADS, HEAD_DIM, HIDDEN = 6, 2, 8, 16
ROWS = (HEADS + 2 * KV_HEADS) * HEAD_DIM


def qkv(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(ROWS, HIDDEN, generator=gen)
    bias = torch.randn(ROWS, generator=gen)
    weight[HEADS * HEAD_DIM + 3] *= 40  # one loud key channel (and its bias)
    bias[HEADS * HEAD_DIM + 3] = 90.0
    return weight, bias


def scores(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each query head's q.k against its kv head's key, per input row."""
    out = x @ weight.T + bias
    q = out[:, : HEADS * HEAD_DIM].view(-1, HEADS, HEAD_DIM)
    k = out[:, HEADS * HEAD_DIM : (HEADS + KV_HEADS) * HEAD_DIM].view(-1, KV_HEADS, HEAD_DIM)
    k = k.repeat_interleave(HEADS // KV_HEADS, dim=1)
    return (q * k).sum(-1)


def test_factors_are_powers_of_two_shared_by_rope_pairs_and_tame_the_loud_channel() -> None:
    weight, bias = qkv(torch.Generator().manual_seed(0))
    keys = slice(HEADS * HEAD_DIM, (HEADS + KV_HEADS) * HEAD_DIM)
    factors = key_factors(weight[keys], bias[keys], KV_HEADS)
    assert factors.shape == (KV_HEADS, HEAD_DIM)
    assert torch.equal(factors.log2(), factors.log2().round())
    assert torch.equal(factors[:, : HEAD_DIM // 2], factors[:, HEAD_DIM // 2 :])
    assert factors[0, 3] == factors[0].max() and factors[0, 3] >= 4


def test_balancing_keeps_every_score_exactly() -> None:
    gen = torch.Generator().manual_seed(1)
    weight, bias = qkv(gen)
    x = torch.randn(5, HIDDEN, generator=gen)
    balanced_weight, balanced_bias = weight.clone(), bias.clone()
    balance_keys(balanced_weight, balanced_bias, HEADS, KV_HEADS, HEAD_DIM)
    assert not torch.equal(balanced_weight, weight)
    # powers of two: every product and sum is the same float32, scaled exactly
    assert torch.equal(scores(balanced_weight, balanced_bias, x), scores(weight, bias, x))
    keys = slice(HEADS * HEAD_DIM, (HEADS + KV_HEADS) * HEAD_DIM)
    assert (balanced_bias[keys].abs().max() < bias[keys].abs().max() / 2).item()


@pytest.mark.parametrize("bias_first", [False, True])
def test_either_arrival_order_gives_the_same_balanced_pair(bias_first: bool) -> None:
    weight, bias = qkv(torch.Generator().manual_seed(2))
    want_weight, want_bias = weight.clone(), bias.clone()
    balance_keys(want_weight, want_bias, HEADS, KV_HEADS, HEAD_DIM)
    balancer = KeyBalancer(HEADS, KV_HEADS, HEAD_DIM, has_bias=True)
    name = "layers.0.qkv_proj"
    order = [("bias", bias.clone()), ("weight", weight.clone())]
    got: dict[str, torch.Tensor] = {}
    for attr, tensor in order if bias_first else order[::-1]:
        got.update(balancer.arrive(name, attr, tensor))
    balancer.finish()
    assert torch.equal(got["weight"], want_weight) and torch.equal(got["bias"], want_bias)
    assert balancer.arrive("layers.0.o_proj", "weight", weight) == [("weight", weight)]


def test_a_weight_whose_bias_never_comes_is_refused() -> None:
    balancer = KeyBalancer(HEADS, KV_HEADS, HEAD_DIM, has_bias=True)
    weight, _ = qkv(torch.Generator().manual_seed(3))
    assert balancer.arrive("layers.4.qkv_proj", "weight", weight) == []
    with pytest.raises(ModelLoadError, match="layers.4.qkv_proj"):
        balancer.finish()
