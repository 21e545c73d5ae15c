"""N-gram speculative decoding: drafts, verification rules and the scheduler's bookkeeping."""

from __future__ import annotations

import pytest
import torch

from inferline.core import SamplingParams
from inferline.core.errors import InvalidParameterError
from inferline.engine.block_pool import BlockPool, hash_block
from inferline.engine.config import SchedulerConfig
from inferline.engine.request import Request
from inferline.engine.scheduler import Scheduler
from inferline.engine.scheduler_output import ModelRunnerOutput
from inferline.engine.speculative import (
    MAX_BACKOFF_STEPS,
    NgramDrafter,
    SpeculativeConfig,
    can_speculate,
    verify_greedy,
    verify_sampled,
)
from tests.conftest import run_to_completion

EOS = 0


def test_drafter_proposes_what_followed_the_latest_occurrence() -> None:
    drafter = NgramDrafter(ngram_min=2, ngram_max=3, row_cost=0.0)
    tokens = [5, 6, 7, 8, 9, 5, 6, 7, 1, 2, 5, 6, 7]
    # [5, 6, 7] occurred at 0 and 5; the latest (5) was followed by 1, 2, 5, 6
    assert drafter.propose(tokens, 4) == [1, 2, 5, 6]
    assert drafter.propose(tokens + [3], 4) == []  # [6, 7, 3] and [7, 3] never occurred
    assert drafter.propose([1, 2, 3, 4], 4) == []


def test_drafter_stops_at_the_known_tokens_and_prefers_long_matches() -> None:
    drafter = NgramDrafter(ngram_min=1, ngram_max=2, row_cost=0.0)
    assert drafter.propose([4, 9, 4], 5) == [9, 4]  # only what exists after the match
    drafter = NgramDrafter(ngram_min=1, ngram_max=2, row_cost=0.0)
    # suffix [2, 3]: its 2-gram match (at 1) wins over the later 1-gram match of [3] (at 5)
    assert drafter.propose([1, 2, 3, 8, 7, 3, 6, 2, 3], 2) == [8, 7]


def test_drafter_backs_off_after_misses_and_recovers() -> None:
    drafter = NgramDrafter(ngram_min=1, ngram_max=1, row_cost=0.0)
    tokens = [1, 2, 1]
    waits = []
    for _ in range(7):
        assert drafter.propose(tokens, 1) == [2]
        drafter.record(num_proposed=1, num_accepted=0)
        waits.append(drafter.wait_steps)
        for _ in range(drafter.wait_steps):
            assert drafter.propose(tokens, 1) == []
    assert waits == [1, 2, 4, 8, 16, MAX_BACKOFF_STEPS, MAX_BACKOFF_STEPS]
    drafter.propose(tokens, 1)
    drafter.record(num_proposed=1, num_accepted=1)
    assert drafter.wait_steps == 0 and drafter.num_misses == 0
    assert (drafter.num_proposed, drafter.num_accepted) == (8, 1)


def test_draft_length_follows_the_acceptance_estimate() -> None:
    drafter = NgramDrafter(ngram_min=1, ngram_max=2, row_cost=0.25)
    assert drafter.acceptance == pytest.approx(0.7) and drafter.draft_length(8) == 2
    for _ in range(10):  # every draft kept: the estimate climbs, so do the drafts
        drafter.record(num_proposed=4, num_accepted=4)
    assert drafter.acceptance > 0.95 and drafter.draft_length(8) == 8
    for _ in range(20):  # the first draft rejected each time
        drafter.record(num_proposed=4, num_accepted=0)
    assert drafter.acceptance < 0.1 and drafter.draft_length(8) == 1
    # 2 of 4 kept: 2 kept of 3 judged (the rejection ends the verification)
    drafter = NgramDrafter(ngram_min=1, ngram_max=2, kept_sum=0.0, judged_sum=0.0)
    drafter.record(num_proposed=4, num_accepted=2)
    assert drafter.acceptance == pytest.approx(2 / 3)


def test_config_validation() -> None:
    assert not SpeculativeConfig(method="off").enabled
    for bad in ({"method": "eagle"}, {"num_tokens": 0}, {"ngram_min": 3, "ngram_max": 2}):
        with pytest.raises(InvalidParameterError):
            SpeculativeConfig(**bad)  # type: ignore[arg-type]


def test_only_plain_requests_speculate() -> None:
    assert can_speculate(SamplingParams(), 0)
    assert can_speculate(SamplingParams(temperature=0.8, top_p=0.9), 0)
    assert not can_speculate(SamplingParams(logprobs=2), 0)
    assert not can_speculate(SamplingParams(repetition_penalty=1.1), 0)
    assert not can_speculate(SamplingParams(presence_penalty=0.5), 0)
    assert not can_speculate(SamplingParams(logit_bias={5: 1.0}), 0)
    assert not can_speculate(SamplingParams(temperature=0.8, seed=3), 0)  # seeds reproduce
    assert can_speculate(SamplingParams(temperature=0, seed=3), 0)
    assert not can_speculate(SamplingParams(min_tokens=3), 2)
    assert can_speculate(SamplingParams(min_tokens=3), 3)


def one_hot_logits(choices: list[int], vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(len(choices), vocab)
    logits[torch.arange(len(choices)), torch.tensor(choices)] = 5.0
    return logits


def test_verify_greedy_keeps_the_agreeing_prefix_plus_one() -> None:
    assert verify_greedy(one_hot_logits([3, 4, 5, 6]), [3, 4, 5]) == [3, 4, 5, 6]  # all + bonus
    assert verify_greedy(one_hot_logits([3, 4, 9, 6]), [3, 4, 5]) == [3, 4, 9]
    assert verify_greedy(one_hot_logits([2, 4, 5, 6]), [3, 4, 5]) == [2]


def test_verify_sampled_keeps_each_position_distributed_as_the_model() -> None:
    """With drafts always [1, 1], the first token must still be drawn from p0 and the
    second (when the first was the draft) from p1: the rejection rule's guarantee."""
    p0 = torch.tensor([0.1, 0.6, 0.3])
    p1 = torch.tensor([0.5, 0.2, 0.3])
    p2 = torch.tensor([0.2, 0.2, 0.6])
    probs = torch.stack([p0, p1, p2])
    generator = torch.Generator().manual_seed(3)
    trials = 20000
    first = torch.zeros(3)
    second = torch.zeros(3)
    lengths = torch.zeros(4)
    for _ in range(trials):
        tokens = verify_sampled(probs, [1, 1], generator)
        lengths[len(tokens)] += 1
        first[tokens[0]] += 1
        if tokens[0] == 1:
            second[tokens[1]] += 1
    assert torch.allclose(first / trials, p0, atol=0.015)
    assert torch.allclose(second / second.sum(), p1, atol=0.015)
    # 1 token: first draft rejected (0.4); 2: kept, second rejected (0.6 * 0.8); 3: both kept
    expected = torch.tensor([0.0, 0.4, 0.48, 0.12])
    assert torch.allclose(lengths / trials, expected, atol=0.015)


def test_verify_sampled_never_keeps_an_impossible_draft() -> None:
    probs = torch.tensor([[0.0, 0.5, 0.5], [0.3, 0.3, 0.4]])
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        tokens = verify_sampled(probs, [0], generator)
        assert len(tokens) == 1 and tokens[0] in (1, 2)


# ---- the scheduler with drafts -----------------------------------------------------------


def make_scheduler(num_blocks: int = 16, **spec: int) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_batched_tokens=64),
        BlockPool(num_blocks, 4, True),
        max_model_len=64,
        eos_token_ids=[EOS],
        speculative=SpeculativeConfig(  # row cost 0: as many drafts as there are
            **{"num_tokens": 3, "ngram_min": 2, "draft_row_cost": 0.0, **spec}
        ),
    )


def make_request(prompt: list[int], max_tokens: int = 20, **params: object) -> Request:
    return Request(
        request_id=f"r{len(prompt)}-{max_tokens}",
        prompt_token_ids=prompt,
        sampling_params=SamplingParams(max_tokens=max_tokens, **params),  # type: ignore[arg-type]
        max_tokens=max_tokens,
    )


def run_step(scheduler: Scheduler, tokens: list[int]):  # type: ignore[no-untyped-def]
    out = scheduler.schedule()
    sampled = {s.request.request_id: tokens for s in out.scheduled if s.needs_sample}
    scheduler.update(out, ModelRunnerOutput(sampled))
    return out


def test_a_decode_carries_drafts_and_keeps_the_accepted_ones() -> None:
    scheduler = make_scheduler()
    request = make_request([1, 2, 3, 4, 1, 2, 3])
    scheduler.add_request(request)
    run_step(scheduler, [4])  # prefill; the output so far: 4 -> tokens end with [3, 4]
    out = run_step(scheduler, [1, 2, 9])  # drafts [1, 2, 3]: two kept, then 9
    (scheduled,) = out.scheduled
    assert scheduled.draft_token_ids == [1, 2, 3] and scheduled.num_tokens == 4
    assert request.output_token_ids == [4, 1, 2, 9]
    # the K/V of 4, 1, 2 is valid; 9 is fed by the next step; the rejected 3's slot is dropped
    assert request.num_computed_tokens == 10 and request.num_tokens_to_compute == 1
    assert (scheduler.num_draft_tokens, scheduler.num_accepted_tokens) == (3, 2)
    assert len(request.block_ids) == 3  # 11 positions were written: blocks of 4


def test_blocks_filled_by_accepted_drafts_are_cached_with_their_tokens() -> None:
    scheduler = make_scheduler()
    request = make_request([1, 2, 3, 4, 1, 2])
    scheduler.add_request(request)
    run_step(scheduler, [3])  # tokens ...1, 2, 3: drafts [4, 1, 2] follow the earlier 2, 3
    run_step(scheduler, [4, 1, 2, 3])  # all kept: positions 6..9 computed
    assert request.num_computed_tokens == 10
    first = hash_block(None, (1, 2, 3, 4))
    second = hash_block(first, (1, 2, 3, 4))  # position 7 holds the accepted draft 4
    assert request.block_hashes == [first, second]
    assert scheduler.block_pool.blocks[request.block_ids[1]].token_ids == (1, 2, 3, 4)


def test_drafts_respect_max_tokens_and_stop_at_eos() -> None:
    scheduler = make_scheduler()
    request = make_request([1, 2, 3, 4, 1, 2, 3], max_tokens=3)
    scheduler.add_request(request)
    run_step(scheduler, [4])
    out = run_step(scheduler, [1, 2])
    assert out.scheduled[0].draft_token_ids == [1]  # 3 tokens at most: 4, then draft + one
    assert request.is_finished and request.finish_reason == "length"
    assert request.output_token_ids == [4, 1, 2]

    scheduler = make_scheduler()
    request = make_request([1, 2, 3, 4, 1, 2, 3])
    scheduler.add_request(request)
    run_step(scheduler, [4])
    run_step(scheduler, [1, EOS, 5])  # EOS kept as a draft's verdict: nothing after it
    assert request.is_finished and request.finish_reason == "stop"
    assert request.output_token_ids == [4, 1, EOS]
    assert scheduler.block_pool.num_free_blocks == scheduler.block_pool.num_blocks


def test_no_drafts_for_wide_batches_or_requests_that_cannot_speculate() -> None:
    scheduler = make_scheduler(max_batch=1)
    first = make_request([1, 2, 3, 4, 1, 2, 3])
    second = make_request([1, 2, 3, 4, 1, 2, 3], max_tokens=19)
    for request in (first, second):
        scheduler.add_request(request)
    run_step(scheduler, [4])
    out = run_step(scheduler, [1])
    assert all(not s.draft_token_ids for s in out.scheduled)  # two decodes > max_batch 1

    scheduler = make_scheduler()
    request = make_request([1, 2, 3, 4, 1, 2, 3], logprobs=1)
    scheduler.add_request(request)
    run_step(scheduler, [4])
    assert not run_step(scheduler, [1]).scheduled[0].draft_token_ids


def test_drafts_never_preempt_another_request() -> None:
    scheduler = make_scheduler(num_blocks=4)  # blocks of 4 slots
    drafting = make_request([1, 2, 3, 4, 1, 2, 3])  # 7 tokens + 1 output: 2 blocks
    other = make_request([5, 6, 7, 8, 9])  # 5 tokens + 1 output: 2 blocks
    for request in (drafting, other):
        scheduler.add_request(request)
    run_step(scheduler, [4])
    out = run_step(scheduler, [1])
    # drafts [1, 2, 3] would need a fifth block: none is free, so none are sent
    assert [s.draft_token_ids for s in out.scheduled] == [[], []]
    assert scheduler.num_preemptions == 0 and not out.preempted_ids


# ---- the real model ------------------------------------------------------------------------


def test_stop_string_inside_accepted_drafts_is_cut(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    document = (
        "Invoice number: INV-2024-0193. Customer: Acme Robotics GmbH, Hauptstrasse 12, "
        "10115 Berlin. Total: 255.00 EUR."
    )
    prompt = (
        f"<|im_start|>user\nCopy the following text exactly.\n\n{document}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    params = SamplingParams(max_tokens=40, temperature=0, stop=["Hauptstrasse"])
    (output,) = run_to_completion(engine, [prompt], params)
    assert engine.scheduler.num_accepted_tokens > 0  # the copy runs on accepted drafts
    completion = output.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == "Hauptstrasse"
    assert completion.text.endswith("INV-2024-0193. The customer is Acme Robotics GmbH, ")
