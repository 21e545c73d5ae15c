"""Runs batch jobs in the background of the server, durably.

One asyncio task walks the active jobs oldest first: it validates a new job's input file,
then executes its pending lines (up to ``max_in_flight`` at a time, each through the
server's own endpoint at batch priority, so live requests go first), writes each result to
the store as it finishes, and finally writes the output and error files and marks the job
completed in one update. A killed server resumes from the pending lines; a line that was
running when it died runs again, and the store keeps one result per line.

Cancellation and expiry stop new lines at once and abort the running ones; finished lines
stay in the output file, the others go to the error file (``batch_cancelled``,
``batch_expired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from inferline.jobs.files import FileStorage
from inferline.jobs.validation import validate_input
from inferline.store.jobs import JobStore, LineResult

logger = logging.getLogger(__name__)

# (url, body) -> (HTTP status, JSON body): how a line reaches the model.
LineExecutor = Callable[[str, dict[str, Any]], Awaitable[tuple[int, dict[str, Any]]]]
RETRYABLE = (429, 500, 502, 503, 504)


class BatchRunner:
    """The background worker of the Batches API."""

    def __init__(
        self,
        store: JobStore,
        files: FileStorage,
        execute: LineExecutor,
        *,
        max_in_flight: int = 32,
        max_attempts: int = 3,
        retry_delay_s: float = 1.0,
        poll_interval_s: float = 5.0,
    ) -> None:
        self.store, self.files, self.execute = store, files, execute
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self.poll_interval_s = poll_interval_s
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping: set[str] = set()  # jobs being cancelled or expired: stop their lines
        self._running: dict[str, set[asyncio.Task[None]]] = {}

    async def start(self) -> None:
        """Starts the worker (resuming every unfinished job)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stops the worker; running lines are aborted and stay pending for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        """A job was created: look now rather than at the next poll."""
        self._wakeup.set()

    def cancel(self, batch_id: str) -> None:
        """A job moved to ``cancelling``: abort its running lines now."""
        self._stopping.add(batch_id)
        for task in self._running.get(batch_id, ()):
            task.cancel()
        self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            try:
                for batch_id in await asyncio.to_thread(self.store.active_batch_ids):
                    await self._advance(batch_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad job must not stop the others
                logger.exception("batch runner: a step failed; retrying at the next poll")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_interval_s)

    async def _advance(self, batch_id: str) -> None:
        row = await asyncio.to_thread(self.store.get_batch, batch_id)
        if row is None:
            return
        status = row["status"]
        if status == "in_progress" and time.time() > row["expires_at"]:
            await self._finish(batch_id, status, "expired", "batch_expired")  # lines stored
        elif status == "validating":
            await self._validate(row)
        elif status == "in_progress":
            await self._run_lines(batch_id)
        elif status == "finalizing":
            await self._finish(batch_id, "finalizing", "completed", None)
        elif status == "cancelling":
            await self._finish(batch_id, "cancelling", "cancelled", "batch_cancelled")

    async def _finish(
        self, batch_id: str, status: str, final: str, unfinished_code: str | None
    ) -> None:
        """Writes the result files, then moves the job to ``final`` with their ids at once.

        A crash before the move leaves the job where it was; the next pass writes the same
        files (same ids) again, so the final status always comes with its files.
        """
        self._stopping.add(batch_id)
        for task in self._running.get(batch_id, ()):
            task.cancel()
        output_id, error_id = await asyncio.to_thread(self._write_files, batch_id, unfinished_code)
        self.store.transition(
            batch_id, (status,), final, output_file_id=output_id, error_file_id=error_id
        )
        self._stopping.discard(batch_id)

    async def _validate(self, row: dict[str, Any]) -> None:
        path = Path(self.files.get(row["input_file_id"])["path"])
        lines, errors = await asyncio.to_thread(validate_input, path, row["endpoint"])
        if errors:
            self.store.transition(row["id"], ("validating",), "failed", errors=errors)
        else:
            await asyncio.to_thread(self.store.start_batch, row["id"], lines)

    async def _run_lines(self, batch_id: str) -> None:
        """Executes pending lines until none is left, or the job is stopped."""
        row = await asyncio.to_thread(self.store.get_batch, batch_id)
        if row is None:
            return
        url = str(row["endpoint"])
        slots = asyncio.Semaphore(self.max_in_flight)
        running: dict[int, asyncio.Task[None]] = {}
        self._running[batch_id] = set()
        try:
            while batch_id not in self._stopping:
                pending = await asyncio.to_thread(
                    self.store.pending_lines, batch_id, len(running) + 2 * self.max_in_flight
                )
                pending = [p for p in pending if p[0] not in running]
                if not pending and not running:
                    if self.store.transition(batch_id, ("in_progress",), "finalizing"):
                        await self._finish(batch_id, "finalizing", "completed", None)
                    return
                for line, _, body in pending:
                    await slots.acquire()
                    if batch_id in self._stopping:
                        slots.release()
                        break
                    task = asyncio.create_task(self._line(batch_id, line, url, body))
                    running[line] = task
                    self._running[batch_id].add(task)
                    task.add_done_callback(self._on_line_done(batch_id, line, running, slots))
                if running:
                    await asyncio.wait(set(running.values()), return_when=asyncio.FIRST_COMPLETED)
                if await self._expired(batch_id):
                    return
        finally:
            for task in running.values():
                task.cancel()
            if running:
                await asyncio.gather(*running.values(), return_exceptions=True)
            self._running.pop(batch_id, None)

    def _on_line_done(
        self,
        batch_id: str,
        line: int,
        running: dict[int, asyncio.Task[None]],
        slots: asyncio.Semaphore,
    ) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            running.pop(line, None)
            self._running.get(batch_id, set()).discard(task)
            slots.release()
            if not task.cancelled() and task.exception() is not None:
                logger.error("batch %s line %d: %s", batch_id, line, task.exception())

        return done

    async def _expired(self, batch_id: str) -> bool:
        """True when the job must stop running lines (cancelled or past its window)."""
        row = await asyncio.to_thread(self.store.get_batch, batch_id)
        if row is None or row["status"] != "in_progress":
            return True  # cancelled meanwhile: the next pass writes its files
        return time.time() > row["expires_at"]  # the next pass expires it

    async def _line(self, batch_id: str, line: int, url: str, body: dict[str, Any]) -> None:
        """Executes one line (retrying server-side failures) and records its result."""
        status, response = 0, dict[str, Any]()
        for attempt in range(self.max_attempts):
            try:
                status, response = await self.execute(url, body)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - recorded as the line's error below
                status, response = 500, {"error": {"message": str(error), "type": "server_error"}}
            if status not in RETRYABLE:
                break
            await asyncio.sleep(self.retry_delay_s * (2**attempt))
        await asyncio.to_thread(self.store.record_line, batch_id, line, _result(status, response))

    def _write_files(
        self, batch_id: str, unfinished_code: str | None
    ) -> tuple[str | None, str | None]:
        suffix = batch_id.removeprefix("batch_")
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in self.store.finished_lines(batch_id):
            record = _output_line(batch_id, item)
            (outputs if item["status_code"] == 200 and item["error"] is None else errors).append(
                record
            )
        if unfinished_code is not None:
            message = {
                "batch_expired": "This request could not be executed before the completion "
                "window expired.",
                "batch_cancelled": "This request was not executed: the batch was cancelled.",
            }[unfinished_code]
            errors += [
                {
                    "id": f"batch_req_{suffix}_{custom_id}",
                    "custom_id": custom_id,
                    "response": None,
                    "error": {"code": unfinished_code, "message": message},
                }
                for custom_id in self.store.unfinished_custom_ids(batch_id)
            ]
        output = (
            self.files.add_jsonl(
                f"file-{suffix}-output", f"{batch_id}_output.jsonl", "batch_output", outputs
            )
            if outputs
            else None
        )
        error = (
            self.files.add_jsonl(
                f"file-{suffix}-errors", f"{batch_id}_errors.jsonl", "batch_output", errors
            )
            if errors
            else None
        )
        return (output["id"] if output else None, error["id"] if error else None)


def _output_line(batch_id: str, item: dict[str, Any]) -> dict[str, Any]:
    suffix = batch_id.removeprefix("batch_")
    if item["error"] is not None:
        response = None
    else:
        body = item["response"] or {}
        response = {
            "status_code": item["status_code"],
            "request_id": body.get("id", f"req_{suffix}_{item['line']}"),
            "body": body,
        }
    return {
        "id": f"batch_req_{suffix}_{item['line']}",
        "custom_id": item["custom_id"],
        "response": response,
        "error": item["error"],
    }


def _result(status: int, body: dict[str, Any]) -> LineResult:
    usage = body.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return LineResult(
        status_code=status,
        response=body,
        input_tokens=int(usage.get("prompt_tokens") or 0),
        cached_tokens=int(details.get("cached_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
    )
