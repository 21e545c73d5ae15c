"""``POST /v1/completions`` (legacy): one or several prompts, text or token ids."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferline.openai.echo import echo_options
from inferline.openai.requests import completion_generations
from inferline.openai.responses import CompletionChunker, text_completion
from inferline.openai.schemas import CompletionRequest
from inferline.server.caller import begin_trace, caller_context, new_request_id
from inferline.server.runner import (
    respond,
    stream_response,
    submit_all,
)
from inferline.server.state import ServerState
from inferline.server.tenancy import admit, key_headers

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """Text completion for each prompt (``n`` choices each), streamed when asked."""
    state: ServerState = request.app.state.inferline
    request_id = new_request_id("cmpl")
    generations = completion_generations(body, request_id, caller_context(request))
    first = generations[0].prompt
    trace = begin_trace(
        request,
        request_id,
        "/v1/completions",
        body.model,
        first if isinstance(first, str) else None,
        body.user,
        dict(generations[0].metadata),
    )
    trace.body = body
    generations, trace.admission = await admit(state, request, body.model, generations)
    trace.headers.update(key_headers(state, trace.admission))
    streams = await submit_all(state, trace, generations)
    header = {"id": request_id, "created": int(time.time()), "model": body.model}
    echo = echo_options(body)
    if not body.stream:
        return await respond(
            request, state, trace, streams, lambda outs: text_completion(header, outs, body.n, echo)
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunker = CompletionChunker(header, body.n, include_usage, echo)
    return await stream_response(request, state, trace, streams, chunker.chunks, chunker.final)
