"""The reverse mapping, for a remote OpenAI-compatible upstream: `GenerationRequest` -> the
path and body to post there (the chunks it streams back: `upstream_chunks`). Pure (no HTTP).

Every body asks for a stream with a usage chunk, whatever the gateway's client asked, so
time to first token and stalls are measured per attempt. vLLM's extensions are sent only
where they differ from their defaults: OpenAI rejects parameters it does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inferline.core.errors import (
    InvalidParameterError,
)
from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import SamplingParams
from inferline.core.tool_calls import ToolCalling

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
MAX_MESSAGE_CHARS = 500
_ANY_OBJECT = {"type": "object"}


@dataclass(frozen=True)
class UpstreamCall:
    """What to post upstream: ``path`` is relative to the upstream's base URL (a constant,
    so nothing in a request can choose where it goes) and ``body`` is the JSON body."""

    path: str
    body: dict[str, Any]

    @property
    def is_chat(self) -> bool:
        """True for ``/chat/completions``, False for ``/completions``."""
        return self.path == CHAT_PATH


def upstream_call(
    request: GenerationRequest, model: str, *, can_continue: bool = True
) -> UpstreamCall:
    """The upstream request for ``request``, naming the upstream's own ``model``.

    Raises `InvalidParameterError` (param ``assistant_prefix``) for a continuation the
    upstream cannot do: chat when ``can_continue`` is False (the upstream does not accept
    vLLM's ``continue_final_message``), or a token-id prompt; and (param ``echo``) for
    prompt logprobs, which only a local engine computes.
    """
    if request.params.prompt_logprobs is not None:
        raise InvalidParameterError(
            "echo with logprobs (prompt logprobs) is only served by local models",
            "echo",
            "unsupported_parameter",
        )
    is_chat = request.messages is not None
    body: dict[str, Any] = {"model": model}
    if is_chat:
        body.update(_chat_input(request, can_continue))
    else:
        body["prompt"] = _prompt(request)
    body.update(_sampling_fields(request.params, is_chat))
    body.update(_extension_fields(request.params))
    body.update(_structured_fields(request, is_chat))
    if request.user:
        body["user"] = request.user
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return UpstreamCall(CHAT_PATH if is_chat else COMPLETIONS_PATH, body)


def _chat_input(request: GenerationRequest, can_continue: bool) -> dict[str, Any]:
    messages = [_message(m) for m in request.messages or []]
    if not request.assistant_prefix:
        return {"messages": messages}
    if not can_continue:
        raise InvalidParameterError(
            "this upstream cannot continue an assistant message (no continue_final_message)",
            "assistant_prefix",
            "unsupported_parameter",
        )
    messages.append({"role": "assistant", "content": request.assistant_prefix})
    return {"messages": messages, "continue_final_message": True, "add_generation_prompt": False}


def _message(message: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``message``; call arguments as JSON text, as OpenAI expects them."""
    out = dict(message)
    if out.get("tool_calls"):
        out["tool_calls"] = [_call_with_text_arguments(call) for call in out["tool_calls"]]
    return out


def _call_with_text_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if not isinstance(function, dict) or isinstance(function.get("arguments", ""), str):
        return call
    return {**call, "function": {**function, "arguments": json.dumps(function["arguments"])}}


def _prompt(request: GenerationRequest) -> str | list[int]:
    prompt = request.prompt
    if isinstance(prompt, str):
        return prompt + (request.assistant_prefix or "")
    if request.assistant_prefix:
        raise InvalidParameterError(
            "a token-id prompt cannot be continued with a text prefix upstream",
            "assistant_prefix",
            "unsupported_parameter",
        )
    return list(prompt or [])


def _sampling_fields(params: SamplingParams, is_chat: bool) -> dict[str, Any]:
    """OpenAI's own fields. ``temperature`` and ``top_p`` are sent unless the client left
    them unset (``unset_fields``): then the upstream's model's own defaults apply (vLLM's
    ``generation_config``), as a local engine applies its model's."""
    unset = params.unset_fields
    fields = {
        "n": params.n,
        "temperature": None if "temperature" in unset else params.temperature,
        "top_p": None if "top_p" in unset else params.top_p,
        "logit_bias": {str(t): b for t, b in params.logit_bias} or None,
        "max_tokens": params.max_tokens,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "presence_penalty": params.presence_penalty or None,
        "frequency_penalty": params.frequency_penalty or None,
    }
    if params.logprobs is not None and is_chat:
        fields.update(logprobs=True, top_logprobs=params.logprobs)
    elif params.logprobs is not None:
        fields["logprobs"] = params.logprobs
    return _without_none(fields)


def _extension_fields(params: SamplingParams) -> dict[str, Any]:
    """vLLM's extensions, only where they differ from their defaults."""
    penalty = params.repetition_penalty
    fields = {
        "top_k": params.top_k if params.top_k > 0 else None,  # 0 and -1 both mean off
        "min_p": params.min_p or None,
        "repetition_penalty": None if penalty == 1.0 else penalty,
        "ignore_eos": params.ignore_eos or None,
        "min_tokens": params.min_tokens or None,
        "stop_token_ids": list(params.stop_token_ids) or None,
        "skip_special_tokens": None if params.skip_special_tokens else False,
    }
    return _without_none(fields)


def _without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _structured_fields(request: GenerationRequest, is_chat: bool) -> dict[str, Any]:
    """Tools, ``tool_choice`` and the output format. Tools without a ``tool_calls``
    constraint are shown but may not be called (``tool_choice: none``), as the engine does."""
    structured = request.params.structured
    fields: dict[str, Any] = {}
    if request.tools and is_chat:
        fields["tools"] = list(request.tools)
    if structured is None:
        if fields:
            fields["tool_choice"] = "none"
        return fields
    if structured.kind != "tool_calls":
        return fields | _format_fields(structured.kind, structured.spec)
    if not is_chat:
        raise InvalidParameterError("tool calls need chat messages", "tools")
    calling = ToolCalling.from_spec(structured.spec)
    fields.setdefault("tools", [_tool(f.name, f.parameters) for f in calling.functions])
    fields.update(_tool_choice(calling))
    if calling.answer_schema:
        fields.update(_format_fields("json_schema", calling.answer_schema))
    return fields


def _tool(name: str, parameters: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": json.loads(parameters)}}


def _tool_choice(calling: ToolCalling) -> dict[str, Any]:
    """``parallel_tool_calls`` is sent only when False (some models reject the field)."""
    if calling.mode == "named":
        return {
            "tool_choice": {"type": "function", "function": {"name": calling.functions[0].name}}
        }
    fields: dict[str, Any] = {"tool_choice": calling.mode}
    if not calling.parallel:
        fields["parallel_tool_calls"] = False
    return fields


def _format_fields(kind: str, spec: str) -> dict[str, Any]:
    """``response_format`` for JSON (a schema that allows any object is ``json_object``),
    vLLM's ``guided_regex`` / ``guided_choice`` for the others."""
    if kind == "regex":
        return {"guided_regex": spec}
    if kind == "choice":
        return {"guided_choice": json.loads(spec)}
    schema = json.loads(spec) if kind == "json_schema" else _ANY_OBJECT
    if schema == _ANY_OBJECT:
        return {"response_format": {"type": "json_object"}}
    json_schema = {"name": "response", "schema": schema}
    return {"response_format": {"type": "json_schema", "json_schema": json_schema}}
