"""Sampler on synthetic logits: each filter and penalty, seeds, logprobs."""

from __future__ import annotations

import torch

from inferline.core import SamplingParams
from inferline.engine.sampler import Sampler, SamplingRow

VOCAB = 8
LOGITS = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0]])


def row(seed: int = 0, output: list[int] | None = None, **params) -> SamplingRow:  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    return SamplingRow(SamplingParams(**params), [5, 6], output or [], generator)


def draw(num: int, **params) -> set[int]:  # type: ignore[no-untyped-def]
    sampler = Sampler()
    seen = set()
    for seed in range(num):
        seen.add(sampler(LOGITS.clone(), [row(seed, **params)]).token_ids[0])
    return seen


def test_greedy_takes_the_argmax() -> None:
    assert Sampler()(LOGITS.clone(), [row(temperature=0)]).token_ids == [0]


def test_top_k_top_p_min_p_restrict_the_candidates() -> None:
    assert draw(200, temperature=2.0) >= {0, 1, 2, 3}  # the unfiltered case spreads out
    assert draw(200, temperature=2.0, top_k=2) == {0, 1}
    # softmax(LOGITS) ~ [.64, .23, .09, .03, ...]: the first two hold < .9, three hold > .9
    assert draw(200, temperature=1.0, top_p=0.9) == {0, 1, 2}
    assert draw(200, temperature=1.0, min_p=0.3) == {0, 1}  # p >= 0.3 * p_max


def test_same_seed_same_token_regardless_of_other_rows() -> None:
    sampler = Sampler()
    params = {"temperature": 1.5}
    alone = [sampler(LOGITS.clone(), [row(s, **params)]).token_ids[0] for s in range(20)]
    batch = torch.cat([LOGITS, LOGITS.flip(1), LOGITS])
    together = [
        sampler(batch.clone(), [row(99, **params), row(7, **params), row(s, **params)]).token_ids[2]
        for s in range(20)
    ]
    assert alone == together


def test_penalties_push_down_repeated_tokens() -> None:
    sampler = Sampler()
    assert sampler(
        LOGITS.clone(), [row(temperature=0, output=[0], frequency_penalty=2.0)]
    ).token_ids == [1]
    assert sampler(
        LOGITS.clone(), [row(temperature=0, output=[0], presence_penalty=1.5)]
    ).token_ids == [1]
    # repetition penalty divides positive logits: 4.0 / 2 = 2.0 < 3.0
    assert sampler(
        LOGITS.clone(), [row(temperature=0, output=[0], repetition_penalty=2.0)]
    ).token_ids == [1]
    # prompt tokens (5, 6) count for the repetition penalty only: negative logits multiply
    logits = torch.tensor([[-1.0, -5.0, -5.0, -5.0, -5.0, -0.5, -5.0, -5.0]])
    assert sampler(logits, [row(temperature=0, repetition_penalty=3.0)]).token_ids == [0]


def test_logprobs_are_of_the_raw_distribution() -> None:
    out = Sampler()(
        LOGITS.clone(), [row(temperature=0, logprobs=2, frequency_penalty=2.0, output=[0])]
    )
    expected = torch.log_softmax(LOGITS[0], dim=-1)
    assert out.token_ids == [1]
    assert abs(out.token_logprobs[0] - float(expected[1])) < 1e-6  # type: ignore[operator]
    assert out.top_token_ids[0] == [0, 1]
    assert out.top_logprobs[0] == torch.topk(expected, 2).values.tolist()
    assert Sampler()(LOGITS.clone(), [row(temperature=0)]).token_logprobs == [None]
