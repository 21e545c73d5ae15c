"""Greedy output does not depend on batching, prefix caching, chunking, preemption or
speculative decoding (the reference runs without speculation, the other engines with it)."""

from __future__ import annotations

import pytest

from inferline.core import SamplingParams
from tests.conftest import run_to_completion

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
STORY = "Once upon a time there was a lighthouse keeper who counted ships. " * 6
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    STORY + "One night,",
    "List three colors:\n1.",
    "Ünïcödé and 日本語: the word for cat is",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "SELECT name FROM users WHERE",
    "The quick brown fox",
    STORY + "The keeper's name was",
    "In 1969, humans first",
    "A haiku about autumn:\n",
    "import numpy as np\nx = np.",
    "The three laws of motion are",
    "Water boils at",
    "My favourite book is",
    "Translate to French: good morning ->",
]
CHECKED = [0, 2, 5, 8]  # prompts also run alone (a short one, long ones, chat markup)


@pytest.fixture(scope="module")
def reference(make_engine):  # type: ignore[no-untyped-def]
    """Each checked prompt alone in a fresh engine without prefix caching or speculation."""
    plain = make_engine(enable_prefix_caching=False, speculative="off")
    return {
        i: run_to_completion(plain, [PROMPTS[i]], GREEDY)[0].outputs[0].token_ids for i in CHECKED
    }


def assert_same(outputs, reference) -> None:  # type: ignore[no-untyped-def]
    for i, expected in reference.items():
        assert outputs[i].outputs[0].token_ids == expected, f"prompt {i} diverged"


def test_alone_equals_inside_a_batch_of_16(make_engine, reference) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(enable_prefix_caching=False)
    outputs = run_to_completion(engine, PROMPTS, GREEDY)
    assert len(outputs) == 16
    assert_same(outputs, reference)


def test_prefix_cache_hits_give_the_same_output(make_engine, reference) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(enable_prefix_caching=True)
    first = run_to_completion(engine, [PROMPTS[i] for i in CHECKED], GREEDY)
    second = run_to_completion(engine, [PROMPTS[i] for i in CHECKED], GREEDY)
    assert engine.block_pool.stats.num_hit_tokens > 0
    assert second[1].metrics.num_cached_prompt_tokens >= 48  # the long story prompt
    assert first[1].metrics.num_cached_prompt_tokens == 0
    for outputs in (first, second):
        assert_same(dict(zip(CHECKED, outputs, strict=True)), reference)


def test_chunked_prefill_in_three_or_more_chunks(make_engine, reference) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(enable_prefix_caching=False, max_num_batched_tokens=24)
    num_prompt_tokens = len(engine.tokenizer.encode(PROMPTS[2]))
    assert num_prompt_tokens > 3 * 24  # at least 4 chunks of at most 24 tokens
    outputs = run_to_completion(engine, [PROMPTS[i] for i in CHECKED], GREEDY)
    assert_same(dict(zip(CHECKED, outputs, strict=True)), reference)


def test_speculation_keeps_greedy_output(make_engine, reference) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(enable_prefix_caching=False)
    outputs = {i: run_to_completion(engine, [PROMPTS[i]], GREEDY)[0] for i in CHECKED}
    assert engine.scheduler.num_accepted_tokens > 0  # the story prompts repeat themselves
    assert engine.scheduler.num_draft_tokens > engine.scheduler.num_accepted_tokens
    assert_same(outputs, reference)


def test_same_output_after_preemption(make_engine, reference) -> None:  # type: ignore[no-untyped-def]
    # without speculation: its faster finish would end the memory pressure this test needs
    engine = make_engine(enable_prefix_caching=False, kv_cache_tokens=16 * 16, speculative="off")
    outputs = run_to_completion(engine, [PROMPTS[i] for i in CHECKED], GREEDY)
    assert engine.scheduler.num_preemptions > 0
    assert_same(dict(zip(CHECKED, outputs, strict=True)), reference)
    assert engine.block_pool.num_free_blocks == engine.block_pool.num_blocks
