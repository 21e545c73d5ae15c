"""``POST /v1/chat/completions``."""

from __future__ import annotations

import time
from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferline.openai.requests import chat_generation
from inferline.openai.responses import ChatChunker, chat_completion
from inferline.openai.schemas import ChatCompletionRequest
from inferline.server.caller import SESSION_HEADER, begin_trace, caller_context, new_request_id
from inferline.server.prompting import apply_prompt
from inferline.server.runner import (
    respond,
    stream_response,
    submit_all,
)
from inferline.server.state import ServerState
from inferline.server.tenancy import admit, key_headers

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    state: ServerState = request.app.state.inferline
    request_id = new_request_id("chatcmpl")
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
        "/v1/chat/completions",
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
    streams = await submit_all(state, trace, requests)
    header = {"id": request_id, "created": int(time.time()), "model": body.model}
    mode = generation.tool_mode
    if not body.stream:
        return await respond(
            request, state, trace, streams, lambda outs: chat_completion(header, outs, mode)
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunker = ChatChunker(header, include_usage, mode)
    return await stream_response(request, state, trace, streams, chunker.chunks, chunker.final)
