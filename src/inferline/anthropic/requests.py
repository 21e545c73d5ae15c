"""Anthropic Messages bodies -> OpenAI `ChatCompletionRequest`s, so a message request
goes through the same front half (rollouts, prompts, mapping, admission) and the router
as a chat completion does.

Everything a body can get wrong that pydantic cannot see is an `InvalidParameterError`
naming the field (``messages[2].content[0].type``).
"""

from __future__ import annotations

import json
from typing import Any

from inferline.anthropic.schemas import (
    ContentBlock,
    CountTokensRequest,
    InputMessage,
    MessagesRequest,
    Tool,
    ToolChoice,
)
from inferline.core.errors import InvalidParameterError
from inferline.openai.schemas import ChatCompletionRequest, ChatMessage

# reasoning blocks of earlier turns (a client that used ``thinking`` elsewhere sends them
# back); we never produce them and the chat templates have no place for them
_DROPPED = frozenset({"thinking", "redacted_thinking"})
ERROR_PREFIX = "Error: "  # a tool_result with is_error: the template sees it in the text


def _unsupported(where: str, kind: str) -> InvalidParameterError:
    what = {"image": "images", "document": "documents"}.get(kind, f"{kind!r} blocks")
    return InvalidParameterError(
        f"{where}.type: {what} are not supported (this server's models read text only)",
        f"{where}.type",
        "unsupported_content",
    )


def _text_of(blocks: str | list[ContentBlock] | None, where: str) -> str:
    """The text of a string or of text blocks (joined with newlines)."""
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    parts = []
    for j, block in enumerate(blocks):
        if block.type != "text":
            raise _unsupported(f"{where}[{j}]", block.type)
        parts.append(_required(block.text, f"{where}[{j}].text"))
    return "\n".join(parts)


def _required(value: Any, where: str) -> Any:
    if value is None:
        raise InvalidParameterError(f"{where} is required", where)
    return value


def _tool_call(block: ContentBlock, where: str) -> dict[str, Any]:
    call_id = _required(block.id, f"{where}.id")
    name = _required(block.name, f"{where}.name")
    arguments = json.dumps(block.input or {}, ensure_ascii=False)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _assistant(message: InputMessage, where: str) -> list[ChatMessage]:
    if isinstance(message.content, str):
        return [ChatMessage(role="assistant", content=message.content)]
    texts, calls = [], []
    for j, block in enumerate(message.content):
        if block.type == "text":
            texts.append(_required(block.text, f"{where}[{j}].text"))
        elif block.type == "tool_use":
            calls.append(_tool_call(block, f"{where}[{j}]"))
        elif block.type not in _DROPPED:
            raise _unsupported(f"{where}[{j}]", block.type)
    text = "\n".join(texts)
    if not calls:
        return [ChatMessage(role="assistant", content=text)]
    return [ChatMessage(role="assistant", content=text or None, tool_calls=calls)]


def _user(message: InputMessage, where: str) -> list[ChatMessage]:
    """Tool results become ``tool`` messages and runs of text a ``user`` message, in order."""
    if isinstance(message.content, str):
        return [ChatMessage(role="user", content=message.content)]
    out: list[ChatMessage] = []
    texts: list[str] = []
    for j, block in enumerate(message.content):
        if block.type == "text":
            texts.append(_required(block.text, f"{where}[{j}].text"))
        elif block.type == "tool_result":
            if texts:
                out.append(ChatMessage(role="user", content="\n".join(texts)))
                texts = []
            call_id = _required(block.tool_use_id, f"{where}[{j}].tool_use_id")
            result = _text_of(block.content, f"{where}[{j}].content")
            if block.is_error:
                result = ERROR_PREFIX + result
            out.append(ChatMessage(role="tool", content=result, tool_call_id=call_id))
        else:
            raise _unsupported(f"{where}[{j}]", block.type)
    if texts or not out:
        out.append(ChatMessage(role="user", content="\n".join(texts)))
    return out


def chat_messages(body: CountTokensRequest) -> list[ChatMessage]:
    """The conversation as chat messages: ``system`` first, then every turn's."""
    messages = []
    system = _text_of(body.system, "system")
    if system:
        messages.append(ChatMessage(role="system", content=system))
    for i, message in enumerate(body.messages):
        where = f"messages[{i}].content"
        turn = _assistant if message.role == "assistant" else _user
        messages += turn(message, where)
    return messages


def chat_tools(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    """Client tools as OpenAI function tools; server tools (with a ``type``) are a 400."""
    if tools is None:
        return None
    functions = []
    for i, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise InvalidParameterError(
                f"tools[{i}].type: server tools ({tool.type!r}) are not supported; "
                "give client tools (name, description, input_schema)",
                f"tools[{i}].type",
                "unsupported_parameter",
            )
        function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description:
            function["description"] = tool.description
        functions.append({"type": "function", "function": function})
    return functions


def chat_tool_choice(choice: ToolChoice | None) -> tuple[Any, bool | None]:
    """``tool_choice`` and ``parallel_tool_calls`` as OpenAI writes them."""
    if choice is None:
        return None, None
    parallel = (
        None if choice.disable_parallel_tool_use is None else not choice.disable_parallel_tool_use
    )
    if choice.type == "tool":
        name = _required(choice.name, "tool_choice.name")
        return {"type": "function", "function": {"name": name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def chat_request(body: MessagesRequest) -> ChatCompletionRequest:
    """The chat completion request a message request is served as. Sampling fields the
    body leaves out stay unset (the model's defaults apply). A last assistant turn (text
    only) is a prefill: the answer continues it and holds only the new text."""
    tool_choice, parallel = chat_tool_choice(body.tool_choice)
    messages = chat_messages(body)
    last = messages[-1]
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        # Anthropic's prefill: a last assistant turn is the start of the answer, continued
        "continue_final_message": last.role == "assistant" and not last.tool_calls,
        "max_tokens": body.max_tokens,
        "stream": body.stream,
        "tools": chat_tools(body.tools),
        "tool_choice": tool_choice,
        "parallel_tool_calls": parallel,
    }
    if body.stop_sequences:
        fields["stop"] = list(body.stop_sequences)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(body, name)
        if value is not None:
            fields[name] = value
    if body.metadata is not None and body.metadata.user_id:
        fields["user"] = body.metadata.user_id
    output_format = body.output_config.format if body.output_config else None
    if output_format is not None:
        schema = {"name": "output", "schema": output_format.schema_}
        fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    return ChatCompletionRequest(**fields)
