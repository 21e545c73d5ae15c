"""The seam between the serving layers and whatever generates text.

`server`, `jobs` and `evals` take a `Generator`; the CLI decides whether it is the local
engine (`inferline.engine.AsyncEngine`), a router over remote engines, or a test fake.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferline.core.outputs import RequestOutput
from inferline.core.sampling_params import Priority, SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    """One user request: a prompt (text or token ids) or chat messages, and how to sample.

    Exactly one of ``prompt`` and ``messages`` is set. Messages are rendered with the
    model's own chat template (``tools`` are passed to it).
    """

    request_id: str
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.INTERACTIVE

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("set exactly one of prompt and messages")


@dataclass(frozen=True)
class HealthReport:
    """What a health probe should say.

    ``is_live`` is False when the generator cannot make progress (its loop died, or requests
    are running and no step has finished for longer than the stall timeout).
    """

    is_live: bool
    is_ready: bool
    reason: str


@dataclass(frozen=True)
class GeneratorStats:
    """Point-in-time load and cumulative counters, read by the metrics endpoint."""

    num_running: int = 0
    num_waiting: int = 0
    num_kv_blocks_used: int = 0
    num_kv_blocks_total: int = 0
    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    num_preemptions: int = 0


class Generator(Protocol):
    """Anything that turns `GenerationRequest`s into streams of `RequestOutput`s.

    Invariants: `submit` validates before returning (bad input raises
    `InvalidParameterError`, a full queue raises `OverloadedError`, a dead generator raises
    `EngineDeadError`); the returned stream ends with an output whose ``finished`` is True,
    or raises `EngineDeadError`; `abort` frees the request's resources at once.
    """

    model_name: str
    max_model_len: int

    async def start(self) -> None:
        """Starts background work; called once from the server's event loop."""
        ...

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Stops admitting, lets running requests finish up to the timeout, stops."""
        ...

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Validates and queues ``request``; returns the stream of its outputs."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stops a request (no-op if unknown or finished)."""
        ...

    def health(self) -> HealthReport:
        """Liveness and readiness, computed on demand (cheap)."""
        ...

    def stats(self) -> GeneratorStats:
        """Current load and counters (cheap)."""
        ...


class Service(Protocol):
    """A background worker the server starts after its models and stops before draining."""

    async def start(self) -> None:
        """Starts the work on the running event loop."""
        ...

    async def stop(self) -> None:
        """Stops the work; what is unfinished must survive a restart."""
        ...
