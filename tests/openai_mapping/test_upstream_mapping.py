"""The reverse mapping: requests -> upstream bodies, upstream chunks -> outputs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inferline.core import (
    ContentFilteredError,
    GenerationRequest,
    InvalidParameterError,
    RequestMetrics,
    SamplingParams,
    StreamInterruptedError,
    StructuredOutput,
)
from inferline.openai.requests import chat_generation, completion_generations
from inferline.openai.schemas import ChatCompletionRequest, CompletionRequest
from inferline.openai.upstream import CHAT_PATH, COMPLETIONS_PATH, upstream_call
from inferline.openai.upstream_chunks import ChunkAccumulator, map_finish_reason, split_tokens

USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "time", "parameters": {"type": "object"}}}
EXTENSIONS = ("top_k", "min_p", "repetition_penalty", "ignore_eos", "stop_token_ids")


def chat_body(**fields: Any) -> dict[str, Any]:
    """The upstream body of a chat request given as an OpenAI body (forward, then back)."""
    body = ChatCompletionRequest(model="route", messages=fields.pop("messages", USER), **fields)
    request = chat_generation(body, "req-1").request
    call = upstream_call(request, "upstream-model")
    assert call.path == CHAT_PATH and call.is_chat
    return call.body


def completion_body(**fields: Any) -> dict[str, Any]:
    body = CompletionRequest(model="route", **fields)
    [request] = completion_generations(body, "req-1")
    call = upstream_call(request, "upstream-model")
    assert call.path == COMPLETIONS_PATH and not call.is_chat
    return call.body


def test_chat_body_streams_with_usage_and_names_the_upstream_model() -> None:
    body = chat_body(max_tokens=5, temperature=0.0, user="alice", stream=False)
    assert body == {
        "model": "upstream-model",
        "messages": USER,
        "n": 1,
        "temperature": 0.0,  # top_p left unset: the upstream's model's default applies
        "max_tokens": 5,
        "user": "alice",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_completion_body_text_and_token_prompts() -> None:
    body = completion_body(prompt="Once", logprobs=2, stop="\n", seed=3, n=2)
    assert body["prompt"] == "Once" and body["logprobs"] == 2 and body["n"] == 2
    assert body["stop"] == ["\n"] and body["seed"] == 3 and body["max_tokens"] == 16
    assert completion_body(prompt=[1, 2, 3])["prompt"] == [1, 2, 3]


def test_sampling_penalties_and_chat_logprobs() -> None:
    body = chat_body(presence_penalty=0.5, frequency_penalty=-0.5, logprobs=True, top_logprobs=3)
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == -0.5
    assert body["logprobs"] is True and body["top_logprobs"] == 3


def test_vllm_extensions_only_when_not_default() -> None:
    plain = chat_body()
    assert not set(EXTENSIONS) & set(plain)
    assert "skip_special_tokens" not in plain and "presence_penalty" not in plain
    assert "top_k" not in chat_body(top_k=-1)
    body = chat_body(
        top_k=5, min_p=0.1, repetition_penalty=1.2, ignore_eos=True, stop_token_ids=[7]
    )
    assert {k: body[k] for k in EXTENSIONS} == {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.2,
        "ignore_eos": True,
        "stop_token_ids": [7],
    }
    request = GenerationRequest("r", prompt="x", params=SamplingParams(skip_special_tokens=False))
    assert upstream_call(request, "m").body["skip_special_tokens"] is False


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {"tool_choice": "auto"}),
        ({"tool_choice": "required"}, {"tool_choice": "required"}),
        ({"parallel_tool_calls": False}, {"tool_choice": "auto", "parallel_tool_calls": False}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "time"}}},
            {"tool_choice": {"type": "function", "function": {"name": "time"}}},
        ),
    ],
)
def test_tools_and_tool_choice(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    body = chat_body(tools=[WEATHER, TIME], **fields)
    assert body["tools"] == [WEATHER, TIME]  # as given, descriptions included
    assert {k: body[k] for k in ("tool_choice", "parallel_tool_calls") if k in body} == expected
    assert "response_format" not in body


def test_tool_choice_none_sends_no_tools() -> None:
    body = chat_body(tools=[WEATHER], tool_choice="none")
    assert "tools" not in body and "tool_choice" not in body


def test_tools_without_a_tool_constraint_may_not_be_called() -> None:
    request = GenerationRequest("r", messages=USER, tools=[WEATHER])
    body = upstream_call(request, "m").body
    assert body["tools"] == [WEATHER] and body["tool_choice"] == "none"


def test_response_formats_and_guided_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    assert chat_body(response_format={"type": "json_object"})["response_format"] == {
        "type": "json_object"
    }
    assert chat_body(response_format=json_schema)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }
    assert chat_body(guided_regex="[ab]+")["guided_regex"] == "[ab]+"
    assert chat_body(guided_choice=["yes", "no"])["guided_choice"] == ["yes", "no"]
    assert completion_body(prompt="x", guided_json=schema)["response_format"]["json_schema"] == {
        "name": "response",
        "schema": schema,
    }


def test_tools_with_a_response_format_send_both() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    json_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    body = chat_body(tools=[WEATHER], response_format=json_schema)
    assert body["tool_choice"] == "auto"
    assert body["response_format"]["json_schema"]["schema"] == schema
    body = chat_body(tools=[WEATHER], response_format={"type": "json_object"})
    assert body["response_format"] == {"type": "json_object"}


def test_tool_constraint_without_tools_lists_its_functions() -> None:
    structured = chat_generation(
        ChatCompletionRequest(model="m", messages=USER, tools=[TIME]), "r"
    ).request.params.structured
    request = GenerationRequest("r", messages=USER, params=SamplingParams(structured=structured))
    body = upstream_call(request, "m").body
    assert body["tools"] == [TIME] and body["tool_choice"] == "auto"


def test_tool_call_messages_keep_their_shape_with_text_arguments() -> None:
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": {"city": "Oslo"}},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "name": "weather"},
    ]
    request = GenerationRequest("r", messages=messages)
    sent = upstream_call(request, "m").body["messages"]
    assert sent[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    assert sent[2] == messages[2]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}  # a copy


def test_chat_continuation_appends_the_prefix() -> None:
    request = GenerationRequest("r", messages=USER, assistant_prefix="The answer is")
    body = upstream_call(request, "m").body
    assert body["messages"] == [*USER, {"role": "assistant", "content": "The answer is"}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    with pytest.raises(InvalidParameterError) as info:
        upstream_call(request, "m", can_continue=False)
    assert info.value.param == "assistant_prefix"
    assert (
        "continue_final_message"
        not in upstream_call(GenerationRequest("r", messages=USER), "m").body
    )


def test_prompt_continuation() -> None:
    text = GenerationRequest("r", prompt="Once upon", assistant_prefix=" a time")
    assert upstream_call(text, "m", can_continue=False).body["prompt"] == "Once upon a time"
    ids = GenerationRequest("r", prompt=[1, 2], assistant_prefix=" a time")
    with pytest.raises(InvalidParameterError, match="token-id"):
        upstream_call(ids, "m")


def test_regex_structured_on_completions() -> None:
    params = SamplingParams(structured=StructuredOutput("regex", "a+", "guided_regex"))
    assert (
        upstream_call(GenerationRequest("r", prompt="x", params=params), "m").body["guided_regex"]
        == "a+"
    )


# ---- chunks -> outputs ---------------------------------------------------------------


def accumulator(n: int = 1, is_chat: bool = True) -> ChunkAccumulator:
    metrics = RequestMetrics(arrival_s=100.0)
    return ChunkAccumulator(
        "req-1", n=n, is_chat=is_chat, model="gpt", metrics=metrics, target="gpt"
    )


def delta(
    content: str | None = None, index: int = 0, finish: str | None = None, **more: Any
) -> dict[str, Any]:
    fields = {"content": content} if content is not None else {}
    choice = {"index": index, "delta": {**fields, **more}, "finish_reason": finish}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    details = {"cached_tokens": cached}
    return {
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "prompt_tokens_details": details,
        },
    }


def test_chat_chunks_accumulate_with_deltas_and_usage() -> None:
    acc = accumulator()
    assert acc.feed(delta("", role="assistant"), 100.5) is None  # the role alone is no token
    assert not acc.has_content
    first = acc.feed(delta("Hel"), 101.0)
    second = acc.feed(delta("lo"), 101.5)
    assert first is not None and second is not None
    assert (first.outputs[0].text, first.outputs[0].text_delta) == ("Hel", "Hel")
    assert (second.outputs[0].text, second.outputs[0].text_delta) == ("Hello", "lo")
    assert second.outputs[0].num_tokens == 2 and second.outputs[0].num_tokens_delta == 1
    assert acc.metrics.first_token_s == 101.0 and acc.has_content
    last = acc.feed(delta(finish="stop"), 102.0)
    assert last is not None and last.outputs[0].finish_reason == "stop" and not last.finished
    assert acc.feed(usage(9, 3, cached=4), 102.1) is None
    final = acc.finish(102.2)
    assert final.finished and final.model == "gpt" and final.prompt_token_ids == []
    assert final.num_prompt_tokens == 9 and final.metrics.num_cached_prompt_tokens == 4
    assert final.outputs[0].num_tokens == 3 and final.outputs[0].num_tokens_delta == 1
    assert final.outputs[0].text == "Hello" and final.outputs[0].text_delta == ""
    assert final.metrics.finished_s == 102.2


def test_the_prompt_is_counted_from_the_estimate_until_the_usage_says() -> None:
    """A stream cut before its usage chunk still charges the prompt it sent."""
    metrics = RequestMetrics(arrival_s=100.0)
    acc = ChunkAccumulator("r", n=1, is_chat=True, model="gpt", metrics=metrics,
                           estimated_prompt_tokens=40)  # fmt: skip
    first = acc.feed(delta("Hel"), 101.0)
    assert first is not None and first.num_prompt_tokens == 40
    acc.feed(delta(finish="stop"), 102.0)
    acc.feed({"choices": [], "usage": {"completion_tokens": 1}}, 102.1)  # no prompt count
    assert acc.num_prompt_tokens == 40
    acc.feed(usage(9, 1), 102.2)
    assert acc.finish(102.3).num_prompt_tokens == 9


def test_a_request_estimates_its_prompt_tokens_on_the_high_side() -> None:
    from inferline.core import GenerationRequest

    assert GenerationRequest("r", prompt=[1, 2, 3]).estimated_prompt_tokens() == 3
    assert GenerationRequest("r", prompt="x" * 30).estimated_prompt_tokens() == 11
    messages = [{"role": "user", "content": "hello there"}]
    chat = GenerationRequest("r", messages=messages).estimated_prompt_tokens()
    assert chat == len('[{"role": "user", "content": "hello there"}][]') // 3 + 1


@pytest.mark.parametrize(
    ("upstream", "ours"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "stop"),
        ("function_call", "stop"),
        ("content_filter", "content_filter"),
        ("eos", "stop"),
    ],
)
def test_finish_reasons(upstream: str, ours: str) -> None:
    assert map_finish_reason(upstream) == ours
    acc = accumulator()
    acc.feed(delta("partial"), 1.0)
    out = acc.feed(delta(finish=upstream), 2.0)
    assert out is not None and out.outputs[0].finish_reason == ours


def test_upstream_abort_finish_is_an_interrupted_stream() -> None:
    acc = accumulator()
    acc.feed(delta("partial"), 1.0)
    with pytest.raises(StreamInterruptedError) as info:
        acc.feed(delta(finish="abort"), 2.0)
    assert info.value.code == "upstream_aborted" and info.value.target == "gpt"


def test_content_filter_without_content_raises() -> None:
    acc = accumulator()
    with pytest.raises(ContentFilteredError) as info:
        acc.feed(delta(finish="content_filter"), 1.0)
    assert info.value.target == "gpt" and not info.value.retryable


def test_tool_call_deltas_and_cumulative_calls() -> None:
    acc = accumulator()
    start = {"index": 0, "id": "call_a", "type": "function"}
    outs = [
        acc.feed(
            delta(tool_calls=[{**start, "function": {"name": "weather", "arguments": ""}}]), 1
        ),
        acc.feed(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]), 2),
        acc.feed(delta(tool_calls=[{"index": 0, "function": {"arguments": '"Oslo"}'}}]), 3),
        acc.feed(delta(tool_calls=[{"index": 1, "id": "call_b", "function": {"name": "time"}}]), 4),
        acc.feed(delta(finish="tool_calls"), 5),
    ]
    assert all(o is not None for o in outs)
    deltas = [d for o in outs if o is not None for d in o.outputs[0].tool_call_deltas]
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas] == [
        (0, "call_a", "weather", ""),
        (0, None, None, '{"city": '),
        (0, None, None, '"Oslo"}'),
        (1, "call_b", "time", ""),
    ]
    final = acc.finish(6)
    calls = final.outputs[0].tool_calls
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_a", "weather", '{"city": "Oslo"}'),
        ("call_b", "time", ""),
    ]
    assert final.outputs[0].finish_reason == "stop"  # stop + calls: the formatter says tool_calls
    assert final.outputs[0].num_tokens == 4  # one per chunk, no usage chunk


def test_n2_interleaved_and_usage_split_in_proportion() -> None:
    acc = accumulator(n=2)
    acc.feed(delta("a", index=0), 1)
    acc.feed(delta("b", index=1), 1)
    out = acc.feed(delta("c", index=0), 1)
    assert out is not None and [o.text_delta for o in out.outputs] == ["c", ""]
    assert [o.text for o in out.outputs] == ["ac", "b"]
    acc.feed(delta(index=1, finish="length"), 2)
    assert not acc.is_complete
    acc.feed(delta(index=0, finish="stop"), 2)
    assert acc.is_complete
    acc.feed(usage(5, 30), 3)
    final = acc.finish(3)
    assert [o.num_tokens for o in final.outputs] == [20, 10]
    assert [o.finish_reason for o in final.outputs] == ["stop", "length"]
    assert final.num_generated_tokens == 30


def test_split_tokens() -> None:
    assert split_tokens(10, [1, 1, 1]) == [4, 3, 3]
    assert split_tokens(7, [0, 0]) == [4, 3]
    assert sum(split_tokens(101, [3, 5, 9])) == 101


def test_chat_logprobs_count_tokens() -> None:
    acc = accumulator()
    entry = {
        "token": "Hi",
        "logprob": -0.1,
        "top_logprobs": [{"token": "Hi", "logprob": -0.1}, {"token": "Yo", "logprob": -2.5}],
    }
    chunk = delta("Hi there")
    chunk["choices"][0]["logprobs"] = {"content": [entry, {**entry, "token": " there"}]}
    out = acc.feed(chunk, 1)
    assert out is not None
    lp = out.outputs[0].logprobs
    assert lp is not None and len(lp) == 2 and out.outputs[0].num_tokens == 2
    assert (lp[0].token_id, lp[0].token, lp[0].logprob) == (-1, "Hi", -0.1)
    assert lp[0].top == ((-1, "Hi", -0.1), (-1, "Yo", -2.5))


def test_completion_chunks_with_logprobs() -> None:
    acc = accumulator(is_chat=False)
    chunk = {
        "object": "text_completion",
        "choices": [
            {
                "index": 0,
                "text": " a time",
                "logprobs": {
                    "tokens": [" a", " time"],
                    "token_logprobs": [-0.5, None],
                    "top_logprobs": [{" a": -0.5, " the": -1.0}, {" time": -0.1}],
                    "text_offset": [0, 2],
                },
                "finish_reason": None,
            }
        ],
    }
    out = acc.feed(chunk, 1)
    assert out is not None and out.outputs[0].text == " a time"
    assert out.outputs[0].num_tokens == 2
    lp = out.outputs[0].logprobs
    assert lp is not None and lp[0].top == ((-1, " a", -0.5), (-1, " the", -1.0))
    assert lp[1].logprob == -9999.0
    end = {"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}
    assert acc.feed(end, 2) is not None and acc.finish(3).outputs[0].finish_reason == "length"


@pytest.mark.parametrize(
    "chunk",
    [
        [1, 2],
        "text",
        {"object": "chat.completion.chunk"},
        {"choices": {"index": 0}},
        {"choices": [{"index": 3, "delta": {"content": "x"}}]},
        {"choices": [{"delta": {"content": "x"}}]},
        {"choices": [{"index": 0, "delta": {"content": 5}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": 7}]}}]},
        {"choices": [], "usage": {"prompt_tokens": "many"}},
    ],
)
def test_malformed_chunks(chunk: Any) -> None:
    with pytest.raises(StreamInterruptedError) as info:
        accumulator().feed(chunk, 1)
    assert info.value.code == "malformed_chunk" and info.value.target == "gpt"


def test_error_chunk_is_an_upstream_error_event() -> None:
    chunk = {"error": {"message": "model overloaded", "type": "server_error"}}
    with pytest.raises(StreamInterruptedError, match="model overloaded") as info:
        accumulator().feed(chunk, 1)
    assert info.value.code == "upstream_error_event"


def test_aborted_output_ends_unfinished_completions() -> None:
    acc = accumulator(n=2)
    acc.feed(delta("x", index=0, finish="stop"), 1)
    acc.feed(delta("y", index=1), 1)
    out = acc.aborted(2)
    assert out.finished and [o.finish_reason for o in out.outputs] == ["stop", "abort"]


def test_chunks_after_a_finish_are_ignored() -> None:
    acc = accumulator()
    acc.feed(delta("x", finish="stop"), 1)
    assert acc.feed(delta("more"), 2) is None
    assert acc.finish(3).outputs[0].text == "x"


def test_body_is_json_serialisable() -> None:
    body = chat_body(tools=[WEATHER], response_format={"type": "json_object"}, logprobs=True)
    assert json.loads(json.dumps(body)) == body
