"""The Messages API mapping with fixed cases: bodies -> chat requests, outputs -> message
objects and stream events."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from inferline.anthropic import MessageChunker, MessagesRequest, chat_request, message
from inferline.anthropic.responses import stop_reason
from inferline.core.errors import InvalidParameterError, StreamInterruptedError
from inferline.core.outputs import (
    CompletionOutput,
    RequestMetrics,
    RequestOutput,
    ToolCall,
    ToolCallDelta,
)
from inferline.openai.requests import chat_generation

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def body(**fields: Any) -> MessagesRequest:
    base: dict[str, Any] = {
        "model": "m",
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return MessagesRequest.model_validate({**base, **fields})


def rendered(**fields: Any) -> list[dict[str, Any]]:
    """The messages as the chat template gets them."""
    return chat_generation(chat_request(body(**fields)), "r").request.messages or []


def test_system_blocks_and_content_blocks_become_chat_messages() -> None:
    messages = rendered(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "a"},
                                         {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"},
        ],
    )  # fmt: skip
    assert messages == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]


def test_tool_use_and_tool_results_map_to_calls_and_tool_messages() -> None:
    messages = rendered(
        tools=[{"name": "get_weather", "input_schema": WEATHER}],
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather",
                 "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "call_2", "name": "get_weather",
                 "input": {"city": "Rome"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "cold"},
                {"type": "tool_result", "tool_use_id": "call_2", "is_error": True,
                 "content": [{"type": "text", "text": "no data"}]},
                {"type": "text", "text": "and?"},
            ]},
        ],
    )  # fmt: skip
    assistant = messages[1]
    assert assistant["content"] == "Checking."
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["get_weather"] * 2
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    assert messages[2:] == [
        {"role": "tool", "content": "cold", "tool_call_id": "call_1"},
        {"role": "tool", "content": "Error: no data", "tool_call_id": "call_2"},
        {"role": "user", "content": "and?"},
    ]


@pytest.mark.parametrize(
    ("choice", "mode"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "tool", "name": "get_weather"}, "named"),
        ({"type": "none"}, "none"),
        (None, "auto"),
    ],
)
def test_tool_choice_modes(choice: dict[str, Any] | None, mode: str) -> None:
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": WEATHER},
             {"name": "get_time"}]  # fmt: skip
    chat = chat_request(body(tools=tools, tool_choice=choice))
    assert chat.tools is not None and chat.tools[0]["function"]["parameters"] == WEATHER
    assert chat.tools[0]["function"]["description"] == "Weather"
    assert chat_generation(chat, "r").tool_mode == mode


def test_disable_parallel_tool_use_and_sampling_fields() -> None:
    chat = chat_request(
        body(
            tools=[{"name": "t"}],
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            stop_sequences=["END", "\n\n"],
            temperature=0.5, top_p=0.9, top_k=40,
            metadata={"user_id": "u-1"},
            thinking={"type": "enabled", "budget_tokens": 1024},  # accepted, ignored
        )
    )  # fmt: skip
    assert chat.parallel_tool_calls is False
    assert (chat.stop, chat.temperature, chat.top_p, chat.top_k) == (["END", "\n\n"], 0.5, 0.9, 40)
    assert (chat.user, chat.max_tokens) == ("u-1", 32)
    params = chat_generation(chat, "r").request.params
    assert params.stop == ("END", "\n\n") and params.max_tokens == 32


def test_unset_sampling_fields_stay_unset() -> None:
    chat = chat_request(body())
    assert "temperature" not in chat.model_fields_set and "top_k" not in chat.model_fields_set


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "image", "source": {"type": "base64", "data": "x"}}],
         "messages[0].content[0].type"),
        ([{"type": "text", "text": "a"}, {"type": "document", "source": {}}],
         "messages[0].content[1].type"),
        ([{"type": "tool_result", "tool_use_id": "x",
           "content": [{"type": "image", "source": {}}]}],
         "messages[0].content[0].content[0].type"),
        ([{"type": "tool_result"}], "messages[0].content[0].tool_use_id"),
        ([{"type": "text"}], "messages[0].content[0].text"),
    ],
)  # fmt: skip
def test_unsupported_or_incomplete_blocks_are_400_naming_the_field(
    content: list[dict[str, Any]], param: str
) -> None:
    with pytest.raises(InvalidParameterError) as info:
        chat_request(body(messages=[{"role": "user", "content": content}]))
    assert info.value.param == param
    if param.endswith(".type"):
        assert "not supported" in info.value.message


def test_server_tools_and_a_tool_choice_without_name_are_400() -> None:
    with pytest.raises(InvalidParameterError) as info:
        chat_request(body(tools=[{"name": "web", "type": "web_search_20250305"}]))
    assert info.value.param == "tools[0].type"
    with pytest.raises(InvalidParameterError) as info:
        chat_request(body(tools=[{"name": "t"}], tool_choice={"type": "tool"}))
    assert info.value.param == "tool_choice.name"


def test_thinking_blocks_of_earlier_turns_are_dropped() -> None:
    turn = [
        {"type": "thinking", "thinking": "hmm", "signature": "s"},
        {"type": "text", "text": "ok"},
    ]
    messages = rendered(messages=[{"role": "user", "content": "q"},
                                  {"role": "assistant", "content": turn},
                                  {"role": "user", "content": "r"}])  # fmt: skip
    assert messages[1] == {"role": "assistant", "content": "ok"}


def output(
    text: str = "",
    finish: Any = "stop",
    calls: tuple[ToolCall, ...] = (),
    matched: str | int | None = None,
    **extra: Any,
) -> RequestOutput:
    completion = CompletionOutput(
        0, text=text, num_tokens=7, finish_reason=finish, stop_reason=matched,
        tool_calls=list(calls), **extra,
    )  # fmt: skip
    metrics = RequestMetrics(arrival_s=time.time(), num_cached_prompt_tokens=4)
    return RequestOutput("r", None, [], [completion], finish is not None, metrics,
                         num_prompt_tokens=10, model="served")  # fmt: skip


def test_message_object_with_usage_and_cache_reads() -> None:
    body_ = message("msg_1", "asked", [output("Hello.")], ())
    assert body_ == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello."}],
        "model": "served",
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 6, "output_tokens": 7, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 4},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("finish", "calls", "matched", "expected"),
    [
        ("length", (), None, ("max_tokens", None)),
        ("stop", (), "END", ("stop_sequence", "END")),
        ("stop", (), 2, ("end_turn", None)),  # the EOS token id
        ("stop", (), "<|im_end|>", ("end_turn", None)),  # a stop string the client did not set
        ("stop", (ToolCall("c", "t", "{}"),), None, ("tool_use", None)),
        ("length", (ToolCall("c", "t", '{"a"'),), None, ("max_tokens", None)),
        ("content_filter", (), None, ("refusal", None)),
    ],
)
def test_stop_reasons(
    finish: Any, calls: tuple[ToolCall, ...], matched: Any, expected: Any
) -> None:
    completion = output(finish=finish, calls=calls, matched=matched).outputs[0]
    assert stop_reason(completion, ["END"]) == expected


def test_tool_use_blocks_have_parsed_input_and_whitespace_is_no_block() -> None:
    calls = (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    content = message("m", "m", [output("\n", calls=calls)], ())["content"]
    assert content == [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                        "input": {"city": "Oslo"}}]  # fmt: skip
    with pytest.raises(StreamInterruptedError):
        message("m", "m", [output(calls=(ToolCall("c", "t", "[1]"),))], ())


def step(text: str = "", deltas: tuple[ToolCallDelta, ...] = (), finish: Any = None,
         calls: tuple[ToolCall, ...] = (), matched: Any = None) -> RequestOutput:  # fmt: skip
    return output(text="", finish=finish, calls=calls, matched=matched, text_delta=text,
                  tool_call_deltas=list(deltas))  # fmt: skip


def test_stream_events_for_text_then_a_call() -> None:
    chunker = MessageChunker("msg_1", "asked", ["END"])
    outputs = [
        step("Let me"),
        step(" check."),
        step("\n", (ToolCallDelta(0, "", "call_1", "get_weather"),)),
        step("", (ToolCallDelta(0, '{"city": '),)),
        step("\n", (ToolCallDelta(0, '"Oslo"}'),), "stop",
             (ToolCall("call_1", "get_weather", "{}"),)),
    ]  # fmt: skip
    events = [e for o in outputs for e in chunker.chunks(0, o)] + chunker.final(outputs[-1:])
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "content_block_start",
        "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    start = events[0]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == 6
    assert start["usage"]["output_tokens"] == 0 and start["model"] == "served"
    assert events[1] == {"type": "content_block_start", "index": 0,
                         "content_block": {"type": "text", "text": ""}}  # fmt: skip
    assert events[3]["delta"] == {"type": "text_delta", "text": " check."}
    assert events[4]["delta"] == {"type": "text_delta", "text": "\n"}  # inside the open block
    assert events[6]["content_block"] == {"type": "tool_use", "id": "call_1",
                                          "name": "get_weather", "input": {}}  # fmt: skip
    partial = "".join(e["delta"]["partial_json"] for e in events[7:9])
    assert [e["index"] for e in events[7:10]] == [1, 1, 1] and json.loads(partial) == {
        "city": "Oslo"
    }
    assert events[10]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[10]["usage"]["output_tokens"] == 7  # the "\n" after the call opened no block


def test_stream_stop_sequence_and_an_all_whitespace_answer() -> None:
    chunker = MessageChunker("m", "m", ["END"])
    last = step(" ", finish="stop", matched="END")
    events = list(chunker.chunks(0, last)) + chunker.final([last])
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[2]["delta"]["text"] == " "
    assert events[4]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_output_config_format_becomes_a_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    fields = {"output_config": {"format": {"type": "json_schema", "schema": schema},
                                "effort": "low"}}  # fmt: skip
    chat = chat_request(body(**fields))
    assert chat.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    structured = chat_generation(chat, "r").request.params.structured
    assert structured is not None and json.loads(structured.spec or "{}") == schema


def test_a_last_assistant_turn_is_a_prefill_the_answer_continues() -> None:
    turns = [{"role": "user", "content": "Capital of France?"},
             {"role": "assistant", "content": "The capital is"}]  # fmt: skip
    request = chat_generation(chat_request(body(messages=turns)), "r").request
    assert request.assistant_prefix == "The capital is"
    assert request.messages == [{"role": "user", "content": "Capital of France?"}]
    assert not chat_request(body()).continue_final_message
