"""Durable batch jobs: the OpenAI Files and Batches API, run in the engine's idle capacity.

`JobStore` (in `inferline.store`) keeps files, jobs and each line's result; `BatchRunner`
executes pending lines through a `LineExecutor` (the server's own endpoints, at batch
priority) and resumes after a restart; `routes` is the HTTP API.
"""

from inferline.jobs.executor import AppExecutor, LineExecutor, LineResponse
from inferline.jobs.files import FileStorage
from inferline.jobs.objects import output_record
from inferline.jobs.runner import BatchRunner
from inferline.jobs.validation import validate_input

__all__ = [
    "AppExecutor",
    "BatchRunner",
    "FileStorage",
    "LineExecutor",
    "LineResponse",
    "output_record",
    "validate_input",
]
