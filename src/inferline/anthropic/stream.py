"""Generator outputs -> the Messages API's stream events.

A stream is ``message_start`` (the message with no content and the input usage), then per
content block ``content_block_start``, its deltas (``text_delta``, ``input_json_delta``)
and ``content_block_stop``, then ``message_delta`` (stop reason, output usage) and
``message_stop``. Blocks are numbered in order over text and calls. Whitespace with no
text block open is held back until text follows (so a call's surrounding newlines do not
open a block of their own); an answer that is only whitespace still gets its text block.
A stream that fails after it started ends with an ``error`` event instead (the runner
writes it), never ``message_stop``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from inferline.anthropic.responses import stop_reason, usage
from inferline.core.outputs import RequestOutput, ToolCallDelta

Event = dict[str, Any]


class MessageChunker:
    """The events of one message, built output by output (``chunks``) and at the end
    (``final``); ``model`` is the one asked for, used until an output names its own."""

    def __init__(self, message_id: str, model: str, stop_sequences: Sequence[str]) -> None:
        self.message_id, self.model = message_id, model
        self.stop_sequences = tuple(stop_sequences)
        self.is_started = False
        self.num_blocks = 0
        self.open_kind: str | None = None  # "text" or "tool_use" while a block is open
        self.held_whitespace = ""
        self.has_text = False
        self.call_blocks: dict[int, int] = {}  # call index -> block index

    def chunks(self, _: int, output: RequestOutput) -> Iterator[Event]:
        """The events one output produces (the first output also starts the message)."""
        if not self.is_started:
            self.is_started = True
            yield self._message_start(output)
        completion = output.outputs[0]
        if completion.text_delta:
            yield from self._text(completion.text_delta)
        for delta in completion.tool_call_deltas:
            yield from self._call(delta)

    def final(self, outputs: list[RequestOutput]) -> list[Event]:
        """The last block's stop, ``message_delta`` and ``message_stop``."""
        events: list[Event] = []
        completion = outputs[0].outputs[0]
        if self.held_whitespace and not self.has_text and not completion.tool_calls:
            events += self._text("", hold=False)
        events += self._close()
        reason, sequence = stop_reason(completion, self.stop_sequences)
        return [
            *events,
            {
                "type": "message_delta",
                "delta": {"stop_reason": reason, "stop_sequence": sequence},
                "usage": usage(outputs),
            },
            {"type": "message_stop"},
        ]

    def _message_start(self, output: RequestOutput) -> Event:
        first = {**usage([output]), "output_tokens": 0}
        body: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": output.model or self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": first,
        }
        return {"type": "message_start", "message": body}

    def _text(self, text: str, hold: bool = True) -> Iterator[Event]:
        if self.open_kind != "text":
            if hold and not (self.held_whitespace + text).strip():
                self.held_whitespace += text
                return
            text, self.held_whitespace = self.held_whitespace + text, ""
            yield from self._close()
            yield self._start({"type": "text", "text": ""})
            self.open_kind, self.has_text = "text", True
        delta = {"type": "text_delta", "text": text}
        yield {"type": "content_block_delta", "index": self.num_blocks - 1, "delta": delta}

    def _call(self, delta: ToolCallDelta) -> Iterator[Event]:
        if delta.id is not None:
            self.held_whitespace = ""
            yield from self._close()
            block = {"type": "tool_use", "id": delta.id, "name": delta.name or "", "input": {}}
            yield self._start(block)
            self.open_kind = "tool_use"
            self.call_blocks[delta.index] = self.num_blocks - 1
        index = self.call_blocks.get(delta.index)
        if delta.arguments and index is not None:
            json_delta = {"type": "input_json_delta", "partial_json": delta.arguments}
            yield {"type": "content_block_delta", "index": index, "delta": json_delta}

    def _start(self, block: dict[str, Any]) -> Event:
        self.num_blocks += 1
        return {"type": "content_block_start", "index": self.num_blocks - 1, "content_block": block}

    def _close(self) -> Iterator[Event]:
        if self.open_kind is not None:
            self.open_kind = None
            yield {"type": "content_block_stop", "index": self.num_blocks - 1}
