"""The llguidance grammar (Lark syntax) that keeps a request's tool calls parseable.

Shapes, with ``CALL`` = ``<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>``:

- ``auto``: free text, or free text followed by ``CALL`` (``\\n`` ``CALL``)* and the end.
  Nothing is masked until the model itself writes ``<tool_call>``; from there the call must
  be valid JSON naming one of the functions, with arguments valid for its schema.
- ``required``: ``CALL`` (``\\n`` ``CALL``)*, no text.  ``named``: one ``CALL`` of that function.
- ``parallel=False``: at most one ``CALL``.
- ``auto`` with an answer schema (the request's ``response_format``): either JSON valid
  for that schema, or calls.

Where the model's vocabulary has ``<tool_call>`` as one special token (Qwen2.5), the grammar
names the token; text cannot spell it, so free text is the regex ``(.|\\n)*``. Otherwise
the opening is text, and free text ends at its first occurrence (a lazy lexeme).
"""

from __future__ import annotations

import json
from typing import Any

from inferline.core.tool_calls import CALL_CLOSE, CALL_OPEN, ToolCalling

# The same compact spacing as the template's ``tojson``: {"name": "f", "arguments": {"a": 1}}
JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def call_schema(calling: ToolCalling) -> dict[str, Any]:
    """The JSON Schema of one call's object: a known name, then arguments valid for it."""
    variants = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, "arguments": json.loads(f.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for f in calling.functions
    ]
    return {"x-guidance": JSON_OPTIONS, "anyOf": variants}


def tool_call_grammar(calling: ToolCalling, open_is_token: bool, close_is_token: bool) -> str:
    """Lark text for ``calling``; ``*_is_token``: the marker is one special token."""
    opening = CALL_OPEN if open_is_token else json.dumps(CALL_OPEN)
    closing = CALL_CLOSE if close_is_token else json.dumps(CALL_CLOSE)
    body = f'"\\n" %json {json.dumps(call_schema(calling))} "\\n" {closing}'
    more = '("\\n" call)*' if calling.parallel and calling.mode != "named" else ""
    lines = ["%llguidance {}", "TEXT: /(.|\\n)*/", f"call: {opening} body", f"body: {body}"]
    if calling.mode != "auto":
        lines.append(f"start: call {more}")
    elif calling.answer_schema:
        schema = {**json.loads(calling.answer_schema), "x-guidance": JSON_OPTIONS}
        lines.append(f"answer: %json {json.dumps(schema)}")
        lines.append(f"start: answer | call {more}")
    elif open_is_token:
        lines.append(f"start: TEXT | TEXT call {more}")
    else:
        # The lazy lexeme ends free text at the first "<tool_call>", so text cannot hide one.
        lines.append(f"head[lazy]: TEXT {opening}")
        lines.append(f"start: TEXT | head body {more}")
    return "\n".join(lines) + "\n"
