"""Durable batch jobs: the OpenAI Files and Batches API, run in the engine's idle capacity.

`JobStore` (in `inferline.store`) keeps files, jobs and each line's result; `BatchRunner`
executes pending lines through a `LineExecutor` (the server's own endpoints, at batch
priority) and resumes after a restart; `routes` is the HTTP API.
"""

from inferline.jobs.files import FileStorage
from inferline.jobs.runner import BatchRunner, LineExecutor
from inferline.jobs.validation import validate_input

__all__ = ["BatchRunner", "FileStorage", "LineExecutor", "validate_input"]
