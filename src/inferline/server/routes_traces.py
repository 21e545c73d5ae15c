"""``GET /v1/traces`` and ``GET /v1/traces/{id}``: the trace of each request, from the log.

An admin key reads every trace; a virtual key reads only its own (another key's trace is a
404, as if it did not exist). The store is synchronous: FastAPI runs these off the loop.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.server.state import ServerState
from inferline.server.tenancy import identity_of
from inferline.store.traces import MAX_PAGE, TraceFilter, TraceStore, parse_status

router = APIRouter()


def _store(request: Request) -> TraceStore:
    state: ServerState = request.app.state.inferline
    if state.traces is None:
        raise InvalidParameterError("this server keeps no request log", "traces")
    return state.traces


def _own_key(request: Request) -> str | None:
    """None for an admin (every trace), else the caller's key id."""
    identity = identity_of(request)
    if identity.is_admin or identity.key is None:
        return None
    return identity.key.id


@router.get("/v1/traces")
def list_traces(
    request: Request,
    since: float | None = None,
    until: float | None = None,
    route: str | None = None,
    model: str | None = None,
    key_id: str | None = None,
    team: str | None = None,
    task_id: str | None = None,
    trace_id: str | None = None,
    prompt_id: str | None = None,
    prompt_version: int | None = None,
    decision: str | None = None,
    status: str | None = None,
    min_latency_ms: Annotated[float, Query(ge=0)] | None = None,
    q: Annotated[str, Query(min_length=1, max_length=500)] | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    before: int | None = None,
) -> dict[str, Any]:
    """Traces newest first; ``before`` (a trace's ``cursor``) continues a listing. ``q``
    searches the logged prompt and output text (only when text is logged)."""
    own = _own_key(request)
    if own is not None and key_id not in (None, own):
        raise NotFoundError(f"no key {key_id!r} among yours", "key_id")
    where = TraceFilter(
        since=since, until=until, route=route, model=model, key_id=own or key_id, team=team,
        task_id=task_id, trace_id=trace_id, prompt_id=prompt_id, prompt_version=prompt_version,
        decision=decision, status=parse_status(status),
        min_latency_s=None if min_latency_ms is None else min_latency_ms / 1000,
        text=q, limit=limit, before_id=before,
    )  # fmt: skip
    traces, has_more = _store(request).list(where)
    last = traces[-1]["cursor"] if traces and has_more else None
    return {"object": "list", "data": traces, "has_more": has_more, "next_before": last}


@router.get("/v1/traces/{request_id}")
def get_trace(request_id: str, request: Request) -> dict[str, Any]:
    """One request's trace with every attempt (the id is its ``x-request-id``)."""
    trace = _store(request).get(request_id)
    own = _own_key(request)
    if trace is None or (own is not None and trace["key_id"] != own):
        raise NotFoundError(f"no trace {request_id!r}", "request_id")
    return trace
