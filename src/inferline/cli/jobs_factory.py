"""Wires the Batches API into a server: store, files, runner, routes, in-process executor."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from inferline.jobs import AppExecutor, BatchRunner, FileStorage
from inferline.jobs.routes import JobsState, router
from inferline.server.app import Extension
from inferline.store.jobs import JobStore


def jobs_extension(
    database: Engine, data_dir: Path, api_key: str | None, *, max_in_flight: int
) -> Extension:
    """``/v1/files`` and ``/v1/batches`` with their runner (a service of the app), whose
    lines go through the app's own endpoints."""
    store = JobStore(database)
    files = FileStorage(store, data_dir / "files")
    executor = AppExecutor(api_key)
    runner = BatchRunner(store, files, executor, max_in_flight=max_in_flight)
    return Extension(
        router, "jobs", JobsState(store, files, runner), bind=executor.bind, service=runner
    )
