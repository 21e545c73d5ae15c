"""``/v1/tasks``: requests grouped by ``task_id`` (``x-inferline-task-id`` or
``metadata.task_id``), their outcome, and cost per successful task.

An admin key sees every task; a virtual key only its own requests (a task with none of them
is a 404). The store is synchronous: FastAPI runs these off the loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.server.state import ServerState
from inferline.server.tenancy import identity_of
from inferline.store.tasks import TaskStore

router = APIRouter()


class OutcomeBody(BaseModel):
    """``POST /v1/tasks/{id}/outcome``."""

    model_config = ConfigDict(extra="forbid")
    success: bool
    score: float | None = None
    comment: Annotated[str, Field(max_length=4000)] | None = None


def _store(request: Request) -> TaskStore:
    state: ServerState = request.app.state.inferline
    if state.traces is None:
        raise InvalidParameterError("this server keeps no request log", "tasks")
    store = getattr(request.app.state, "task_store", None)
    if store is None:
        store = request.app.state.task_store = TaskStore(state.traces.engine)
    return store


def _own_key(request: Request) -> str | None:
    identity = identity_of(request)
    return None if identity.is_admin or identity.key is None else identity.key.id


@router.get("/v1/tasks/stats")
def task_stats(
    request: Request, since: float | None = None, route: str | None = None
) -> dict[str, Any]:
    """Tasks begun since ``since`` (epoch seconds) that used ``route``: counts, success
    rate, cost per successful task, p50/p95 task latency, share of time in tools."""
    return _store(request).stats(since=since, route=route, key_id=_own_key(request))


@router.get("/v1/tasks/{task_id}")
def get_task(task_id: str, request: Request) -> dict[str, Any]:
    """A task's steps (context and output tokens, retries, cost, tool waits), totals and
    outcome."""
    task = _store(request).task(task_id, key_id=_own_key(request))
    if task is None:
        raise NotFoundError(f"no task {task_id!r}", "task_id")
    return task


@router.post("/v1/tasks/{task_id}/outcome")
def set_outcome(task_id: str, body: OutcomeBody, request: Request) -> dict[str, Any]:
    """Records whether the task succeeded (a later call replaces it)."""
    store, own = _store(request), _own_key(request)
    if store.task(task_id, key_id=own) is None:
        raise NotFoundError(f"no task {task_id!r}", "task_id")
    return store.set_outcome(task_id, body.success, score=body.score, comment=body.comment,
                             key_id=own)  # fmt: skip
