"""The Responses API as data: input items -> chat messages, ``text.format`` and tools ->
the chat body, outputs -> the response object and its stream events (fixed cases)."""

from __future__ import annotations

from typing import Any

import pytest

from inferline.core import CompletionOutput, RequestMetrics, RequestOutput
from inferline.core.errors import InvalidParameterError
from inferline.core.outputs import ToolCall, ToolCallDelta
from inferline.openai.responses_api import ResponsesRequest, chat_body, input_messages
from inferline.openai.responses_output import (
    ResponseEvents,
    failed,
    finished,
    history_messages,
    output_items,
    response_shell,
)


def output(completion: CompletionOutput, prompt_tokens: int = 5) -> RequestOutput:
    return RequestOutput("r", None, [], [completion], completion.finish_reason is not None,
                         RequestMetrics(0.0), num_prompt_tokens=prompt_tokens)  # fmt: skip


def shell() -> dict[str, Any]:
    return response_shell(ResponsesRequest(model="m", input="x"), "resp_1", "m")


def test_text_then_calls_join_one_assistant_turn() -> None:
    body = ResponsesRequest(model="m", input=[
        {"role": "user", "content": [{"type": "input_text", "text": "a"},
                                     {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text",
                                                              "text": "checking"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "reasoning", "summary": []},
        {"type": "function_call_output", "call_id": "c1", "output": {"ok": True}},
    ])  # fmt: skip
    assert input_messages(body) == [
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "checking", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": '{"ok": true}', "tool_call_id": "c1"},
    ]  # fmt: skip


def test_the_chat_body_keeps_unset_fields_unset() -> None:
    body = ResponsesRequest(
        model="m", input="hi", instructions="rules", include=["message.output_text.logprobs"],
        text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"},
                         "strict": True}},
        tools=[{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "f"}, max_output_tokens=9,
    )  # fmt: skip
    chat = chat_body(body, [{"role": "user", "content": "before"}], input_messages(body))
    assert [m.role for m in chat.messages] == ["system", "user", "user"]
    assert chat.response_format == {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": True}}  # fmt: skip
    assert chat.tools == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}}}]  # fmt: skip
    assert chat.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert chat.max_completion_tokens == 9 and chat.logprobs and chat.top_logprobs == 0
    assert "temperature" not in chat.model_fields_set  # the model's defaults may apply


def test_a_bad_message_inside_is_a_400_naming_it() -> None:
    body = ResponsesRequest(model="m", input="x", metadata={"k": "v"})
    with pytest.raises(InvalidParameterError) as error:
        chat_body(body, [{"role": "user", "content": 5}], [])
    assert error.value.param is not None and error.value.param.startswith("messages.0")


def test_a_length_cut_is_incomplete_and_calls_are_items() -> None:
    cut = CompletionOutput(0, text="abc", num_tokens=3, finish_reason="length")
    response = finished(shell(), [output(cut)], output_items(cut))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["usage"]["input_tokens"] == 5 and response["usage"]["output_tokens"] == 3
    two = [ToolCall("c1", "f", "{}"), ToolCall("c2", "g", "[]")]
    calls = CompletionOutput(0, text="", finish_reason="tool_calls", tool_calls=two)
    items = output_items(calls)
    assert [i["type"] for i in items] == ["function_call", "function_call"]
    assert finished(shell(), [output(calls)], items)["status"] == "completed"
    assert history_messages(items)[0]["tool_calls"][1]["function"]["name"] == "g"


def test_stream_events_text_then_two_calls() -> None:
    events = ResponseEvents(shell())
    steps = [
        CompletionOutput(0, text="Hi", text_delta="Hi", num_tokens_delta=1),
        CompletionOutput(0, tool_call_deltas=[ToolCallDelta(0, "", "c1", "f")]),
        CompletionOutput(0, tool_call_deltas=[ToolCallDelta(0, '{"a":')]),
        CompletionOutput(0, finish_reason="tool_calls", tool_call_deltas=[
            ToolCallDelta(0, "1}"), ToolCallDelta(1, "{}", "c2", "g")]),
    ]  # fmt: skip
    sent = [e for step in steps for e in events.chunks(0, output(step))]
    ending, response = events.ending(lambda items: finished(shell(), [output(steps[-1])], items))
    sent += ending
    kinds = [e["type"] for e in sent]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e["sequence_number"] for e in sent] == list(range(len(sent)))
    done = [e["item"] for e in sent if e["type"] == "response.output_item.done"]
    assert [i["id"] for i in done] == [i["id"] for i in response["output"]]
    assert response["output"][1]["arguments"] == '{"a":1}'
    assert [e["output_index"] for e in sent if e["type"] == "response.output_item.added"] == [
        0, 1, 2]  # fmt: skip


def test_an_empty_answer_is_one_empty_message_and_a_failure_never_completes() -> None:
    events = ResponseEvents(shell())
    stop = CompletionOutput(0, finish_reason="stop")
    list(events.chunks(0, output(stop)))
    ending, response = events.ending(lambda items: finished(shell(), [output(stop)], items))
    assert response["output"][0]["content"][0]["text"] == ""
    assert ending[-1]["type"] == "response.completed"
    broken = ResponseEvents(shell())
    list(broken.chunks(0, output(CompletionOutput(0, text="a", text_delta="a"))))
    lost = failed(shell(), "stream_cut", "upstream dropped", broken.items)
    kinds = [e["type"] for e in broken.failure(lost, "stream_cut", "upstream dropped")]
    assert kinds == ["error", "response.failed"]
