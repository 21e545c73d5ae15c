"""OpenAI request bodies -> `GenerationRequest`s (what the server, jobs and evals submit).

Everything a body can get wrong is an `InvalidParameterError` naming the field, raised
before anything is queued.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import Priority
from inferline.openai.sampling import chat_sampling_params, completion_sampling_params
from inferline.openai.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
)
from inferline.openai.tool_choice import check_tool_messages, plan_tools

MAX_PROMPTS = 64


@dataclass(frozen=True)
class CallerContext:
    """What the transport knows about a request beyond its body (headers, key)."""

    priority: Priority = Priority.INTERACTIVE
    key_id: str | None = None
    session: str | None = None
    deadline: float | None = None  # time.monotonic()
    metadata: Mapping[str, str] = field(default_factory=dict)
    cache: Literal["default", "no-cache", "no-store"] = "default"  # the Cache-Control header
    traceparent: str | None = None  # W3C trace context of this request's span


@dataclass(frozen=True)
class ChatGeneration:
    """A chat body as a generator request, and how its output maps back (``tool_mode``:
    ``none``, ``auto``, ``required`` or ``named``)."""

    request: GenerationRequest
    tool_mode: str


def template_message(message: ChatMessage) -> dict[str, Any]:
    """One message as chat templates read it (``developer`` is a system message)."""
    role = "system" if message.role == "developer" else message.role
    rendered: dict[str, Any] = {"role": role, "content": message.text()}
    if message.tool_calls:
        rendered["tool_calls"] = message.tool_calls
    if message.name:
        rendered["name"] = message.name
    if message.tool_call_id:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


def chat_generation(
    body: ChatCompletionRequest, request_id: str, context: CallerContext | None = None
) -> ChatGeneration:
    """Checks a chat body and builds its request (tools, grammar, sampling, prefix)."""
    context = context or CallerContext()
    check_tool_messages(body)
    plan = plan_tools(body)
    params = chat_sampling_params(body, plan.calling)
    messages = [template_message(m) for m in body.messages]
    prefix = None
    if body.continue_final_message:
        if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
            raise InvalidParameterError(
                "continue_final_message needs an assistant message (text only) last",
                "continue_final_message",
            )
        prefix = messages.pop()["content"]
        if not messages:
            raise InvalidParameterError("nothing precedes the message to continue", "messages")
    request = GenerationRequest(
        request_id,
        messages=messages,
        tools=plan.template_tools,
        params=params,
        assistant_prefix=prefix,
        **_context_fields(body, context),
    )
    return ChatGeneration(request, plan.mode)


def completion_generations(
    body: CompletionRequest, request_id: str, context: CallerContext | None = None
) -> list[GenerationRequest]:
    """One request per prompt of a completions body (ids ``<request_id>-<i>``)."""
    context = context or CallerContext()
    params = completion_sampling_params(body)
    fields = _context_fields(body, context)
    return [
        GenerationRequest(f"{request_id}-{i}", prompt=prompt, params=params, **fields)
        for i, prompt in enumerate(_prompts(body.prompt))
    ]


def _context_fields(body: SamplingFields, context: CallerContext) -> dict[str, Any]:
    return {
        "model": body.model,
        "streaming": body.stream,
        "priority": context.priority,
        "key_id": context.key_id,
        "user": body.user,
        "session": context.session,
        "metadata": {**(body.metadata or {}), **context.metadata},
        "traceparent": context.traceparent,
        "deadline": context.deadline,
        "cache": context.cache,
    }


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise InvalidParameterError("prompt must not be empty", "prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]
    if len(prompt) > MAX_PROMPTS:
        raise InvalidParameterError(f"at most {MAX_PROMPTS} prompts per request", "prompt")
    return list(prompt)
