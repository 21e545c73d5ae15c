"""The Responses API: ``POST /v1/responses`` (streamed as typed events when ``stream``),
``GET``/``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` and
``POST /v1/responses/{id}/cancel``. Every response goes through the same front half as a
chat completion (`chat_call.prepare_chat`): routes, fallbacks, budgets, cache, prompts and
traces apply unchanged; its trace id is the response id."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.core.outputs import RequestOutput
from inferline.openai.responses_api import ResponsesRequest, chat_body, input_messages
from inferline.openai.responses_output import (
    ResponseEvents,
    failed,
    finished,
    new_id,
    output_items,
    response_shell,
)
from inferline.server.chat_call import prepare_chat
from inferline.server.errors import APIError
from inferline.server.responses_service import ResponsesService, Turn
from inferline.server.runner import Dialect, named_event, respond, stream_response, submit_all
from inferline.server.state import ServerState
from inferline.server.tenancy import identity_of

logger = logging.getLogger(__name__)
router = APIRouter()
RESPONSES = Dialect(event=named_event, done=None)


def _service(request: Request, param: str = "response_id") -> ResponsesService:
    service: ResponsesService | None = getattr(request.app.state, "responses", None)
    if service is None:
        raise InvalidParameterError("this server keeps no database: nothing is stored", param)
    return service


def _caller(request: Request) -> tuple[str | None, bool]:
    identity = identity_of(request)
    return (identity.key.id if identity.key else None), identity.is_admin


async def _history(request: Request, body: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation ``previous_response_id`` continues (a 400 naming it when there is
    none this key may read, or it has no answer to continue)."""
    if body.previous_response_id is None:
        return []
    key_id, is_admin = _caller(request)
    try:
        row = await asyncio.to_thread(
            _service(request, "previous_response_id").store.get,
            body.previous_response_id,
            key_id,
            is_admin=is_admin,
        )
    except NotFoundError:
        raise InvalidParameterError(
            f"Previous response with id {body.previous_response_id!r} not found.",
            "previous_response_id",
        ) from None
    if row["status"] not in ("completed", "incomplete") or row["conversation"] is None:
        raise InvalidParameterError(
            f"Previous response {body.previous_response_id!r} is {row['status']}: "
            "only a finished response can be continued",
            "previous_response_id",
        )
    return list(row["conversation"])


@router.post("/v1/responses", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    """Creates a model response (stored unless ``store`` is false)."""
    state: ServerState = request.app.state.inferline
    # without a database a response is answered but not stored (``store: false`` says so)
    store: ResponsesService | None = getattr(request.app.state, "responses", None)
    store = store if body.store else None
    background = _service(request, "background") if body.background else None
    history = await _history(request, body)
    new_messages = input_messages(body)
    response_id = new_id("resp")
    call = await prepare_chat(
        request, chat_body(body, history, new_messages), response_id, "/v1/responses"
    )
    key_id, _ = _caller(request)
    sent = body.model_dump(mode="json", exclude_unset=True, by_alias=True)
    text = [{"type": "input_text", "text": body.input}]
    items = [{"type": "message", "role": "user", "content": text}]
    shell = {**response_shell(body, response_id, call.body.model), "store": store is not None}
    turn = Turn(
        shell,
        sent,
        items if isinstance(body.input, str) else body.input,
        [*history, *new_messages],
        key_id,
    )
    if background is not None:
        queued = await background.enqueue(turn, call.requests, call.trace)
        return JSONResponse(queued, headers={"x-request-id": response_id, **call.trace.headers})
    streams = await submit_all(state, call.trace, call.requests)
    if not body.stream:

        async def build(outputs: list[RequestOutput]) -> dict[str, Any]:
            response = finished(turn.shell, outputs, output_items(outputs[0].outputs[0]))
            if store is not None:
                await store.save(turn, response)
            return response

        return await respond(request, state, call.trace, streams, build, RESPONSES)
    events = ResponseEvents(turn.shell)

    async def final(outputs: list[RequestOutput]) -> list[dict[str, Any]]:
        ending, response = events.ending(lambda items: finished(turn.shell, outputs, items))
        if store is not None:
            await store.save(turn, response)
        return ending

    async def on_failure(error: APIError) -> list[dict[str, Any]]:
        code = error.code or error.type
        response = failed(turn.shell, code, error.message, events.items)
        if store is not None:
            try:  # the client still gets its error events if the record cannot be written
                await store.save(turn, response)
            except Exception:
                logger.exception("failed response %s not stored", response_id)
        return events.failure(response, code, error.message)

    return await stream_response(
        request, state, call.trace, streams, events.chunks, final, RESPONSES, on_failure
    )


@router.get("/v1/responses/{response_id}", response_model=None)
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response (a background one: as it stands)."""
    key_id, is_admin = _caller(request)
    store = _service(request).store
    row = await asyncio.to_thread(store.get, response_id, key_id, is_admin=is_admin)
    return JSONResponse(row["response"])


@router.delete("/v1/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, request: Request) -> Response:
    """Deletes a stored response (a next turn can no longer continue from it)."""
    key_id, is_admin = _caller(request)
    store = _service(request).store
    await asyncio.to_thread(store.delete, response_id, key_id, is_admin=is_admin)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items", response_model=None)
async def list_input_items(response_id: str, request: Request) -> Response:
    """The input items of a stored response's own turn (one page)."""
    key_id, is_admin = _caller(request)
    store = _service(request).store
    row = await asyncio.to_thread(store.get, response_id, key_id, is_admin=is_admin)
    data = [
        {"id": item.get("id") or f"{response_id}_in{i}", **item}
        for i, item in enumerate(row["input_items"])
    ]
    return JSONResponse({
        "object": "list", "data": data, "has_more": False,
        "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
    })  # fmt: skip


@router.post("/v1/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, request: Request) -> Response:
    """Cancels a background response still running."""
    key_id, is_admin = _caller(request)
    return JSONResponse(await _service(request).cancel(response_id, key_id, is_admin))
