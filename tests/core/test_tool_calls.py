"""Hermes tool-call helpers: the constraint spec, and conversations for tool-less templates."""

from __future__ import annotations

import json

import pytest

from inferline.core import InvalidParameterError
from inferline.core.tool_calls import (
    ToolCalling,
    ToolFunction,
    hermes_messages,
    template_renders_tools,
    template_speaks_hermes,
    with_parsed_arguments,
)

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def call(name: str, arguments: str) -> dict:  # type: ignore[type-arg]
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_tool_calling_round_trips_through_its_structured_form() -> None:
    calling = ToolCalling(
        (ToolFunction("f", '{"type": "object"}'), ToolFunction("g")), "required", False
    )
    structured = calling.to_structured()
    assert (structured.kind, structured.param) == ("tool_calls", "tools")
    assert ToolCalling.from_spec(structured.spec) == calling
    with pytest.raises(InvalidParameterError):
        ToolCalling((), "auto")
    with pytest.raises(InvalidParameterError):
        ToolCalling((ToolFunction("f"), ToolFunction("g")), "named")


def test_hermes_messages_write_calls_and_results_as_text() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call("f", '{"a": 1}')]},
        {"role": "tool", "tool_call_id": "c", "content": "one"},
        {"role": "tool", "tool_call_id": "d", "content": "two"},
    ]
    out = hermes_messages(with_parsed_arguments(messages), [TOOL])
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(TOOL) in out[0]["content"]
    assert out[2] == {
        "role": "assistant",
        "content": 'Checking.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>',
    }
    assert out[3] == {
        "role": "user",
        "content": "<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n</tool_response>",
    }
    assert len(out) == 4
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == '{"a": 1}'  # not mutated


def test_without_tools_no_system_turn_is_added() -> None:
    out = hermes_messages([{"role": "user", "content": "hi"}], None)
    assert out == [{"role": "user", "content": "hi"}]
    assert hermes_messages([{"role": "user", "content": "hi"}], [TOOL])[0]["role"] == "system"


def test_arguments_that_are_not_json_stay_text() -> None:
    (message,) = with_parsed_arguments([{"role": "assistant", "tool_calls": [call("f", "{x")]}])
    assert message["tool_calls"][0]["function"]["arguments"] == "{x"


def test_template_detection() -> None:
    assert not template_renders_tools("{{ messages }}") and not template_renders_tools(None)
    assert template_renders_tools("{% if tools %}") and not template_speaks_hermes("{% if tools %}")
    assert template_speaks_hermes("{% if tools %}<tool_call>{% endif %}")
