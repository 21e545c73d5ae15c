"""``logit_bias``, ``min_tokens``, the model's sampling defaults and tokenize/detokenize on
the real SmolLM2 engine."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from inferline.core import InvalidParameterError, SamplingParams, StructuredOutput
from inferline.core.protocols import TokenizeRequest
from inferline.engine import AsyncEngine, CacheConfig, EngineConfig, LLMEngine
from inferline.models.generation_config import gguf_sampling_defaults, hf_sampling_defaults
from tests.conftest import run_each, run_to_completion

YES_NO = [{"role": "user", "content": "Reply with one word, yes or no: is the sky blue?"}]
UNSET = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


@pytest.fixture(scope="module")
def engine(make_engine):  # type: ignore[no-untyped-def]
    return make_engine()


def chat_prompt(engine: LLMEngine) -> str:
    return engine.tokenizer.apply_chat_template(YES_NO)


def test_a_bias_of_100_makes_greedy_output_that_token(engine) -> None:  # type: ignore[no-untyped-def]
    (hello,) = engine.tokenizer.encode(" hello", add_special_tokens=False)
    bias: dict[int, float] = {hello: 100}
    plain, biased, sampled = run_each(
        engine,
        [
            (chat_prompt(engine), SamplingParams(max_tokens=5, temperature=0)),
            (chat_prompt(engine), SamplingParams(max_tokens=5, temperature=0, logit_bias=bias)),  # type: ignore[arg-type]
            (chat_prompt(engine), SamplingParams(max_tokens=5, seed=3, logit_bias=bias)),  # type: ignore[arg-type]
        ],
    )  # fmt: skip
    assert hello not in plain.outputs[0].token_ids
    assert biased.outputs[0].token_ids == [hello] * 5
    assert sampled.outputs[0].token_ids == [hello] * 5


def test_a_token_outside_the_vocabulary_is_a_400(engine) -> None:  # type: ignore[no-untyped-def]
    vocab = engine.loaded.config.vocab_size
    with pytest.raises(InvalidParameterError) as info:
        engine.add_request("hi", SamplingParams(logit_bias={vocab: 1}))  # type: ignore[arg-type]
    assert info.value.param == "logit_bias"


def test_min_tokens_keeps_a_short_answer_going(engine) -> None:  # type: ignore[no-untyped-def]
    short = SamplingParams(max_tokens=60, temperature=0)
    (alone,) = run_to_completion(engine, [chat_prompt(engine)], short)
    assert alone.outputs[0].finish_reason == "stop" and len(alone.outputs[0].token_ids) < 10
    held = dataclasses.replace(short, min_tokens=20)
    (longer,) = run_to_completion(engine, [chat_prompt(engine)], held)
    assert len(longer.outputs[0].token_ids) >= 20


def test_stop_strings_wait_for_min_tokens_too(engine) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=[" "])
    (early,) = run_to_completion(engine, ["Once upon a time"], params)
    assert early.outputs[0].finish_reason == "stop" and len(early.outputs[0].token_ids) < 5
    held = dataclasses.replace(params, min_tokens=12)
    (later,) = run_to_completion(engine, ["Once upon a time"], held)
    assert len(later.outputs[0].token_ids) >= 12 and " " not in later.outputs[0].text[-1:]


def test_grammars_still_apply_with_bias_and_min_tokens(engine) -> None:  # type: ignore[no-untyped-def]
    (hello,) = engine.tokenizer.encode(" hello", add_special_tokens=False)
    as_json = SamplingParams(
        max_tokens=30,
        temperature=0,
        logit_bias={hello: 100},  # type: ignore[arg-type]
        structured=StructuredOutput("json_object"),
    )
    choice = SamplingParams(
        max_tokens=30,
        temperature=0,
        min_tokens=25,  # a complete choice ends anyway: the grammar wins
        structured=StructuredOutput("choice", '["yes", "no"]', "guided_choice"),
    )
    obj, picked = run_each(engine, [(chat_prompt(engine), as_json), (chat_prompt(engine), choice)])
    assert isinstance(json.loads(obj.outputs[0].text), dict)
    assert picked.outputs[0].text in ("yes", "no")


def test_the_models_defaults_fill_what_the_request_leaves_unset(smollm, cache_dir) -> None:  # type: ignore[no-untyped-def]
    assert smollm.sampling_defaults == {}  # SmolLM2's GGUF carries no general.sampling.*
    loaded = dataclasses.replace(smollm, sampling_defaults={"top_k": 1})  # greedy
    config = EngineConfig(weight_format="fp32", cache=CacheConfig(kv_cache_tokens=4096))
    prompt = "Once upon a time"
    unset = [SamplingParams(max_tokens=12, seed=s, unset_fields=UNSET) for s in range(3)]
    greedy = SamplingParams(max_tokens=12, temperature=0)

    def texts(engine: LLMEngine, params: list[SamplingParams]) -> list[str]:
        return [o.outputs[0].text for o in run_each(engine, [(prompt, p) for p in params])]

    with_defaults = LLMEngine(config, loaded=loaded)
    (expected,) = texts(with_defaults, [greedy])
    assert texts(with_defaults, unset) == [expected] * 3
    explicit = [dataclasses.replace(p, unset_fields=("temperature",)) for p in unset]
    assert len(set(texts(with_defaults, explicit))) > 1  # top_k given (0): the request wins
    without = LLMEngine(dataclasses.replace(config, generation_config="none"), loaded=loaded)
    assert len(set(texts(without, unset))) > 1


def test_generation_config_values_are_read_and_checked() -> None:
    qwen = {"do_sample": True, "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8,
            "top_k": 20, "eos_token_id": [151645, 151643]}  # fmt: skip
    assert hf_sampling_defaults(qwen) == {
        "repetition_penalty": 1.1, "temperature": 0.7, "top_p": 0.8, "top_k": 20
    }  # fmt: skip
    assert hf_sampling_defaults({"bos_token_id": 1, "eos_token_id": 2}) == {}
    assert hf_sampling_defaults({"temperature": 5.0, "top_p": 0, "min_p": True}) == {}
    fields = {"general.sampling.temp": 0.6, "general.sampling.top_k": 40,
              "general.sampling.min_p": 0.05, "general.sampling.penalty_repeat": 1.05}  # fmt: skip
    assert gguf_sampling_defaults(fields) == {
        "temperature": 0.6, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.05
    }  # fmt: skip
    with pytest.raises(InvalidParameterError):
        EngineConfig(generation_config="vllm")


def test_tokenize_and_detokenize(make_engine) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        engine = AsyncEngine(make_engine())
        await engine.start()
        try:
            text = await engine.tokenize(TokenizeRequest("", prompt="Hello world"))
            chat = await engine.tokenize(TokenizeRequest("", messages=YES_NO))
            bare = await engine.tokenize(
                TokenizeRequest("", messages=YES_NO, add_generation_prompt=False)
            )
            back = await engine.detokenize("", chat.token_ids)
            with pytest.raises(InvalidParameterError) as info:
                await engine.detokenize("", [10**7])
            assert info.value.param == "tokens"
            return engine, text, chat, bare, back
        finally:
            await engine.shutdown(1)

    engine, text, chat, bare, back = asyncio.run(main())
    tokenizer = engine.engine.tokenizer
    assert text.token_ids == tokenizer.encode("Hello world") and text.max_model_len == 8192
    assert chat.token_ids == tokenizer.encode(tokenizer.apply_chat_template(YES_NO))
    assert len(bare.token_ids) < len(chat.token_ids)  # no "<|im_start|>assistant\n"
    assert back == tokenizer.apply_chat_template(YES_NO)
