"""A batch file without a server: its lines through an app in process, appended to an
output file as they finish (the format of the Batches API's output files).

Used by ``inferline batch run``; `inferline.jobs.offline_ray` does the same over Ray actors.
Each record is flushed and fsynced as it is written, so a crash loses no finished line and
at worst leaves the last one cut (a resume drops it and runs that line again).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from inferline.jobs.executor import AppExecutor, LineResponse
from inferline.jobs.objects import output_record

Line = tuple[int, str, dict[str, Any]]  # (line number, custom_id, body)


def append_record(output: BinaryIO, record: dict[str, Any]) -> None:
    """Writes one output line durably."""
    output.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    output.flush()
    os.fsync(output.fileno())


async def run_lines(
    app: Any,
    lines: list[Line],
    url: str,
    suffix: str,
    output_path: Path,
    *,
    max_in_flight: int,
    on_result: Callable[[LineResponse], None],
) -> None:
    """Runs ``lines`` through ``app`` (its lifespan included), at most ``max_in_flight`` at
    once, appending each result to ``output_path`` as it finishes."""
    executor = AppExecutor(None)
    executor.bind(app)
    slots = asyncio.Semaphore(max_in_flight)
    with output_path.open("ab") as output:

        async def one(line: int, custom_id: str, body: dict[str, Any]) -> None:
            async with slots:
                response = await executor(url, body)
            record = output_record(suffix, line, custom_id, response.status_code, response.body)
            append_record(output, record)
            on_result(response)

        async with app.router.lifespan_context(app):
            await asyncio.gather(*(one(*line) for line in lines))
