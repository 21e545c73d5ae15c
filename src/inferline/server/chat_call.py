"""The common front half of every chat-shaped endpoint (Chat Completions, Responses,
Anthropic Messages): the body's rollout arm and stored prompt applied, mapped to a
generator request, traced and admitted for its key. Each endpoint then submits it and
writes the outputs in its own shape."""

from __future__ import annotations

from dataclasses import dataclass, replace

from fastapi import Request

from inferline.core.protocols import GenerationRequest
from inferline.openai.requests import ChatGeneration, chat_generation
from inferline.openai.schemas import ChatCompletionRequest
from inferline.prompts import ResolvedPrompt
from inferline.server.caller import SESSION_HEADER, begin_trace, caller_context
from inferline.server.observe import RequestTrace
from inferline.server.prompting import apply_prompt
from inferline.server.state import ServerState
from inferline.server.tenancy import admit, key_headers


@dataclass(frozen=True)
class ChatCall:
    """A chat request ready to submit: ``body`` after its rollout arm and stored prompt,
    its ``generation`` (the request and how tool calls map back), its ``trace`` and the
    ``requests`` admitted for the caller's key."""

    body: ChatCompletionRequest
    generation: ChatGeneration
    trace: RequestTrace
    requests: list[GenerationRequest]
    prompt: ResolvedPrompt | None


async def prepare_chat(
    request: Request, body: ChatCompletionRequest, request_id: str, endpoint: str
) -> ChatCall:
    """Applies the rollout and the stored prompt, maps, traces and admits ``body``.

    Raises what is wrong before generation (bad body, unknown prompt, refused key): the
    app's error handlers answer it and log the refused request.
    """
    state: ServerState = request.app.state.inferline
    sent = body
    rollouts = getattr(request.app.state, "rollouts", None)
    arm = None
    if rollouts is not None:
        body, arm = rollouts.assign(body, request.headers.get(SESSION_HEADER))
    reference = body.prompt
    body, prompt = await apply_prompt(state, body)
    generation = chat_generation(body, request_id, caller_context(request))
    if reference is not None and prompt is not None:  # for the route's and the version's checks
        checks = tuple(prompt.checks or ())
        changed = replace(generation.request, variables=dict(reference.variables), checks=checks)
        generation = replace(generation, request=changed)
    messages = generation.request.messages or []
    trace = begin_trace(
        request,
        request_id,
        endpoint,
        body.model,
        messages[-1]["content"] if messages else None,
        body.user,
        dict(generation.request.metadata),
        messages,
    )
    trace.body, trace.rollout = sent, arm
    if arm is not None:
        trace.metadata["inferline_rollout"] = ":".join(arm)
    if prompt is not None:
        trace.prompt = (prompt.id, prompt.version, prompt.label)
    requests, trace.admission = await admit(state, request, body.model, [generation.request])
    trace.headers.update(key_headers(state, trace.admission))
    return ChatCall(body, generation, trace, requests, prompt)
