"""``logit_bias`` and ``min_tokens`` in the sampler, on synthetic logits: alone, batched
with rows that use neither, with seeds, and under a grammar's mask."""

from __future__ import annotations

from typing import Any

import torch

from inferline.core import SamplingParams
from inferline.engine.sampler import Sampler, SamplingRow
from tests.engine.test_sampler import LOGITS, row

EOS = 7
STOP = 6


class OnlyEos:
    """A grammar state that allows only EOS (a complete grammar), as `apply_masks` sees it."""

    def __init__(self) -> None:
        self.consumed: list[int] = []

    def settle(self, token_id: int, remaining: int) -> int:
        return token_id

    def consume(self, token_id: int) -> None:
        self.consumed.append(token_id)


def greedy(output: list[int] | None = None, **params: Any) -> SamplingRow:
    return row(output=output, temperature=0, **params)


def test_a_positive_bias_makes_greedy_take_that_token() -> None:
    sampler = Sampler()
    assert sampler(LOGITS.clone(), [greedy()]).token_ids == [0]
    assert sampler(LOGITS.clone(), [greedy(logit_bias={5: 100})]).token_ids == [5]
    assert sampler(LOGITS.clone(), [greedy(logit_bias={0: -100})]).token_ids == [1]
    # sampled rows too, whatever the seed
    drawn = {sampler(LOGITS.clone(), [row(s, logit_bias={4: 100})]).token_ids[0] for s in range(50)}
    assert drawn == {4}


def test_bias_applies_per_row_and_leaves_the_others_and_the_input_alone() -> None:
    logits = torch.cat([LOGITS, LOGITS, LOGITS])
    before = logits.clone()
    rows = [greedy(logit_bias={3: 100}), greedy(), greedy(logit_bias={2: 50, 1: 2.5})]
    assert Sampler()(logits, rows).token_ids == [3, 0, 2]
    assert torch.equal(logits, before)


def test_logprobs_stay_those_of_the_model() -> None:
    out = Sampler()(LOGITS.clone(), [greedy(logit_bias={5: 100}, logprobs=0)])
    expected = torch.log_softmax(LOGITS[0], dim=-1)[5]
    assert out.token_ids == [5] and abs(out.token_logprobs[0] - float(expected)) < 1e-6  # type: ignore[operator]


def test_min_tokens_masks_eos_and_stop_token_ids_until_reached() -> None:
    sampler = Sampler(eos_token_ids=[EOS])
    logits = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 5.0, 9.0]])  # EOS, then STOP lead
    assert sampler(logits.clone(), [greedy(stop_token_ids=[STOP])]).token_ids == [EOS]
    held = greedy(stop_token_ids=[STOP], min_tokens=3, output=[1, 1])
    assert sampler(logits.clone(), [held]).token_ids == [1]
    reached = greedy(stop_token_ids=[STOP], min_tokens=2, output=[1, 1])
    assert sampler(logits.clone(), [reached]).token_ids == [EOS]
    # with ignore_eos, EOS is no stop: only the stop token ids are held back
    assert sampler(logits.clone(), [greedy(min_tokens=3, ignore_eos=True)]).token_ids == [EOS]
    assert sampler(logits.clone(), [greedy(min_tokens=3)]).token_ids == [STOP]
    # a stop token id outside the vocabulary is never sampled: nothing to mask, no error
    outside = greedy(stop_token_ids=[10**6], min_tokens=3)
    assert sampler(logits.clone(), [outside]).token_ids == [STOP]


def test_min_tokens_yields_to_a_complete_grammar() -> None:
    """A grammar that allows only EOS keeps it, even below ``min_tokens``."""
    import inferline.engine.sampler as sampler_module

    def only_eos(logits: torch.Tensor, constraints: list[Any]) -> None:
        for i, c in enumerate(constraints):
            if c is not None:
                logits[i, :EOS] = float("-inf")

    original = sampler_module.apply_masks
    sampler_module.apply_masks = only_eos
    try:
        grammar = OnlyEos()
        constrained = SamplingRow(
            SamplingParams(temperature=0, min_tokens=5),
            [1],
            [],
            torch.Generator(),
            grammar,
        )
        out = Sampler(eos_token_ids=[EOS])(torch.cat([LOGITS, LOGITS]), [constrained, greedy()])
    finally:
        sampler_module.apply_masks = original
    assert out.token_ids == [EOS, 0] and grammar.consumed == [EOS]


def test_min_tokens_and_bias_together_in_a_mixed_batch() -> None:
    sampler = Sampler(eos_token_ids=[0])
    rows = [greedy(min_tokens=1), greedy(logit_bias={0: 100}), greedy(), row(3, min_tokens=2)]
    out = sampler(torch.cat([LOGITS] * 4), rows)
    assert out.token_ids[:3] == [1, 0, 0]
    assert out.token_ids[3] != 0  # EOS (the argmax) is never drawn below min_tokens
