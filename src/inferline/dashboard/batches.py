"""Batch jobs: each job's status and progress (lines done and failed of all), tokens,
errors, and a cancel button (admin) for a job still running; htmx refreshes the table
every 5 seconds while a job runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from inferline.core.errors import InferlineError
from inferline.dashboard.app import require, require_post, with_notice
from inferline.dashboard.render import page
from inferline.jobs.objects import batch_object
from inferline.jobs.routes import cancel_job

router = APIRouter(include_in_schema=False)
_RUNNING = ("validating", "in_progress", "finalizing", "cancelling")


def _jobs(request: Request) -> Any:
    return getattr(request.app.state, "jobs", None)


def _batches(request: Request) -> list[dict[str, Any]]:
    jobs = _jobs(request)
    if jobs is None:
        return []
    rows = jobs.store.list_batches(100, None)
    return [batch_object(row, jobs.store.counts(row["id"])) for row in rows]


@router.get("/ui/batches")
def batches(request: Request) -> Response:
    """The jobs, newest first."""
    session = require(request, "viewer")
    views = _batches(request)
    running = any(b["status"] in _RUNNING for b in views)
    template = "batches_table.html" if request.headers.get("hx-request") else "batches.html"
    notice = request.query_params.get("notice")
    return page(request, template, session, batches=views, running=running, notice=notice,
                has_jobs=_jobs(request) is not None)  # fmt: skip


@router.post("/ui/batches/{batch_id}/cancel")
def cancel(batch_id: str, request: Request, csrf: str | None = Form(None)) -> Response:
    """Cancels a running job (admin); its finished lines are kept."""
    require_post(request, "admin", csrf)
    jobs = _jobs(request)
    notice = f"{batch_id}: cancelling"
    try:
        if jobs is None:
            raise InferlineError("this server runs no batch jobs")
        cancel_job(jobs, batch_id)
    except InferlineError as exc:
        notice = str(exc)
    return with_notice("/ui/batches", notice)
