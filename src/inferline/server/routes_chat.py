"""``POST /v1/chat/completions``."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferline.openai.responses import ChatChunker, chat_completion
from inferline.openai.schemas import ChatCompletionRequest
from inferline.server.caller import new_request_id
from inferline.server.chat_call import prepare_chat
from inferline.server.runner import respond, stream_response, submit_all
from inferline.server.state import ServerState

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    state: ServerState = request.app.state.inferline
    request_id = new_request_id("chatcmpl")
    call = await prepare_chat(request, body, request_id, "/v1/chat/completions")
    streams = await submit_all(state, call.trace, call.requests)
    header = {"id": request_id, "created": int(time.time()), "model": call.body.model}
    mode = call.generation.tool_mode
    if not call.body.stream:
        return await respond(
            request, state, call.trace, streams, lambda outs: chat_completion(header, outs, mode)
        )
    options = call.body.stream_options
    chunker = ChatChunker(header, bool(options and options.include_usage), mode)
    return await stream_response(request, state, call.trace, streams, chunker.chunks, chunker.final)
