"""Rollouts in the server: a chat request whose prompt (by label) or route has a rollout
is given its arm (its version pinned, or its route replaced) before anything else; when
it ends, the observer hands the answer to a background worker that scores it, records
it and lets the rollout decide. Nothing of this runs on the token path: the arm is a
hash, the scoring happens after the response. ``GET /v1/rollouts`` shows each rollout
with its counts and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, FastAPI, Request

from inferline.core.errors import NotFoundError
from inferline.evals.rollout import Observation, RolloutController
from inferline.openai.schemas import ChatCompletionRequest
from inferline.server.app import Extension
from inferline.server.observe import RequestTrace
from inferline.server.state import ServerState

logger = logging.getLogger(__name__)
router = APIRouter()
_QUEUE = 10_000


class RolloutService:
    """The server's rollouts, and the worker that feeds them answers."""

    def __init__(self, controllers: Sequence[RolloutController]) -> None:
        self.controllers = {c.spec.name: c for c in controllers}
        self.by_prompt = {c.spec.subject: c for c in controllers if c.spec.kind == "prompt"}
        self.by_route = {c.spec.subject: c for c in controllers if c.spec.kind == "route"}
        self.queue: asyncio.Queue[tuple[str, Observation]] = asyncio.Queue(_QUEUE)
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Creates (or finds) every rollout, then starts the worker."""
        for controller in self.controllers.values():
            await asyncio.to_thread(controller.start)
        self._task = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Stops the worker (answers still queued are not scored)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def assign(
        self, body: ChatCompletionRequest, session: str | None
    ) -> tuple[ChatCompletionRequest, tuple[str, str] | None]:
        """``body`` on its arm, and (rollout, arm); unchanged and None when no running
        rollout covers it (a prompt named by an explicit version is never rerouted)."""
        ref = body.prompt
        if ref is not None and ref.id in self.by_prompt:
            controller = self.by_prompt[ref.id]
            if ref.version not in (None, controller.spec.label):
                return body, None
            arm = controller.arm(_who(controller.spec.sticky, body.user, session))
            if arm is None:
                return body, None
            spec = controller.spec
            version = int(spec.candidate if arm == "candidate" else spec.baseline)
            pinned = ref.model_copy(update={"version": version})
            return body.model_copy(update={"prompt": pinned}), (spec.name, arm)
        routed = self.by_route.get(body.model)
        if routed is None:
            return body, None
        arm = routed.arm(_who(routed.spec.sticky, body.user, session))
        if arm is None:
            return body, None
        model = routed.spec.candidate if arm == "candidate" else routed.spec.baseline
        return body.model_copy(update={"model": model}), (routed.spec.name, arm)

    def observe(self, trace: RequestTrace, status_code: int, text: str | None) -> None:
        """Queues a finished request of a rollout (never blocks; a full queue drops it)."""
        if trace.rollout is None:
            return
        name, arm = trace.rollout
        messages = list(getattr(trace.body, "messages", None) or [])
        seen = Observation(arm, trace.request_id, status_code, trace.latency_s, messages, text)
        try:
            self.queue.put_nowait((name, seen))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _work(self) -> None:
        while True:
            name, seen = await self.queue.get()
            try:
                decision = await self.controllers[name].observe(seen)
            except Exception:  # one bad answer must not stop the rollout's scoring
                logger.exception("rollout %s: scoring an answer failed", name)
                continue
            if decision is not None:
                logger.warning("rollout %s: %s", name, decision)


def _who(sticky: str, user: str | None, session: str | None) -> str | None:
    """Who a request is, for a sticky arm: its user (else session), its session (else
    user), or nobody (``request``: each request draws)."""
    if sticky == "user":
        return user or session
    if sticky == "session":
        return session or user
    return None


def _service(request: Request) -> RolloutService:
    service: RolloutService = request.app.state.rollouts
    return service


@router.get("/v1/rollouts")
def list_rollouts(request: Request) -> dict[str, Any]:
    """Every rollout with its state and per-arm counts."""
    service = _service(request)
    store = next(iter(service.controllers.values())).store if service.controllers else None
    rows = store.all() if store is not None else []
    return {"object": "list", "data": [_view(store, row) for row in rows]}


@router.get("/v1/rollouts/{name}")
def get_rollout(name: str, request: Request) -> dict[str, Any]:
    """One rollout with its counts and every event (the evidence of each decision)."""
    controller = _service(request).controllers.get(name)
    row = controller.store.get(name) if controller is not None else None
    if controller is None or row is None:
        raise NotFoundError(f"no rollout {name!r}", "name")
    return {**_view(controller.store, row), "events": controller.store.events_of(name)}


def _view(store: Any, row: dict[str, Any]) -> dict[str, Any]:
    counts = store.counts(row["name"])
    for arm in counts.values():
        arm.pop("latencies")
    return {"object": "rollout", **row, "arms": counts}


def rollouts_extension(
    service: RolloutService, bind: Callable[[FastAPI], None] | None = None
) -> Extension:
    """Rollouts as an app extension: the routes, the worker, the observer's hook
    (``bind``: also given the app, for the judges' in-process gateway)."""

    def bind_all(app: FastAPI) -> None:
        state: ServerState = app.state.inferline
        state.observer.rollout_sink = service.observe
        if bind is not None:
            bind(app)

    return Extension(router, "rollouts", service, bind=bind_all, service=service)
