"""`Periodic`: a server `Service` that runs one pass at start, then every ``interval_s``
(sooner when nudged), on the event loop; a pass that fails is logged and tried again."""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger(__name__)


class Periodic:
    """Subclasses write ``run_once``; ``name`` says what failed in the log."""

    name = "background pass"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run_once(self) -> object:
        """One pass."""
        raise NotImplementedError

    async def start(self) -> None:
        """Starts the passes."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stops them (a pass's work on a worker thread finishes there)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def nudge_threadsafe(self) -> None:
        """Runs a pass now (callable from a worker thread)."""
        if self._loop is not None and self._wake is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.run_once()
            except Exception:  # tried again at the next pass
                logger.exception("%s failed", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
