"""`EngineReplica`: the body of a local model's Ray Serve deployment. Each replica holds
one `core.Generator` (the local engine, built in the replica by a factory the CLI gives)
and streams its outputs to the gateway; it reports what the replica router and the
autoscaler read (queued prompt tokens, free KV blocks, running requests)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Any

from inferline.core.errors import EngineDeadError
from inferline.core.outputs import RequestOutput
from inferline.core.protocols import GenerationRequest, Generator, ModelInfo

MakeGenerator = Callable[[], Generator]


class EngineReplica:
    """One replica: a generator started in the replica's event loop.

    ``queued_tokens`` counts the prompt tokens of requests that have not produced their
    first output yet: the work ahead of a new request's first token, so the router and
    the autoscaler read time to first token from it rather than from request counts.
    """

    def __init__(self, make_generator: MakeGenerator, drain_timeout_s: float = 30.0) -> None:
        self.generator = make_generator()
        self.drain_timeout_s = drain_timeout_s
        self.queued_tokens = 0
        self.running = 0
        self._started = asyncio.Event()
        self._start_task = asyncio.get_event_loop().create_task(self._start())

    async def _start(self) -> None:
        await self.generator.start()
        self._started.set()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """The request's outputs as they come (a Ray streaming call; cancelling it aborts
        the request in the engine)."""
        await self._started.wait()
        waiting = request.estimated_prompt_tokens()
        self.queued_tokens += waiting
        self.running += 1
        stream = None
        try:
            stream = await self.generator.submit(dataclasses.replace(request, spend=None))
            async for output in stream:
                if waiting:
                    self.queued_tokens -= waiting
                    waiting = 0
                yield output
        finally:
            self.queued_tokens -= waiting
            self.running -= 1
            if stream is not None:
                await stream.aclose()  # a cancelled call aborts its request

    async def models(self) -> list[ModelInfo]:
        """The models this replica serves."""
        await self._started.wait()
        return self.generator.models()

    def record_routing_stats(self) -> dict[str, Any]:
        """What `PrefixAwareRouter` reads, polled by Ray Serve."""
        stats = list(self.generator.stats().values())
        total = sum(s.num_kv_blocks_total for s in stats)
        used = sum(s.num_kv_blocks_used for s in stats)
        return {"queued_tokens": self.queued_tokens, "running": self.running,
                "free_kv_blocks": max(0, total - used), "kv_blocks": total}  # fmt: skip

    def record_autoscaling_stats(self) -> dict[str, float]:
        """What the queued-tokens autoscaling policy reads, polled by Ray Serve."""
        return {"queued_tokens": float(self.queued_tokens), "running": float(self.running)}

    def check_health(self) -> None:
        """Ray Serve's health check: a dead or stalled engine fails it (the replica is
        then replaced)."""
        if self._start_task.done() and self._start_task.exception() is not None:
            raise EngineDeadError(f"the engine did not start: {self._start_task.exception()}")
        health = self.generator.health()
        if self._started.is_set() and not health.is_live:
            raise EngineDeadError(f"the engine is not live: {health.reason}")

    async def __del__(self) -> None:
        await self.generator.shutdown(self.drain_timeout_s)
