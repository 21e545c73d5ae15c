"""Runs batch jobs in the background of the server, durably.

One asyncio task walks the active jobs oldest first: it validates a new job's input file,
then executes its pending lines (up to ``max_in_flight`` at a time, each through the
server's own endpoint at batch priority, so live requests go first), writes each result to
the store as it finishes, and finally writes the output and error files and marks the job
completed in one update. A killed server resumes from the pending lines; a line that was
running when it died runs again, and the store keeps one result per line. A line the
server cannot answer right now (its engine is dead, it is draining) is not a result: the
line stays pending and the runner pauses until the next poll (or the next start).

Cancellation and expiry stop new lines at once and abort the running ones; finished lines
stay in the output file, the others go to the error file (``batch_cancelled``,
``batch_expired``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferline.jobs.executor import LineExecutor, LineResponse
from inferline.jobs.files import FileStorage
from inferline.jobs.objects import output_record
from inferline.jobs.validation import validate_input
from inferline.store.jobs import JobStore, LineResult

logger = logging.getLogger(__name__)

RETRYABLE = (429, 500, 502, 503, 504)
# not the line's fault, and not for long: the line waits (an engine restarting, a drain, every
# target of its route down or cooling down)
PAUSE_CODES = frozenset(("engine_dead", "shutting_down", "all_targets_failed"))
MAX_RETRY_AFTER_S = 60.0


class _Paused(Exception):
    """The server cannot run lines now (its engine is down, or it is draining)."""


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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: set[str] = set()  # jobs being cancelled or expired: stop their lines
        self._running: dict[str, set[asyncio.Task[None]]] = {}

    async def start(self) -> None:
        """Starts the worker (resuming every unfinished job) on the running event loop."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop:
            return
        self._loop = loop
        self._wakeup = asyncio.Event()  # bound to this loop (an app may be restarted)
        self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        """Stops the worker; running lines are aborted and stay pending for the next start."""
        task, self._task = self._task, None
        if task is not None and self._loop is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loop = None

    def wake(self) -> None:
        """A job was created: look now rather than at the next poll (from any thread)."""
        self._on_loop(self._wakeup.set)

    def cancel(self, batch_id: str) -> None:
        """A job moved to ``cancelling``: abort its running lines now (from any thread)."""
        self._on_loop(self._cancel, batch_id)

    def _cancel(self, batch_id: str) -> None:
        self._stopping.add(batch_id)
        for task in self._running.get(batch_id, ()):
            task.cancel()
        self._wakeup.set()

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Runs ``fn`` on the runner's event loop (routes call from worker threads)."""
        loop = self._loop
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if loop is None or current is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    async def _run(self) -> None:
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
        await asyncio.to_thread(
            self.store.transition,
            batch_id,
            (status,),
            final,
            output_file_id=output_id,
            error_file_id=error_id,
        )
        self._stopping.discard(batch_id)

    async def _validate(self, row: dict[str, Any]) -> None:
        path = Path(self.files.get(row["input_file_id"])["path"])
        lines, errors = await asyncio.to_thread(validate_input, path, row["endpoint"])
        if errors:
            await asyncio.to_thread(
                self.store.transition, row["id"], ("validating",), "failed", errors=errors
            )
        else:
            await asyncio.to_thread(self.store.start_batch, row["id"], lines)

    async def _run_lines(self, batch_id: str) -> None:
        """Executes pending lines until none is left, the job is stopped, or a line finds
        the server unable to answer (then the job waits for the next poll)."""
        row = await asyncio.to_thread(self.store.get_batch, batch_id)
        if row is None:
            return
        url = str(row["endpoint"])
        slots = asyncio.Semaphore(self.max_in_flight)
        running: dict[int, asyncio.Task[None]] = {}
        done: set[int] = set()  # finished in this pass: a stale pending query may list them
        self._running[batch_id] = set()
        try:
            while batch_id not in self._stopping:
                pending = await asyncio.to_thread(
                    self.store.pending_lines, batch_id, len(running) + 2 * self.max_in_flight
                )
                pending = [p for p in pending if p[0] not in running and p[0] not in done]
                if not pending and not running:
                    moved = await asyncio.to_thread(
                        self.store.transition, batch_id, ("in_progress",), "finalizing"
                    )
                    if moved:
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
                    task.add_done_callback(self._on_line_done(batch_id, line, running, done, slots))
                if running:
                    finished, _ = await asyncio.wait(
                        set(running.values()), return_when=asyncio.FIRST_COMPLETED
                    )
                    if any(_paused(task) for task in finished):
                        logger.warning(
                            "batch %s: the server cannot run lines now; paused", batch_id
                        )
                        return
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
        done: set[int],
        slots: asyncio.Semaphore,
    ) -> Callable[[asyncio.Task[None]], None]:
        def on_done(task: asyncio.Task[None]) -> None:
            running.pop(line, None)
            if not task.cancelled() and task.exception() is None:
                done.add(line)
            self._running.get(batch_id, set()).discard(task)
            slots.release()
            if not task.cancelled() and not _paused(task) and task.exception() is not None:
                logger.error("batch %s line %d: %s", batch_id, line, task.exception())

        return on_done

    async def _expired(self, batch_id: str) -> bool:
        """True when the job must stop running lines (cancelled or past its window)."""
        row = await asyncio.to_thread(self.store.get_batch, batch_id)
        if row is None or row["status"] != "in_progress":
            return True  # cancelled meanwhile: the next pass writes its files
        return time.time() > row["expires_at"]  # the next pass expires it

    async def _line(self, batch_id: str, line: int, url: str, body: dict[str, Any]) -> None:
        """Executes one line (retrying server-side failures) and records its result.

        Retries wait the response's Retry-After (capped) or an exponential backoff, and
        never after the last attempt. A response saying the server cannot answer now
        (engine dead, draining) raises `_Paused`: the line stays pending.
        """
        response = LineResponse(500, {})
        for attempt in range(self.max_attempts):
            try:
                response = await self.execute(url, body)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - recorded as the line's error below
                logger.warning("batch %s line %d: %s", batch_id, line, error)
                response = LineResponse(
                    500, {"error": {"message": str(error), "type": "server_error"}}
                )
            if response.status_code == 503 and response.error_code in PAUSE_CODES:
                raise _Paused(response.error_code)
            if response.status_code not in RETRYABLE or attempt == self.max_attempts - 1:
                break
            delay = response.retry_after_s or self.retry_delay_s * (2**attempt)
            await asyncio.sleep(min(delay, MAX_RETRY_AFTER_S))
        result = _result(response.status_code, response.body)
        await asyncio.to_thread(self.store.record_line, batch_id, line, result)

    def _write_files(
        self, batch_id: str, unfinished_code: str | None
    ) -> tuple[str | None, str | None]:
        suffix = batch_id.removeprefix("batch_")
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in self.store.finished_lines(batch_id):
            record = _output_line(suffix, item)
            is_ok = item["status_code"] == 200 and item["error"] is None
            (outputs if is_ok else errors).append(record)
        if unfinished_code is not None:
            error = {"code": unfinished_code, "message": _UNFINISHED[unfinished_code]}
            errors += [
                output_record(suffix, line, custom_id, None, error=error)
                for line, custom_id in self.store.unfinished_lines(batch_id)
            ]
        output = self._add_file(suffix, batch_id, "output", outputs)
        error_file = self._add_file(suffix, batch_id, "errors", errors)
        return output, error_file

    def _add_file(
        self, suffix: str, batch_id: str, kind: str, records: list[dict[str, Any]]
    ) -> str | None:
        if not records:
            return None
        name = f"{batch_id}_{'output' if kind == 'output' else 'errors'}.jsonl"
        return str(
            self.files.add_jsonl(f"file-{suffix}-{kind}", name, "batch_output", records)["id"]
        )


_UNFINISHED = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed: the batch was cancelled.",
}


def _paused(task: asyncio.Task[None]) -> bool:
    return not task.cancelled() and isinstance(task.exception(), _Paused)


def _output_line(suffix: str, item: dict[str, Any]) -> dict[str, Any]:
    if item["error"] is not None:
        return output_record(suffix, item["line"], item["custom_id"], None, error=item["error"])
    return output_record(
        suffix, item["line"], item["custom_id"], item["status_code"], item["response"] or {}
    )


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
