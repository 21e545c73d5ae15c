"""Prompt logprobs (what ``echo`` with ``logprobs`` returns) against transformers, and
their invariants under chunked prefill, the prefix cache, ``n > 1`` and mixed batches.

Tolerance: fp32 logprobs within 2e-3 of transformers' (the parity tests' bound; observed
~1e-5 here); chunked against unchunked prefill within 1e-4 (same weights, a different
order of operations in attention).
"""

from __future__ import annotations

import pytest
import torch

from inferline.core import SamplingParams
from inferline.models import resolve_model_path
from tests.conftest import run_each, run_to_completion
from tests.models.hf_reference import load_reference

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of"
UNICODE_PROMPT = "Ünïcödé 日本語 and emoji 🚀 means a rocket"
TOLERANCE = 2e-3
CHUNK_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference(cache_dir):  # type: ignore[no-untyped-def]
    """transformers on the same GGUF file (fp32)."""
    return load_reference(resolve_model_path("smollm2-135m", cache_dir))


def reference_logprobs(reference, token_ids: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """log-softmax ``[len - 1, vocab]``: row i scores token i + 1."""
    with torch.inference_mode():
        logits = reference.model(torch.tensor([token_ids])).logits[0, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def echo_params(num_top: int = 3, **fields) -> SamplingParams:  # type: ignore[no-untyped-def]
    fields = {"max_tokens": 1, "temperature": 0.0, **fields}
    return SamplingParams(prompt_logprobs=num_top, **fields)


def values(output) -> list[float]:  # type: ignore[no-untyped-def]
    return [entry.logprob for entry in output.prompt_logprobs[1:]]


def test_prompt_logprobs_match_transformers(make_engine, reference) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    (output,) = run_to_completion(engine, [PROMPT], echo_params(3))
    ids = output.prompt_token_ids
    assert len(output.prompt_logprobs) == len(ids)
    assert output.prompt_logprobs[0] is None
    expected = reference_logprobs(reference, ids)
    for i, entry in enumerate(output.prompt_logprobs[1:]):
        assert entry.token_id == ids[i + 1]
        assert abs(entry.logprob - float(expected[i, ids[i + 1]])) < TOLERANCE
        top_values, top_ids = expected[i].topk(3)
        assert [t for t, _, _ in entry.top] == top_ids.tolist()
        for (_, _, got), want in zip(entry.top, top_values.tolist(), strict=True):
            assert abs(got - want) < TOLERANCE
    # the first output token is sampled as usual
    assert len(output.outputs[0].token_ids) == 1


def test_token_texts_concatenate_to_the_prompt(make_engine, smollm) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    for prompt in (PROMPT, UNICODE_PROMPT):
        (output,) = run_to_completion(engine, [prompt], echo_params(0))
        assert output.prompt == prompt
        rest = "".join(e.token for e in output.prompt_logprobs[1:])
        assert prompt.endswith(rest)  # the first token's text is what precedes the rest
        assert all(e.top == () for e in output.prompt_logprobs[1:])
    first = smollm.tokenizer.decode(output.prompt_token_ids[:1], skip_special_tokens=False)
    assert first == "\ufffd"  # "Ü" is split over two byte-level tokens ...
    assert output.prompt_logprobs[1].token == "Ü"  # ... and belongs to the one completing it
    assert "\ufffd" not in rest


def test_chunked_prefill_gives_the_same_scores(make_engine) -> None:  # type: ignore[no-untyped-def]
    (whole,) = run_to_completion(make_engine(), [PROMPT], echo_params(2))
    (chunked,) = run_to_completion(make_engine(max_num_batched_tokens=5), [PROMPT], echo_params(2))
    assert len(chunked.prompt_logprobs) == len(whole.prompt_logprobs)
    for a, b in zip(values(whole), values(chunked), strict=True):
        assert abs(a - b) < CHUNK_TOLERANCE
    assert chunked.prompt == whole.prompt


def test_a_cached_prefix_is_recomputed(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(block_size=4)
    (fresh,) = run_to_completion(engine, [PROMPT], echo_params(1))
    run_to_completion(engine, [PROMPT], SamplingParams(max_tokens=1))  # now cached
    (again,) = run_to_completion(engine, [PROMPT], echo_params(1))
    assert again.metrics.num_cached_prompt_tokens == 0
    assert values(again) == pytest.approx(values(fresh), abs=CHUNK_TOLERANCE)
    # and the plain request that follows still hits the cache it left
    (plain,) = run_to_completion(engine, [PROMPT], SamplingParams(max_tokens=1))
    assert plain.metrics.num_cached_prompt_tokens > 0
    assert plain.prompt_logprobs is None


def test_n_completions_share_one_prompt_score(make_engine) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine()
    (single,) = run_to_completion(engine, [PROMPT], echo_params(1))
    (many,) = run_to_completion(engine, [PROMPT], echo_params(1, n=3, temperature=1.0, seed=1))
    assert len(many.outputs) == 3
    assert values(many) == pytest.approx(values(single), abs=CHUNK_TOLERANCE)


def test_plain_requests_in_the_same_steps_are_unchanged(make_engine) -> None:  # type: ignore[no-untyped-def]
    plain = SamplingParams(max_tokens=12, temperature=0, logprobs=2)
    others = ["Once upon a time", "def fibonacci(n):", "List three fruits:"]
    alone = run_to_completion(make_engine(), others, plain)
    mixed = run_each(
        make_engine(),
        [(PROMPT, echo_params(2, max_tokens=4)), *[(p, plain) for p in others]],
    )
    for a, b in zip(alone, mixed[1:], strict=True):
        assert b.outputs[0].token_ids == a.outputs[0].token_ids
        assert b.prompt_logprobs is None
        got = [lp.logprob for lp in b.outputs[0].logprobs]
        assert got == pytest.approx([lp.logprob for lp in a.outputs[0].logprobs], abs=1e-4)
    assert len(mixed[0].outputs[0].token_ids) == 4


def test_token_id_prompts_are_decoded_for_echo(make_engine, smollm) -> None:  # type: ignore[no-untyped-def]
    ids = smollm.tokenizer.encode(PROMPT)
    (output,) = run_to_completion(make_engine(), [ids], SamplingParams(max_tokens=1))
    assert output.prompt == PROMPT
    assert output.prompt_logprobs is None


def test_prompt_logprobs_are_validated() -> None:
    from inferline.core.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError) as raised:
        SamplingParams(prompt_logprobs=21)
    assert raised.value.param == "prompt_logprobs"


@pytest.mark.gpu
def test_cuda_prompt_logprobs_match_cpu(make_engine, cache_dir) -> None:  # type: ignore[no-untyped-def]
    from inferline.engine import CacheConfig, EngineConfig, LLMEngine

    (cpu,) = run_to_completion(make_engine(), [PROMPT], echo_params(2))
    config = EngineConfig(
        device="cuda", cache_dir=cache_dir, cache=CacheConfig(kv_cache_tokens=8192)
    )
    (gpu,) = run_to_completion(LLMEngine(config), [PROMPT], echo_params(2))
    assert values(gpu) == pytest.approx(values(cpu), abs=TOLERANCE)
    assert [e.top[0][0] for e in gpu.prompt_logprobs[1:]] == [
        e.top[0][0] for e in cpu.prompt_logprobs[1:]
    ]
