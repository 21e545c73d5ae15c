"""Tool calling in the Hermes format, which Qwen2.5's chat template speaks.

A call is written ``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>``; several
calls follow each other separated by a newline, and a tool's result comes back in a user
turn as ``<tool_response>\\n...\\n</tool_response>``. What the model may or must call
(`ToolCalling`) travels to the engine as a `StructuredOutput` of kind ``tool_calls``, so the
grammar keeps every call parseable. Templates that do not render tools (SmolLM2's) get the
same format through `hermes_messages`: the tool list in the system prompt, earlier calls and
results written out as text.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from inferline.core.errors import InvalidParameterError
from inferline.core.structured import StructuredOutput

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
ToolMode = Literal["auto", "required", "named"]


@dataclass(frozen=True)
class ToolFunction:
    """One callable function: its name and its parameters' JSON Schema (as JSON text)."""

    name: str
    parameters: str = '{"type": "object"}'


@dataclass(frozen=True)
class ToolCalling:
    """What the model may call, and whether it must.

    Attributes:
        functions: the callable functions (for ``named``, only the chosen one).
        mode: ``auto`` (text, calls, or text then calls), ``required`` (one or more calls
            and nothing else) or ``named`` (exactly one call of ``functions[0]``).
        parallel: whether more than one call may follow each other (``auto``/``required``).
        answer_schema: for ``auto``, the JSON Schema (as JSON text) a text answer must
            follow when the request also has a ``response_format``; empty: free text.
    """

    functions: tuple[ToolFunction, ...]
    mode: ToolMode = "auto"
    parallel: bool = True
    answer_schema: str = ""

    def __post_init__(self) -> None:
        if not self.functions:
            raise InvalidParameterError("tool calling needs at least one function", "tools")
        if self.mode == "named" and len(self.functions) != 1:
            raise InvalidParameterError("a named tool choice calls exactly one function", "tools")

    def to_structured(self) -> StructuredOutput:
        """The constraint the engine enforces (kind ``tool_calls``, this object as JSON)."""
        spec = {
            "mode": self.mode,
            "parallel": self.parallel,
            "functions": [{"name": f.name, "parameters": f.parameters} for f in self.functions],
            "answer_schema": self.answer_schema,
        }
        return StructuredOutput("tool_calls", json.dumps(spec), "tools")

    @classmethod
    def from_spec(cls, spec: str) -> ToolCalling:
        """The inverse of `to_structured` (the engine reads the constraint's text)."""
        data = json.loads(spec)
        functions = tuple(ToolFunction(f["name"], f["parameters"]) for f in data["functions"])
        return cls(functions, data["mode"], data["parallel"], data.get("answer_schema", ""))


def template_renders_tools(template: str | None) -> bool:
    """Whether a chat template renders a ``tools`` list itself."""
    return template is not None and "tools" in template


def template_speaks_hermes(template: str | None) -> bool:
    """Whether a template that renders tools asks for ``<tool_call>`` blocks (Qwen2.5)."""
    return template is not None and CALL_OPEN in template


def format_call(name: str, arguments: Any) -> str:
    """One call as the model writes it (``arguments`` a JSON value, not text)."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def _tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The tool instructions Qwen2.5's template writes into its system turn."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{listed}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments "
        f"within {CALL_OPEN}{CALL_CLOSE} XML tags:\n"
        f'{CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{CALL_CLOSE}'
    )


def hermes_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """A conversation with tools, rewritten for a template that knows only text turns.

    The tool list joins the system message (one is added if there is none); assistant
    ``tool_calls`` become ``<tool_call>`` blocks after the message's text; consecutive
    ``tool`` messages become one user message of ``<tool_response>`` blocks.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            block = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("is_tool_response"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "is_tool_response": True})
            continue
        if role == "assistant" and message.get("tool_calls"):
            calls = [_call_text(call) for call in message["tool_calls"]]
            text = "\n".join(([message["content"]] if message.get("content") else []) + calls)
            out.append({"role": "assistant", "content": text})
            continue
        out.append({k: v for k, v in message.items() if k != "tool_calls"})
    for message in out:
        message.pop("is_tool_response", None)
    if tools:
        prompt = _tools_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def with_parsed_arguments(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages whose assistant ``tool_calls`` carry ``arguments`` as JSON values.

    OpenAI clients send arguments as JSON text; chat templates (``arguments | tojson``)
    expect the value, as transformers and vLLM pass it. Text that does not parse stays text.
    """
    return [_parse_arguments(m) if m.get("tool_calls") else dict(m) for m in messages]


def _parse_arguments(message: dict[str, Any]) -> dict[str, Any]:
    calls = []
    for call in message["tool_calls"]:
        function = dict(call.get("function") or {})
        if isinstance(function.get("arguments"), str):
            with contextlib.suppress(ValueError):
                function["arguments"] = json.loads(function["arguments"])
        calls.append({**call, "function": function})
    return {**message, "tool_calls": calls}


def _call_text(call: dict[str, Any]) -> str:
    function = call.get("function", call)
    return format_call(function.get("name", ""), function.get("arguments", {}))
