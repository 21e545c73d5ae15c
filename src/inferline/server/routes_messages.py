"""``POST /v1/messages`` (Anthropic's Messages API) and ``POST /v1/messages/count_tokens``.

A message request is mapped to a chat completion request (`inferline.anthropic`) and
served exactly as one (rollouts, stored prompts, key admission, the router's routes,
fallbacks, budgets and cache, traces); only the answer is written Anthropic's way:
a ``message`` object, or its named stream events. Errors on these paths are in
Anthropic's shape (`inferline.server.errors`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inferline.anthropic import (
    CountTokensRequest,
    MessageChunker,
    MessagesRequest,
    chat_request,
    message,
    new_message_id,
)
from inferline.anthropic.requests import chat_messages, chat_tool_choice, chat_tools
from inferline.core.errors import UnknownModelError
from inferline.core.outputs import RequestOutput
from inferline.core.protocols import ChatTokenizer
from inferline.openai.requests import chat_generation
from inferline.openai.schemas import ChatCompletionRequest
from inferline.server.chat_call import prepare_chat
from inferline.server.errors import anthropic_error_body
from inferline.server.runner import Dialect, named_event, respond, stream_response, submit_all
from inferline.server.state import ServerState
from inferline.server.tenancy import identity_of

router = APIRouter()
ANTHROPIC = Dialect(event=named_event, error_body=anthropic_error_body, done=None)
# ``x-inferline-token-count: estimate`` when no local model could count (a remote upstream)
COUNT_HEADER = "x-inferline-token-count"

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_WHY = {
    400: "invalid_request_error: the message names the field (an image, a missing max_tokens).",
    401: "authentication_error: missing or invalid API key (x-api-key or Authorization).",
    403: "permission_error: the API key may not use this model or route.",
    404: "not_found_error: unknown model or route.",
    413: "request_too_large: the body is over the size limit.",
    429: "rate_limit_error: the key's limits, or an upstream's; see Retry-After.",
    500: "api_error: a bug in inferline (never caused by the request).",
    502: "api_error: an upstream failed, or a stream could not be completed.",
    503: "overloaded_error or api_error: overloaded, draining, every target down.",
    504: "timeout_error: the request's deadline passed before an answer.",
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": why, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    for code, why in _WHY.items()
}
_MESSAGE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A message object, or (``stream``) its server-sent events: "
        "message_start, content_block_start/delta/stop, message_delta, message_stop.",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["id", "type"]}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    },
    **_ERRORS,
}
_COUNT: dict[int | str, dict[str, Any]] = {
    code: _ERRORS[code] for code in (400, 401, 403, 404, 413, 500, 503)
}


@router.post("/v1/messages", response_model=None, responses=_MESSAGE)
async def create_message(body: MessagesRequest, request: Request) -> Response:
    """A message, streamed as named server-sent events when ``stream`` is true."""
    state: ServerState = request.app.state.inferline
    message_id = new_message_id()
    call = await prepare_chat(request, chat_request(body), message_id, "/v1/messages")
    streams = await submit_all(state, call.trace, call.requests)
    model, stops = call.body.model, tuple(body.stop_sequences or ())
    if not body.stream:

        def build(outputs: list[RequestOutput]) -> dict[str, Any]:
            return message(message_id, model, outputs, stops)

        return await respond(request, state, call.trace, streams, build, dialect=ANTHROPIC)
    chunker = MessageChunker(message_id, model, stops)
    return await stream_response(
        request, state, call.trace, streams, chunker.chunks, chunker.final, dialect=ANTHROPIC
    )


@router.post("/v1/messages/count_tokens", response_model=None, responses=_COUNT)
async def count_tokens(body: CountTokensRequest, request: Request) -> Response:
    """``{"input_tokens": n}``: the prompt tokens of the request on the model (its chat
    template, system and tools included), counted by a local model of the route; else
    estimated (header ``x-inferline-token-count: estimate``)."""
    state: ServerState = request.app.state.inferline
    names = [info.name for info in state.generator.models()]
    if body.model not in names:
        raise UnknownModelError.not_served(body.model, names)
    key = identity_of(request).key
    if key is not None:
        state.tenants.check_access(key, body.model)
    tool_choice, _ = chat_tool_choice(body.tool_choice)
    chat = ChatCompletionRequest(
        model=body.model,
        messages=chat_messages(body),
        tools=chat_tools(body.tools),
        tool_choice=tool_choice,
    )
    generation = chat_generation(chat, new_message_id()).request
    messages, tools = generation.messages or [], generation.tools
    generator = state.generator
    token_ids = None
    if isinstance(generator, ChatTokenizer):
        token_ids = await generator.tokenize_chat(body.model, messages, tools)
    if token_ids is not None:
        return JSONResponse({"input_tokens": len(token_ids)}, headers={COUNT_HEADER: "exact"})
    count = generation.estimated_prompt_tokens()
    return JSONResponse({"input_tokens": count}, headers={COUNT_HEADER: "estimate"})
