"""Generated text -> content and tool calls, as the text streams in (Hermes format).

The model writes ``text <tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``.
`HermesToolParser` turns text deltas into events: content deltas (text outside calls, with
the whitespace before a call dropped), the start of a call (its id and name, once the
name is complete) and argument deltas (the raw JSON text of ``arguments``, streamed as it
arrives, holding back only what may be the closing ``}`` and ``</tool_call>``). A
non-streaming response runs the same parser over the whole text, so both agree exactly.
`ToolOutputParser` turns the events into what `CompletionOutput` carries: content deltas
and `ToolCallDelta`s, with the calls so far.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from inferline.core.outputs import ToolCall, ToolCallDelta
from inferline.core.tool_calls import CALL_CLOSE, CALL_OPEN

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


@dataclass(frozen=True)
class ContentDelta:
    """Text outside tool calls."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call begins: its position among the choice's calls, its id and function name."""

    index: int
    call_id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    """More of one call's ``arguments`` JSON text."""

    index: int
    text: str


ToolEvent = ContentDelta | CallStart | ArgumentsDelta


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (0 if none)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class HermesToolParser:
    """Incremental parser for one choice's text. Feed deltas, then call `finish` once."""

    def __init__(self) -> None:
        self._buffer = ""
        self._state = "text"  # text | header | arguments
        self._num_calls = 0
        self._after_call = False  # whitespace right after a call is not content
        self._arguments = ""  # the current call's arguments text streamed so far

    @property
    def num_calls(self) -> int:
        """Calls started so far."""
        return self._num_calls

    def feed(self, text: str) -> list[ToolEvent]:
        """Events the new text completes (possibly none: a marker may be half written)."""
        self._buffer += text
        events: list[ToolEvent] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[ToolEvent]:
        """Flushes what was held back; an unfinished call's text stays with its kind."""
        events: list[ToolEvent] = []
        rest, self._buffer = self._buffer, ""
        if self._state == "text":
            self._content(events, rest.strip() if self._num_calls else rest)
        elif self._state == "header":
            self._content(events, CALL_OPEN + rest)
        else:  # cut inside the arguments: drop the object's "}" only if the rest then parses
            tail = _without_closing_brace(rest)
            if not _parses(self._arguments + tail):
                tail = rest.rstrip()
            self._arguments_delta(events, tail)
        return events

    def _arguments_delta(self, events: list[ToolEvent], text: str) -> None:
        if text:
            self._arguments += text
            events.append(ArgumentsDelta(self._num_calls - 1, text))

    def _content(self, events: list[ToolEvent], text: str) -> None:
        if self._after_call:
            text = text.lstrip()
        if text:
            self._after_call = False
            events.append(ContentDelta(text))

    def _step(self, events: list[ToolEvent]) -> bool:
        """Consumes what it can of the buffer; False when it must wait for more text."""
        if self._state == "text":
            return self._step_text(events)
        if self._state == "header":
            return self._step_header(events)
        return self._step_arguments(events)

    def _step_text(self, events: list[ToolEvent]) -> bool:
        start = self._buffer.find(CALL_OPEN)
        if start >= 0:
            self._content(events, self._buffer[:start].rstrip())
            self._buffer = self._buffer[start + len(CALL_OPEN) :]
            self._state = "header"
            return True
        held = _partial_suffix(self._buffer, CALL_OPEN)
        safe = self._buffer[: len(self._buffer) - held]
        safe = safe.rstrip()  # whitespace is content only if text follows it
        self._content(events, safe)
        self._buffer = self._buffer[len(safe) :]
        return False

    def _step_header(self, events: list[ToolEvent]) -> bool:
        match = _HEADER.match(self._buffer)
        if match is not None:
            name = json.loads(f'"{match.group(1)}"')
            events.append(CallStart(self._num_calls, _new_call_id(), name))
            self._num_calls += 1
            self._arguments = ""
            self._buffer = self._buffer[match.end() :]
            self._state = "arguments"
            return True
        end = self._buffer.find(CALL_CLOSE)
        if end < 0:
            return False
        body, self._buffer = self._buffer[:end], self._buffer[end + len(CALL_CLOSE) :]
        self._state = "text"
        call = _loads_call(body)
        if call is None:  # not a call after all: keep the text
            self._content(events, CALL_OPEN + body + CALL_CLOSE)
            return True
        events.append(CallStart(self._num_calls, _new_call_id(), call[0]))
        events.append(ArgumentsDelta(self._num_calls, json.dumps(call[1], ensure_ascii=False)))
        self._num_calls += 1
        self._after_call = True
        return True

    def _step_arguments(self, events: list[ToolEvent]) -> bool:
        end = self._buffer.find(CALL_CLOSE)
        if end >= 0:
            self._arguments_delta(events, _without_closing_brace(self._buffer[:end]))
            self._buffer = self._buffer[end + len(CALL_CLOSE) :]
            self._state = "text"
            self._after_call = True
            return True
        held = _partial_suffix(self._buffer, CALL_CLOSE)
        safe = _without_closing_brace(self._buffer[: len(self._buffer) - held])
        self._arguments_delta(events, safe)
        self._buffer = self._buffer[len(safe) :]
        return False


def _without_closing_brace(text: str) -> str:
    """``text`` less trailing whitespace and one ``}`` (the call object's own)."""
    text = text.rstrip()
    return text[:-1].rstrip() if text.endswith("}") else text


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _loads_call(body: str) -> tuple[str, Any] | None:
    try:
        call = json.loads(body)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    return call["name"], call.get("arguments", call.get("parameters", {}))


@dataclass
class ParsedMessage:
    """A whole choice's text, parsed: ``content`` (None when empty) and its tool calls."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


def parse_tool_output(text: str) -> ParsedMessage:
    """Parses a finished choice (the same events a stream of it would give)."""
    parser = HermesToolParser()
    return accumulate([*parser.feed(text), *parser.finish()])


def accumulate(events: list[ToolEvent]) -> ParsedMessage:
    """Joins events into a message: content text, calls in OpenAI's shape."""
    parsed = ParsedMessage()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    parsed.content = content or None
    for event in events:
        if isinstance(event, CallStart):
            function = {"name": event.name, "arguments": ""}
            parsed.tool_calls.append(
                {"id": event.call_id, "type": "function", "function": function}
            )
        elif isinstance(event, ArgumentsDelta):
            parsed.tool_calls[event.index]["function"]["arguments"] += event.text
    return parsed


class ToolOutputParser:
    """One completion's text deltas -> content deltas and tool-call deltas, cumulatively."""

    def __init__(self) -> None:
        self._parser = HermesToolParser()
        self.content = ""
        self._calls: list[list[str]] = []  # [id, name, arguments] per call

    def feed(self, text: str, is_last: bool) -> tuple[str, list[ToolCallDelta]]:
        """The content and call deltas that ``text`` completes (``is_last``: flush all)."""
        events = self._parser.feed(text) + (self._parser.finish() if is_last else [])
        content, deltas = "", []
        for event in events:
            if isinstance(event, ContentDelta):
                content += event.text
            elif isinstance(event, CallStart):
                self._calls.append([event.call_id, event.name, ""])
                deltas.append(ToolCallDelta(event.index, "", event.call_id, event.name))
            else:
                self._calls[event.index][2] += event.text
                deltas.append(ToolCallDelta(event.index, event.text))
        self.content += content
        return content, deltas

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls so far (the last one may still be growing)."""
        return [ToolCall(call_id, name, arguments) for call_id, name, arguments in self._calls]
