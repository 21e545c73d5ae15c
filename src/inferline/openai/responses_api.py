"""The Responses API's request body (``POST /v1/responses``) and its mapping onto a chat
body: instructions become the system message, input items become messages (function
calls an assistant message's ``tool_calls``, their outputs ``tool`` messages), flat function
tools the chat form, ``text.format`` the ``response_format``. A conversation continued with
``previous_response_id`` arrives here as ``history``: the earlier turns' messages, without
their instructions (as OpenAI does: instructions do not carry over).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from inferline.core.errors import InvalidParameterError
from inferline.openai.schemas import ChatCompletionRequest, LenientModel, PromptRef

OUTPUT_LOGPROBS = "message.output_text.logprobs"  # the ``include`` entry for token logprobs


class TextFormat(LenientModel):
    """``text.format``: plain text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(LenientModel):
    """``text``: the output's format (``verbosity`` is accepted and ignored)."""

    format: TextFormat = Field(default_factory=lambda: TextFormat.model_validate({}))


class ResponsesRequest(LenientModel):
    """``POST /v1/responses``. ``input`` is a string (one user message) or a list of items;
    with a ``prompt`` from the registry, ``model`` may come from the prompt's route."""

    model: str = ""
    input: str | list[dict[str, Any]] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    include: list[str] | None = None
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)],
                             Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None  # fmt: skip
    prompt: PromptRef | None = None
    stream: bool = False
    store: bool = True
    background: bool = False
    user: str | None = None
    safety_identifier: str | None = None
    seed: int | None = None  # an extension, as on chat
    conversation: Any = None  # the Conversations API: not served (a 400 naming it)

    @model_validator(mode="after")
    def _coherent(self) -> ResponsesRequest:
        if self.conversation is not None:
            raise InvalidParameterError(
                "conversations are not supported; chain turns with previous_response_id",
                "conversation",
            )
        if self.prompt is None and not self.model:
            raise InvalidParameterError("model: a model or route is required", "model")
        if self.background and not self.store:
            raise InvalidParameterError("background responses must be stored", "store")
        if self.background and self.stream:
            raise InvalidParameterError(
                "streaming a background response is not supported: poll GET /v1/responses/{id}",
                "background",
            )
        return self

    def wants_logprobs(self) -> bool:
        """Token logprobs on the output text (``include`` or ``top_logprobs``)."""
        return OUTPUT_LOGPROBS in (self.include or []) or bool(self.top_logprobs)


def input_messages(body: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input items as chat messages (consecutive function calls join one
    assistant message, as chat templates expect)."""
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(body.input):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, i))
        elif kind == "function_call":
            _append_call(messages, item, i)
        elif kind == "function_call_output":
            messages.append(_call_output(item, i))
        elif kind == "reasoning":
            continue  # a reasoning model's item replayed by a client: nothing to render
        else:
            raise InvalidParameterError(
                f"input items of type {kind!r} are not supported", f"input[{i}].type"
            )
    if not messages:
        raise InvalidParameterError("input must have at least one item", "input")
    return messages


_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text", "refusal")


def _message(item: dict[str, Any], i: int) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidParameterError(f"role must be one of {', '.join(_ROLES)}", f"input[{i}].role")
    content = item.get("content", "")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _TEXT_PARTS:
                raise InvalidParameterError(
                    f"content parts of type {kind!r} are not supported (text only)",
                    f"input[{i}].content[{j}].type",
                )
            parts.append(str(part.get("text", part.get("refusal", ""))))
        content = "".join(parts)
    elif not isinstance(content, str):
        raise InvalidParameterError("content must be a string or a list", f"input[{i}].content")
    return {"role": role, "content": content}


def _append_call(messages: list[dict[str, Any]], item: dict[str, Any], i: int) -> None:
    for name in ("call_id", "name", "arguments"):
        if not isinstance(item.get(name), str):
            raise InvalidParameterError(f"a function_call needs {name}", f"input[{i}].{name}")
    call = {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}  # fmt: skip
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
        last["tool_calls"].append(call)
    elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
        last["tool_calls"] = [call]  # text then calls: one assistant turn
    else:
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})


def _call_output(item: dict[str, Any], i: int) -> dict[str, Any]:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str):
        raise InvalidParameterError("a function_call_output needs call_id", f"input[{i}].call_id")
    if isinstance(output, list):  # text parts only
        output = "".join(str(p.get("text", "")) for p in output if isinstance(p, dict))
    elif not isinstance(output, str):
        output = json.dumps(output)
    return {"role": "tool", "content": output, "tool_call_id": call_id}


def chat_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Flat Responses function tools in the chat form (other tool types: a 400)."""
    if tools is None:
        return None
    converted = []
    for i, tool in enumerate(tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise InvalidParameterError(
                f"only function tools are supported, got {tool.get('type')!r}", f"tools[{i}]"
            )
        function = {k: tool[k] for k in ("name", "description", "parameters", "strict")
                    if tool.get(k) is not None}  # fmt: skip
        converted.append({"type": "function", "function": function})
    return converted


def chat_tool_choice(choice: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``{"type": "function", "name": N}`` in the chat form; the strings as they are."""
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise InvalidParameterError(
        f"tool_choice of type {choice.get('type')!r} is not supported", "tool_choice"
    )


def response_format(text: TextConfig | None) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format``."""
    if text is None or text.format.type == "text":
        return None
    if text.format.type == "json_object":
        return {"type": "json_object"}
    if text.format.schema_ is None:
        raise InvalidParameterError("a json_schema format needs a schema", "text.format.schema")
    schema = {"name": text.format.name or "response", "schema": text.format.schema_,
              "strict": bool(text.format.strict)}  # fmt: skip
    return {"type": "json_schema", "json_schema": schema}


def chat_body(
    body: ResponsesRequest, history: list[dict[str, Any]], new_messages: list[dict[str, Any]]
) -> ChatCompletionRequest:
    """The chat body that answers ``body``: instructions, then the earlier turns, then the
    new input."""
    messages = [*history, *new_messages]
    if body.instructions:
        messages.insert(0, {"role": "system", "content": body.instructions})
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "stream": body.stream,
        "tools": chat_tools(body.tools),
        "tool_choice": chat_tool_choice(body.tool_choice),
        "response_format": response_format(body.text),
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "metadata": body.metadata,
        "user": body.user or body.safety_identifier,
        "seed": body.seed,
        "parallel_tool_calls": body.parallel_tool_calls,
        "prompt": body.prompt,
    }
    if body.wants_logprobs():
        fields.update(logprobs=True, top_logprobs=body.top_logprobs or 0)
    if body.stream:
        fields["stream_options"] = {"include_usage": True}
    given = {k: v for k, v in fields.items() if v is not None}  # unset stays unset
    try:
        return ChatCompletionRequest.model_validate(given)
    except ValidationError as exc:  # a 400 naming the field, as the chat endpoint's would be
        first = exc.errors()[0]
        place = ".".join(str(p) for p in first.get("loc", ()))
        cause = (first.get("ctx") or {}).get("error")
        if isinstance(cause, InvalidParameterError):
            raise cause from None
        raise InvalidParameterError(f"{place}: {first.get('msg')}", place or "input") from None
