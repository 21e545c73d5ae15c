"""Wires the Batches API into a server: store, files, runner, routes, in-process executor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import Engine

from inferline.jobs import BatchRunner, FileStorage
from inferline.jobs.routes import JobsState, router
from inferline.store.jobs import JobStore


class AppExecutor:
    """Runs a batch line through the app's own endpoint, in process, at batch priority.

    The line takes exactly the path of a live request (validation, errors, request log,
    metrics), so its output equals what the same request would get over HTTP.
    """

    def __init__(self, api_key: str | None) -> None:
        self.headers = {"x-inferline-priority": "batch"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.client: httpx.AsyncClient | None = None

    def bind(self, app: FastAPI) -> None:
        """Points the executor at the app (built after the runner)."""
        transport = httpx.ASGITransport(app=app)
        self.client = httpx.AsyncClient(
            transport=transport, base_url="http://inferline", timeout=None
        )

    async def __call__(self, url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one request."""
        assert self.client is not None, "bind() was not called"
        response = await self.client.post(url, json=body, headers=self.headers)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text[:500], "type": "server_error"}}
        return response.status_code, payload


def build_jobs(
    database: Engine, data_dir: Path, api_key: str | None, *, max_in_flight: int
) -> tuple[BatchRunner, AppExecutor, JobsState]:
    """The runner (a server `Service`), its executor (to bind to the app) and route state."""
    store = JobStore(database)
    files = FileStorage(store, data_dir / "files")
    executor = AppExecutor(api_key)
    runner = BatchRunner(store, files, executor, max_in_flight=max_in_flight)
    return runner, executor, JobsState(store, files, runner)


def mount_jobs(app: FastAPI, executor: AppExecutor, state: JobsState) -> None:
    """Adds /v1/files and /v1/batches to the app."""
    app.state.jobs = state
    app.include_router(router)
    executor.bind(app)
