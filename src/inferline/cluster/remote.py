"""`ReplicaSet`: a local model's Ray Serve deployment as a `core.Generator`, so the
gateway's router treats it as any target (retries, deadlines, breakers, continuation).

Ray Serve picks the replica of each call (`routing.PrefixAwareRouter`); a replica that
dies mid-request surfaces as `ReplicaLostError`: retryable, continued elsewhere when the
stream had started, and not counted against the deployment's breaker (Ray replaces the
replica; the others still answer)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator
from typing import Any

from inferline.core.errors import InferlineError, StreamInterruptedError, UpstreamError
from inferline.core.outputs import RequestOutput
from inferline.core.protocols import (
    GenerationRequest,
    GeneratorStats,
    HealthReport,
    ModelInfo,
)


class ReplicaLostError(StreamInterruptedError):
    """The replica serving a request died or became unreachable."""

    default_code = "replica_lost"
    counts_as_failure = False
    retry_here = True  # the deployment's other replicas continue it


class ReplicaSet:
    """The replicas of one local model's deployment, behind one Ray Serve handle."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.handle = handle
        self._infos: list[ModelInfo] = [ModelInfo(name)]
        self._calls: dict[str, Any] = {}
        self._last_error: str = ""

    async def start(self) -> None:
        """Waits for a replica to answer (the deployment is up once Serve says so)."""
        infos = await self.handle.models.remote()
        self._infos = [dataclasses.replace(i, name=self.name) for i in infos] or self._infos

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Nothing to stop here: Ray Serve owns the replicas."""

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Starts the call; the stream yields the replica's outputs."""
        sent = dataclasses.replace(request, spend=None)  # the guard stays on the gateway
        call = self.handle.options(stream=True).generate.remote(sent)
        self._calls[request.request_id] = call
        return self._stream(request.request_id, call)

    async def _stream(self, request_id: str, call: Any) -> AsyncGenerator[RequestOutput, None]:
        started = False
        try:
            async for output in call:
                started = True
                yield output
        except InferlineError:
            raise
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            raise _mapped(exc, self.name, started) from exc
        finally:
            self._calls.pop(request_id, None)
            call.cancel()  # a closed stream aborts the request in its replica

    async def abort(self, request_id: str) -> None:
        """Cancels the call (its replica aborts the request)."""
        call = self._calls.pop(request_id, None)
        if call is not None:
            call.cancel()

    def models(self) -> list[ModelInfo]:
        """The model's info as a replica reported it at start."""
        return list(self._infos)

    def health(self) -> HealthReport:
        """Live while the deployment exists; Ray Serve health-checks each replica."""
        return HealthReport(True, True, self._last_error or "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        """No engine counters here: the replica router reads them per replica."""
        return {}


def _mapped(exc: Exception, target: str, started: bool) -> Exception:
    """A Ray failure as an inferline error: the cause of an error the replica raised,
    else `ReplicaLostError` (the replica or its actor is gone)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, InferlineError):
        return cause
    message = f"replica of {target} lost at {time.strftime('%H:%M:%S')}: {type(exc).__name__}"
    if started:
        return ReplicaLostError(message, target=target)
    error = UpstreamError(message, target=target, code="replica_lost")
    error.counts_as_failure = False
    return error
