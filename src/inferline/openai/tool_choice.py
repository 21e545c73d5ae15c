"""``tools``, ``tool_choice`` and ``parallel_tool_calls`` of a chat request, checked.

The result says what the chat template renders (the tools, unless ``tool_choice`` is
``none``) and what the engine enforces (`ToolCalling`: a grammar that keeps calls valid,
and for ``required`` or a named function, forces them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.core.tool_calls import ToolCalling, ToolFunction, ToolMode
from inferline.openai.schemas import ChatCompletionRequest

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolPlan:
    """How one chat request uses tools.

    Attributes:
        template_tools: the tool list handed to the chat template (None: no tools shown).
        calling: the calls the engine allows or forces (None: the output is plain text).
    """

    template_tools: list[dict[str, Any]] | None = None
    calling: ToolCalling | None = None

    @property
    def mode(self) -> str:
        """``none``, ``auto``, ``required`` or ``named``."""
        return "none" if self.calling is None else self.calling.mode


def plan_tools(body: ChatCompletionRequest) -> ToolPlan:
    """Checks the tool fields (400 naming the field) and says how the request uses them."""
    functions = [_function(tool, i) for i, tool in enumerate(body.tools or [])]
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise InvalidParameterError(
            f"tools: the function name {duplicate!r} is used twice", "tools"
        )
    choice = body.tool_choice
    if choice is None:
        choice = "auto" if functions else "none"
    if choice == "none":
        return ToolPlan()
    if not functions:
        raise InvalidParameterError("tool_choice needs tools to choose from", "tool_choice")
    parallel = body.parallel_tool_calls is not False
    if choice in ("auto", "required"):
        mode: ToolMode = "auto" if choice == "auto" else "required"
        calling = ToolCalling(tuple(functions), mode, parallel)
    else:
        name = _chosen_name(choice)
        chosen = [f for f in functions if f.name == name]
        if not chosen:
            raise InvalidParameterError(
                f"tool_choice names {name!r}, which is not in tools", "tool_choice"
            )
        calling = ToolCalling(tuple(chosen), "named", False)
    return ToolPlan(body.tools, calling)


def _function(tool: dict[str, Any], index: int) -> ToolFunction:
    where = f"tools[{index}]"
    if tool.get("type") != "function":
        raise InvalidParameterError(f"{where}.type must be 'function'", f"{where}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise InvalidParameterError(f"{where}.function must be an object", f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidParameterError(
            f"{where}.function.name must be 1-64 letters, digits, '_' or '-'",
            f"{where}.function.name",
        )
    parameters = function.get("parameters")
    if parameters is None:
        return ToolFunction(name)
    if not isinstance(parameters, dict):
        raise InvalidParameterError(
            f"{where}.function.parameters must be a JSON Schema object",
            f"{where}.function.parameters",
        )
    return ToolFunction(name, json.dumps(parameters or {"type": "object"}))


def _chosen_name(choice: str | dict[str, Any]) -> str:
    if isinstance(choice, str):
        raise InvalidParameterError(
            f"tool_choice must be none, auto, required or a named function, got {choice!r}",
            param="tool_choice",
        )
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidParameterError(
            'tool_choice must look like {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    return name


def check_tool_messages(body: ChatCompletionRequest) -> None:
    """Earlier assistant calls must carry JSON arguments; tool results must name their call."""
    for i, message in enumerate(body.messages):
        for j, call in enumerate(message.tool_calls or []):
            where = f"messages[{i}].tool_calls[{j}]"
            function = call.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise InvalidParameterError(
                    f"{where}.function.name is missing", f"{where}.function"
                )
            arguments = function.get("arguments", "{}")
            if isinstance(arguments, str):
                try:
                    json.loads(arguments)
                except ValueError:
                    raise InvalidParameterError(
                        f"{where}.function.arguments is not valid JSON",
                        f"{where}.function.arguments",
                    ) from None
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidParameterError(
                f"messages[{i}].tool_call_id is required for a tool message",
                f"messages[{i}].tool_call_id",
            )
