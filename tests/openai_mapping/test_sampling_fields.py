"""``logit_bias``, ``min_tokens`` and unset sampling fields: body -> `SamplingParams` ->
upstream body."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from inferline.core import GenerationRequest, InvalidParameterError, SamplingParams
from inferline.openai.requests import chat_generation, completion_generations
from inferline.openai.sampling import chat_sampling_params, completion_sampling_params
from inferline.openai.schemas import ChatCompletionRequest, CompletionRequest
from inferline.openai.upstream import upstream_call
from tests.openai_mapping.test_upstream_mapping import USER, chat_body, completion_body

ALL_SAMPLING = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty"}


def chat(**fields: Any) -> SamplingParams:
    return chat_sampling_params(ChatCompletionRequest(model="m", messages=USER, **fields))


def test_logit_bias_and_min_tokens_reach_the_params() -> None:
    params = chat(logit_bias={"42": 100, "7": -3.5}, min_tokens=4, max_tokens=8)
    assert params.logit_bias == ((7, -3.5), (42, 100.0))
    assert params.min_tokens == 4
    completion = completion_sampling_params(
        CompletionRequest(model="m", prompt="x", logit_bias={"1": 5}, min_tokens=2)
    )
    assert completion.logit_bias == ((1, 5.0),) and completion.min_tokens == 2


def test_fields_left_out_are_unset_and_given_ones_win() -> None:
    assert set(chat().unset_fields) == ALL_SAMPLING
    params = chat(temperature=0.2, top_k=-1, repetition_penalty=1.0)
    assert set(params.unset_fields) == {"top_p", "min_p"}
    assert (params.temperature, params.top_k, params.repetition_penalty) == (0.2, -1, 1.0)
    # the placeholders of unset fields are inferline's own defaults
    assert (params.top_p, params.min_p) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias"),
        ({"logit_bias": {"1.5": 1}}, "logit_bias"),
        ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
        ({"min_tokens": 9, "max_completion_tokens": 8}, "min_tokens"),
    ],
)
def test_bad_values_name_their_field(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        chat(**fields)
    assert info.value.param == param


@pytest.mark.parametrize(
    "fields",
    [
        {"logit_bias": {"1": 100.5}},
        {"logit_bias": {"1": -101}},
        {"logit_bias": {str(i): 1 for i in range(301)}},
        {"min_tokens": -1},
    ],
)
def test_schema_bounds(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest(model="m", messages=USER, **fields)
    assert info.value.errors()[0]["loc"][0] == next(iter(fields))


def test_upstream_body_carries_bias_and_min_tokens_and_omits_unset_fields() -> None:
    body = chat_body(logit_bias={"42": 100}, min_tokens=3, max_tokens=5)
    assert body["logit_bias"] == {"42": 100.0} and body["min_tokens"] == 3
    assert "temperature" not in body and "top_p" not in body  # the upstream's defaults apply
    plain = chat_body()
    assert "logit_bias" not in plain and "min_tokens" not in plain
    given = chat_body(temperature=1.0, top_p=0.5)
    assert given["temperature"] == 1.0 and given["top_p"] == 0.5
    completion = completion_body(prompt="x", logit_bias={"9": -100}, min_tokens=1)
    assert completion["logit_bias"] == {"9": -100.0} and completion["min_tokens"] == 1
    # params built in code (no body) set everything: sent as before
    request = GenerationRequest("r", prompt="x", params=SamplingParams())
    assert upstream_call(request, "m").body["temperature"] == 1.0


def test_the_mapping_keeps_them_through_chat_and_completion_requests() -> None:
    body = ChatCompletionRequest(model="m", messages=USER, logit_bias={"3": 1}, min_tokens=1)
    assert chat_generation(body, "r").request.params.logit_bias == ((3, 1.0),)
    [request] = completion_generations(CompletionRequest(model="m", prompt="x", min_tokens=2), "r")
    assert request.params.min_tokens == 2
