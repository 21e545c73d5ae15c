"""Stored and background Responses API responses: writes them, runs background ones on
their own tasks, cancels them, and at start runs again those a crash interrupted.

A background response is written (``queued``) before the client hears of it, so a
``kill -9`` loses none: the next start finds it still queued or in progress and runs it
again from the request it kept (with the conversation it continued), at batch priority.
Its finish is a conditional UPDATE on the status, so a cancel and a finish cannot both win.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import Priority
from inferline.openai.requests import CallerContext, chat_generation
from inferline.openai.responses_api import ResponsesRequest, chat_body, input_messages
from inferline.openai.responses_output import (
    failed,
    finished,
    history_messages,
    output_items,
)
from inferline.server.errors import api_error_from
from inferline.server.observe import RequestTrace
from inferline.server.prompting import apply_prompt
from inferline.server.runner import collect_all, submit_all
from inferline.server.state import ServerState
from inferline.store.responses import ResponseStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    """One response being made: its shell (the fields that echo the request), the request
    as sent, its new input items and the conversation it continues plus that input."""

    shell: dict[str, Any]
    request: dict[str, Any]
    input_items: list[dict[str, Any]]
    conversation: list[dict[str, Any]]
    key_id: str | None

    def outcome(self, response: dict[str, Any]) -> list[dict[str, Any]]:
        """The conversation including ``response``'s answer (what a next turn continues)."""
        return [*self.conversation, *history_messages(response["output"])]


class ResponsesService:
    """Writes stored responses and runs background ones (a `Service` of the app)."""

    def __init__(self, state: ServerState, store: ResponseStore) -> None:
        self.state, self.store = state, store
        self.tasks: dict[str, asyncio.Task[None]] = {}

    async def save(self, turn: Turn, response: dict[str, Any]) -> None:
        """Writes a finished (or failed) response of a ``store: true`` request."""
        conversation = turn.outcome(response) if response["status"] != "failed" else None
        await asyncio.to_thread(
            self.store.put, response, request=turn.request, input_items=turn.input_items,
            conversation=conversation, key_id=turn.key_id,
        )  # fmt: skip

    async def enqueue(self, turn: Turn, requests: list[GenerationRequest], trace: Any) -> dict:
        """Writes the background response as queued, then runs it on a task; returns it."""
        queued = {**turn.shell, "status": "queued"}
        await asyncio.to_thread(
            self.store.put, queued, request=turn.request, input_items=turn.input_items,
            conversation=turn.conversation, key_id=turn.key_id,
        )  # fmt: skip
        self._spawn(turn, requests, trace)
        return queued

    def _spawn(self, turn: Turn, requests: list[GenerationRequest], trace: RequestTrace) -> None:
        response_id = turn.shell["id"]
        task = asyncio.create_task(self._run(turn, requests, trace))
        self.tasks[response_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(response_id, None))

    async def _run(self, turn: Turn, requests: list[GenerationRequest], trace: Any) -> None:
        """Generates, then records the outcome (unless cancelled meanwhile)."""
        state = self.state
        try:
            streams = await submit_all(state, trace, requests)
            running = {**turn.shell, "status": "in_progress"}
            await asyncio.to_thread(
                self.store.finish, running, turn.conversation, only_if=("queued",)
            )
            trace.outputs = outputs = await collect_all(streams, state, trace)
            response = finished(turn.shell, outputs, output_items(outputs[0].outputs[0]))
            status: int | None = 200
            message: str | None = None
        except asyncio.CancelledError:
            state.observer.finish(trace, 499, "cancelled")
            raise
        except Exception as exc:
            error = api_error_from(exc)
            is_logged = error.is_logged  # submit_all logs what it refuses
            response = failed(turn.shell, error.code or error.type, error.message, [])
            status, message = (None, None) if is_logged else (error.status_code, error.message)
        if status is not None:
            state.observer.finish(trace, status, message)
        conversation = turn.outcome(response) if response["status"] != "failed" else None
        await asyncio.to_thread(self.store.finish, response, conversation)

    async def cancel(self, response_id: str, key_id: str | None, is_admin: bool) -> dict:
        """Cancels a background response: its generation stops and it reads ``cancelled``
        (a finished one is returned as it is; one not in the background: a 400)."""
        row = await asyncio.to_thread(self.store.get, response_id, key_id, is_admin=is_admin)
        if row["background"] != "1":
            raise InvalidParameterError("only background responses can be cancelled", "id")
        response = {**row["response"], "status": "cancelled"}
        if await asyncio.to_thread(self.store.finish, response, row["conversation"]):
            task = self.tasks.pop(response_id, None)
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            return response
        return (await asyncio.to_thread(self.store.get, response_id, None, is_admin=True))[
            "response"
        ]

    async def start(self) -> None:
        """Runs again the background responses a crash left unfinished."""
        rows = await asyncio.to_thread(self.store.active_background)
        for row in rows:
            try:
                await self._resume(row)
            except Exception as exc:  # one bad row must not stop the server
                logger.warning("background response %s not resumed: %s", row["id"], exc)
                error = api_error_from(exc)
                response = failed(row["response"], error.code or "resume_failed", error.message, [])
                await asyncio.to_thread(self.store.finish, response, None)

    async def _resume(self, row: dict[str, Any]) -> None:
        body = ResponsesRequest.model_validate(row["request"])
        new_messages = input_messages(body)
        history = row["conversation"][: len(row["conversation"]) - len(new_messages)]
        chat, _ = await apply_prompt(self.state, chat_body(body, history, new_messages))
        context = CallerContext(priority=Priority.BATCH, key_id=row["key_id"])
        generation = chat_generation(chat, row["id"], context)
        trace = RequestTrace(row["id"], "/v1/responses", chat.model, None, chat.user)
        shell = {**row["response"], "status": "in_progress"}
        turn = Turn(shell, row["request"], row["input_items"], row["conversation"], row["key_id"])
        logger.info("resuming background response %s", row["id"])
        self._spawn(turn, [generation.request], trace)

    async def stop(self) -> None:
        """Lets running background responses finish while the models drain (a response
        still running when the process ends is resumed at the next start)."""
