"""The LLM/LLMEngine API on the real model: stops, n, seeds, logprobs, streaming, errors."""

from __future__ import annotations

import math

import pytest

from inferline.core import (
    ContextLengthExceededError,
    InvalidParameterError,
    SamplingParams,
    UnknownModelError,
)
from inferline.engine import LLM, EngineConfig
from tests.conftest import run_to_completion

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def engine(make_engine):  # type: ignore[no-untyped-def]
    return make_engine()


def greedy(max_tokens: int = 24, **kwargs) -> SamplingParams:  # type: ignore[no-untyped-def]
    return SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, **kwargs)


def test_stop_string_split_across_two_tokens(engine) -> None:  # type: ignore[no-untyped-def]
    full = run_to_completion(engine, [PROMPT], greedy())[0].outputs[0]
    pieces = [engine.tokenizer.decode([t]) for t in full.token_ids]
    # a stop string made of the end of one token and the start of the next
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) > 1 and len(pieces[i + 1]) > 1)
    stop = pieces[i][-1] + pieces[i + 1][0]
    expected = full.text[: full.text.index(stop)]
    out = run_to_completion(engine, [PROMPT], greedy(stop=[stop]))[0].outputs[0]
    assert out.text == expected
    assert out.finish_reason == "stop" and out.stop_reason == stop
    # streamed deltas never show any part of the stop string
    deltas = [o.outputs[0].text_delta for o in _stream(engine, PROMPT, greedy(stop=[stop]))]
    assert "".join(deltas) == expected


def _stream(engine, prompt, params):  # type: ignore[no-untyped-def]
    request_id = engine.add_request(prompt, params)
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.request_id == request_id:
                yield output


def test_stream_deltas_add_up_to_the_final_text(engine) -> None:  # type: ignore[no-untyped-def]
    outputs = list(_stream(engine, PROMPT, greedy(16)))
    final = outputs[-1].outputs[0]
    assert outputs[-1].finished and final.finish_reason == "length"
    assert "".join(o.outputs[0].text_delta for o in outputs) == final.text
    assert sum(len(o.outputs[0].token_ids_delta) for o in outputs) == 16
    assert len(outputs) >= 8  # streamed, not delivered in one piece


def test_eos_and_stop_token_ids(engine) -> None:  # type: ignore[no-untyped-def]
    chat = engine.tokenizer.apply_chat_template([{"role": "user", "content": "Say hi."}])
    out = run_to_completion(engine, [chat], SamplingParams(max_tokens=64, temperature=0))[0]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason is None
    first = run_to_completion(engine, [PROMPT], greedy(4))[0].outputs[0].token_ids
    out = run_to_completion(engine, [PROMPT], greedy(stop_token_ids=[first[1]]))[0].outputs[0]
    assert out.token_ids == first[:2] and out.stop_reason == first[1]


def test_n_completions_share_the_prompt_blocks(engine) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(n=4, max_tokens=12, temperature=1.0, seed=7, ignore_eos=True)
    prompt = "Tell me a story about a cat. " * 8
    queries_before = engine.block_pool.stats.num_queried_tokens
    engine.add_request(prompt, params, request_id="fork")
    engine.step()  # the parent's prompt
    engine.step()  # siblings fork: they reference the parent's full blocks
    siblings = [r for r in engine.scheduler.running if r.group_id == "fork"]
    assert len(siblings) == 4
    shared = siblings[0].block_ids[0]
    assert all(r.block_ids[0] == shared for r in siblings)
    assert engine.block_pool.blocks[shared].ref_count == 4
    final = None
    while engine.has_unfinished_requests():
        final = next((o for o in engine.step() if o.finished), final)
    assert final is not None and [o.index for o in final.outputs] == [0, 1, 2, 3]
    assert len({tuple(o.token_ids) for o in final.outputs}) > 1  # different samples
    assert all(len(o.token_ids) == 12 for o in final.outputs)
    # siblings never went through prefix matching: only the parent queried the cache
    num_prompt = len(final.prompt_token_ids)
    assert engine.block_pool.stats.num_queried_tokens - queries_before == num_prompt


def test_seed_is_reproducible_whatever_the_batch(engine) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    alone = run_to_completion(engine, [PROMPT], params)[0].outputs[0].token_ids
    others = SamplingParams(max_tokens=16, temperature=1.2)
    engine.add_request("Another prompt about dogs", others)
    batched = run_to_completion(engine, [PROMPT, "def f(x):"], params)[0].outputs[0].token_ids
    assert alone == batched
    different = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=99)
    assert run_to_completion(engine, [PROMPT], different)[0].outputs[0].token_ids != alone


def test_logprobs_with_top_alternatives(engine) -> None:  # type: ignore[no-untyped-def]
    out = run_to_completion(engine, [PROMPT], greedy(5, logprobs=3))[0].outputs[0]
    assert out.logprobs is not None and len(out.logprobs) == 5
    for token_id, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.token_id == token_id and lp.logprob <= 0
        assert len(lp.top) == 3 and lp.top[0][0] == token_id  # greedy took the best
        assert [t[2] for t in lp.top] == sorted((t[2] for t in lp.top), reverse=True)
        assert math.isclose(lp.top[0][2], lp.logprob, abs_tol=1e-5)


def test_penalties_change_greedy_output(engine) -> None:  # type: ignore[no-untyped-def]
    prompt = "1, 2, 3, 4,"
    plain = run_to_completion(engine, [prompt], greedy(16))[0].outputs[0].token_ids
    penalised = run_to_completion(engine, [prompt], greedy(16, frequency_penalty=2.0))[0]
    assert penalised.outputs[0].token_ids != plain
    repeated = run_to_completion(engine, [prompt], greedy(16, repetition_penalty=1.5))[0]
    assert repeated.outputs[0].token_ids != plain


def test_abort_frees_blocks_at_once(engine) -> None:  # type: ignore[no-untyped-def]
    free_before = engine.block_pool.num_free_blocks
    request_id = engine.add_request(PROMPT * 10, greedy(100))
    engine.step()
    assert engine.block_pool.num_free_blocks < free_before
    final = engine.abort_request(request_id)
    assert final is not None and final.finished and final.outputs[0].finish_reason == "abort"
    assert engine.block_pool.num_free_blocks == free_before
    assert not engine.has_unfinished_requests()


def test_prompt_over_the_context_window_is_an_error_not_a_truncation(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(max_model_len=64)
    with pytest.raises(ContextLengthExceededError) as info:
        engine.add_request("word " * 80, SamplingParams(max_tokens=8))
    assert info.value.max_model_len == 64 and "64" in str(info.value)
    assert info.value.num_prompt_tokens == len(engine.tokenizer.encode("word " * 80))
    with pytest.raises(ContextLengthExceededError) as info:
        engine.add_request("word " * 40, SamplingParams(max_tokens=40))
    assert info.value.param == "max_tokens"
    with pytest.raises(InvalidParameterError, match="empty"):
        engine.add_request("", SamplingParams())
    with pytest.raises(InvalidParameterError, match="token ids"):
        engine.add_request([10**6], SamplingParams())


def test_max_tokens_none_runs_to_the_context_window(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(max_model_len=40)
    params = SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
    out = run_to_completion(engine, [PROMPT], params)[0]
    assert len(out.prompt_token_ids) + len(out.outputs[0].token_ids) == 40
    assert out.outputs[0].finish_reason == "length"


def test_unknown_model_names_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownModelError) as info:
        LLM(config=EngineConfig(model="no-such-model", cache_dir=tmp_path))
    assert info.value.param == "model" and "smollm2-135m" in str(info.value)


def test_a_step_where_no_request_samples(make_engine) -> None:  # type: ignore[no-untyped-def]
    # one long prompt under a small token budget: the first chunks produce no logits at all
    engine = make_engine(max_num_batched_tokens=16)
    prompt = "The lighthouse keeper counted the ships. " * 6
    assert len(engine.tokenizer.encode(prompt)) > 2 * 16
    out = run_to_completion(engine, [prompt], greedy(4))[0]
    assert len(out.outputs[0].token_ids) == 4


def test_a_request_larger_than_the_kv_cache_is_refused_with_both_numbers(make_engine) -> None:  # type: ignore[no-untyped-def]
    """Before: the scheduler preempted it forever at the head of the queue (100% loop,
    /health green). Now: a 400 naming what it needs and what the cache holds."""
    engine = make_engine(kv_cache_tokens=128, block_size=16)  # 8 blocks
    prompt = "word " * 60
    num_prompt = len(engine.tokenizer.encode(prompt))
    with pytest.raises(ContextLengthExceededError) as info:
        engine.add_request(prompt, SamplingParams(max_tokens=100))
    message = str(info.value)
    assert "KV cache" in message and "holds 128 tokens" in message
    assert f"{num_prompt} in the prompt, 100 for the completion" in message
    with pytest.raises(ContextLengthExceededError, match="n=4"):
        engine.add_request(prompt, SamplingParams(max_tokens=32, n=4))
    # without max_tokens the answer runs to what the cache holds, and finishes
    params = SamplingParams(max_tokens=None, temperature=0, ignore_eos=True)
    out = run_to_completion(engine, [prompt], params)[0]
    assert num_prompt + len(out.outputs[0].token_ids) == 128
    assert out.outputs[0].finish_reason == "length"
