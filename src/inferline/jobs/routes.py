"""``/v1/files`` and ``/v1/batches``: the OpenAI Files and Batches API on the job store.

Added to the server's app as an extension (built by the CLI, included by `create_app`, so
the routes are in ``/openapi.json``); the job state lives on ``app.state.jobs``. Errors are
inferline's own exceptions (400 naming the field, 404 for unknown ids), which the app
answers in the OpenAI error envelope. The routes are plain functions (run in a worker
thread by FastAPI): the store is synchronous, and must never block the event loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.jobs.files import FileStorage
from inferline.jobs.objects import batch_object, file_object
from inferline.jobs.runner import BatchRunner
from inferline.jobs.validation import ENDPOINTS
from inferline.store.jobs import JobStore

router = APIRouter()
WINDOW_S = {"24h": 24 * 3600}
TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class JobsState:
    """What the routes need: the store, the file storage and the runner."""

    store: JobStore
    files: FileStorage
    runner: BatchRunner


class CreateBatchRequest(BaseModel):
    """``POST /v1/batches`` body."""

    model_config = ConfigDict(extra="ignore")
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _jobs(request: Request) -> JobsState:
    state: JobsState = request.app.state.jobs
    return state


def _page(objects: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    data = objects[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(objects) > limit,
    }


@router.post("/v1/files")
async def upload_file(
    request: Request,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> dict[str, Any]:
    """Stores a file; only ``purpose=batch`` (JSONL batch input) is accepted."""
    if purpose != "batch":
        raise InvalidParameterError(f"purpose {purpose!r} is not supported; use 'batch'", "purpose")
    content = await file.read()
    if not content.strip():
        raise InvalidParameterError("the file is empty", "file")
    name = file.filename or "upload.jsonl"
    row = await asyncio.to_thread(_jobs(request).files.add, content, name, purpose)
    return file_object(row)


@router.get("/v1/files")
def list_files(
    request: Request,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    after: str | None = None,
) -> dict[str, Any]:
    """Files, newest first."""
    rows = _jobs(request).store.list_files(purpose, limit + 1, after)
    return _page([file_object(r) for r in rows], limit)


@router.get("/v1/files/{file_id}")
def retrieve_file(file_id: str, request: Request) -> dict[str, Any]:
    """One file's object."""
    return file_object(_jobs(request).files.get(file_id))


@router.get("/v1/files/{file_id}/content", response_model=None)
def file_content(file_id: str, request: Request) -> FileResponse:
    """The file's bytes."""
    row = _jobs(request).files.get(file_id)
    return FileResponse(Path(row["path"]), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, request: Request) -> dict[str, Any]:
    """Deletes a file."""
    _jobs(request).files.delete(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


@router.post("/v1/batches")
def create_batch(body: CreateBatchRequest, request: Request) -> dict[str, Any]:
    """Creates a job in ``validating``; the runner takes it from there."""
    jobs = _jobs(request)
    if body.endpoint not in ENDPOINTS:
        raise InvalidParameterError(
            f"endpoint {body.endpoint!r} is not supported; use one of {', '.join(ENDPOINTS)}",
            "endpoint",
        )
    if body.completion_window not in WINDOW_S:
        raise InvalidParameterError("completion_window must be '24h'", "completion_window")
    _check_metadata(body.metadata)
    source = jobs.files.get(body.input_file_id)
    if source["purpose"] != "batch":
        raise InvalidParameterError("the input file's purpose must be 'batch'", "input_file_id")
    now = int(time.time())
    batch_id = f"batch_{uuid.uuid4().hex}"
    row: dict[str, Any] = {
        "id": batch_id,
        "status": "validating",
        "endpoint": body.endpoint,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "created_at": now,
        "expires_at": now + WINDOW_S[body.completion_window],
        "metadata": body.metadata,
    }
    jobs.store.create_batch(row)
    jobs.runner.wake()
    return _batch(jobs, batch_id)


@router.get("/v1/batches/{batch_id}")
def retrieve_batch(batch_id: str, request: Request) -> dict[str, Any]:
    """One job, with its current counts."""
    return _batch(_jobs(request), batch_id)


@router.get("/v1/batches")
def list_batches(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    """Jobs, newest first."""
    jobs = _jobs(request)
    rows = jobs.store.list_batches(limit + 1, after)
    return _page([batch_object(r, jobs.store.counts(r["id"])) for r in rows], limit)


@router.post("/v1/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, request: Request) -> dict[str, Any]:
    """Moves a running job to ``cancelling``; finished lines are kept."""
    return cancel_job(_jobs(request), batch_id)


def cancel_job(jobs: JobsState, batch_id: str) -> dict[str, Any]:
    """Cancels a job that has not finished (400 when it has): its batch object after."""
    row = _batch(jobs, batch_id)
    if row["status"] in TERMINAL:
        raise InvalidParameterError(f"the batch is already {row['status']}", "batch_id")
    jobs.store.transition(batch_id, ("validating", "in_progress"), "cancelling")
    jobs.runner.cancel(batch_id)
    return _batch(jobs, batch_id)


def _batch(jobs: JobsState, batch_id: str) -> dict[str, Any]:
    row = jobs.store.get_batch(batch_id)
    if row is None:
        raise NotFoundError(f"No such batch: {batch_id!r}", "batch_id")
    return batch_object(row, jobs.store.counts(batch_id))


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise InvalidParameterError("metadata holds at most 16 pairs", "metadata")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise InvalidParameterError(
                "metadata keys are at most 64 characters, values at most 512", f"metadata.{key}"
            )
