"""What a request brings besides its body: its caller (key, priority, session, deadline,
Cache-Control), its trace context and task, read from the headers into a `CallerContext`
and the `RequestTrace` that follows it to the log."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from starlette.requests import Request

from inferline.core.sampling_params import Priority
from inferline.openai.requests import CallerContext
from inferline.server.errors import APIError
from inferline.server.observe import RequestTrace
from inferline.server.trace_fields import tool_results_json
from inferline.server.tracing import TraceContext, trace_context

PRIORITY_HEADER = "x-inferline-priority"
TASK_HEADER = "x-inferline-task-id"
SESSION_HEADER = "x-inferline-session"
TIMEOUT_HEADER = "x-inferline-timeout-ms"


def new_request_id(prefix: str) -> str:
    """``<prefix>-<32 hex>``: the id of the response, the request log row and the trace."""
    return f"{prefix}-{uuid.uuid4().hex}"


def caller_context(request: Request) -> CallerContext:
    """Priority, session and deadline from the headers; the key id from the guard."""
    priority = Priority.INTERACTIVE
    if request.headers.get(PRIORITY_HEADER, "").lower() == "batch":
        priority = Priority.BATCH  # batch job lines wait behind live traffic
    deadline = None
    timeout_ms = request.headers.get(TIMEOUT_HEADER)
    if timeout_ms is not None:
        try:
            value = float(timeout_ms)
        except ValueError:
            value = -1.0
        if not 0 < value <= 86_400_000:
            raise APIError(
                400,
                f"{TIMEOUT_HEADER} must be a number of milliseconds in (0, 86400000]",
                param=TIMEOUT_HEADER,
            )
        deadline = time.monotonic() + value / 1000
    identity = request.scope.get("state", {}).get("identity")
    key = getattr(identity, "key", None)
    task = request.headers.get(TASK_HEADER)
    return CallerContext(
        priority=priority,
        key_id=key.id if key is not None else None,
        session=request.headers.get(SESSION_HEADER),
        deadline=deadline,
        metadata={"task_id": task[:128]} if task else {},
        cache=_cache_control(request.headers.get("cache-control", "")),
        traceparent=_trace_of(request).traceparent,
    )


def _cache_control(value: str) -> Literal["default", "no-cache", "no-store"]:
    """The client's ``Cache-Control`` as far as the response cache cares."""
    directives = {part.strip().lower() for part in value.split(",")}
    if "no-store" in directives:
        return "no-store"
    if "no-cache" in directives:
        return "no-cache"
    return "default"


def _trace_of(request: Request) -> TraceContext:
    """The request's trace context, made once from its ``traceparent`` header."""
    context = getattr(request.state, "trace_context", None)
    if context is None:
        context = trace_context(request.headers.get("traceparent"))
        request.state.trace_context = context
    return context


def begin_trace(
    request: Request,
    request_id: str,
    endpoint: str,
    model: str,
    prompt_text: str | None,
    user: str | None,
    metadata: dict[str, str] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> RequestTrace:
    """The trace of one request: its ids (the ``traceparent`` returned names our span), its
    task (``x-inferline-task-id`` or ``metadata.task_id``) and metadata."""
    context = _trace_of(request)
    trace = RequestTrace(request_id, endpoint, model, prompt_text, user)
    trace.context = context
    trace.metadata = dict(metadata or {})
    trace.task_id = trace.metadata.get("task_id")
    trace.tool_results = tool_results_json(messages)
    trace.headers["traceparent"] = context.traceparent
    return trace
