"""The Hermes tool-call parser: streamed in any pieces, it gives what a whole parse gives."""

from __future__ import annotations

import random

import pytest

from inferline.engine.tool_parser import (
    ArgumentsDelta,
    CallStart,
    HermesToolParser,
    ParsedMessage,
    accumulate,
    parse_tool_output,
)

TWO_CALLS = (
    "Let me check both.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris", "where": {"lat": [48, 2]}}}'
    '\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)
TEXTS = [
    "Plain text, with trailing space and a newline.  \n",
    TWO_CALLS,
    '<tool_call>\n{"name": "f", "arguments": {"s": "a } b </tool"}}\n</tool_call>',
    '<tool_call>\n{"arguments": {"x": 1}, "name": "f"}\n</tool_call>',  # name second
    '<tool_call>\n{"name": "f", "arguments": {"x": 1}}',  # cut before </tool_call>
    '<tool_call>\n{"name": "f", "arguments": {"x": "abc',  # cut inside the arguments
    '<tool_call>\n{"name": "f", "argu',  # cut inside the header
    "<tool_call>\nnot json\n</tool_call>",
    "a <tool_ca b",  # half a marker is text
]


def streamed(text: str, rng: random.Random) -> ParsedMessage:
    parser, events, i = HermesToolParser(), [], 0
    while i < len(text):
        step = rng.randint(1, 6)
        events += parser.feed(text[i : i + step])
        i += step
    return accumulate(events + parser.finish())


def functions(message: ParsedMessage) -> list[dict[str, str]]:
    return [call["function"] for call in message.tool_calls]


@pytest.mark.parametrize("text", TEXTS)
def test_streaming_in_any_pieces_equals_the_whole_parse(text: str) -> None:
    whole = parse_tool_output(text)
    rng = random.Random(0)
    for _ in range(100):
        pieces = streamed(text, rng)
        assert pieces.content == whole.content
        assert functions(pieces) == functions(whole)


def test_content_and_calls_are_split_and_arguments_are_the_raw_json() -> None:
    parsed = parse_tool_output(TWO_CALLS)
    assert parsed.content == "Let me check both."
    assert functions(parsed) == [
        {"name": "get_weather", "arguments": '{"city": "Paris", "where": {"lat": [48, 2]}}'},
        {"name": "get_time", "arguments": "{}"},
    ]
    ids = [call["id"] for call in parsed.tool_calls]
    assert all(i.startswith("call_") for i in ids) and len(set(ids)) == 2
    assert all(call["type"] == "function" for call in parsed.tool_calls)


def test_text_without_calls_is_content_unchanged() -> None:
    assert parse_tool_output(TEXTS[0]).content == TEXTS[0]
    assert parse_tool_output(TEXTS[0]).tool_calls == []
    assert parse_tool_output("a <tool_ca b").content == "a <tool_ca b"


def test_odd_and_cut_calls() -> None:
    assert functions(parse_tool_output(TEXTS[2]))[0]["arguments"] == '{"s": "a } b </tool"}'
    assert functions(parse_tool_output(TEXTS[3])) == [{"name": "f", "arguments": '{"x": 1}'}]
    assert functions(parse_tool_output(TEXTS[4])) == [{"name": "f", "arguments": '{"x": 1}'}]
    assert functions(parse_tool_output(TEXTS[5])) == [{"name": "f", "arguments": '{"x": "abc'}]
    header_cut = parse_tool_output(TEXTS[6])
    assert header_cut.tool_calls == [] and header_cut.content == TEXTS[6]
    not_json = parse_tool_output(TEXTS[7])
    assert not_json.tool_calls == [] and not_json.content == TEXTS[7]


def test_arguments_stream_before_the_call_ends() -> None:
    parser = HermesToolParser()
    events = parser.feed('<tool_call>\n{"name": "f", "arguments": {"text": "once upon')
    assert [type(e) for e in events] == [CallStart, ArgumentsDelta]
    assert isinstance(events[0], CallStart) and events[0].name == "f"
    assert events[1] == ArgumentsDelta(0, '{"text": "once upon')
    events = parser.feed(' a time"}}')  # the last "}" may be the call's own: held back
    assert events == [ArgumentsDelta(0, ' a time"}')]
    assert parser.feed("\n</tool_call>") == []
    assert parser.finish() == []
