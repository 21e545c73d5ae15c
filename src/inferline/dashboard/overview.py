"""The overview: the last 5 minutes / hour / day per route from the per-minute rollups
(requests, errors, fallbacks, cache hits, latency and TTFT percentiles, output tokens/s,
cost per successful request), charts of the same series that update by themselves, and
the live state of routes and models (breakers, in-flight, queue, KV use), refreshed by
htmx every two seconds."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from inferline.dashboard.app import require, state_of
from inferline.dashboard.render import page

router = APIRouter(include_in_schema=False)
WINDOWS = {"5m": 300, "1h": 3600, "24h": 86400}


def _rollups(request: Request) -> Any:
    from inferline.store.rollups import Rollups

    store = state_of(request).traces
    return Rollups(store.engine) if store is not None else None


def _window(request: Request) -> tuple[str, int]:
    name = request.query_params.get("window", "1h")
    return (name, WINDOWS[name]) if name in WINDOWS else ("1h", WINDOWS["1h"])


@router.get("/ui")
def overview(request: Request) -> Response:
    """The overview page."""
    session = require(request, "viewer")
    name, seconds = _window(request)
    rollups = _rollups(request)
    now = time.time()
    windows = rollups.windows(now, seconds) if rollups is not None else {}
    everything = windows.pop("*", None)
    tasks = _tasks(request, now - seconds)
    return page(request, "overview.html", session, window=name, windows=WINDOWS,
                everything=everything, routes=sorted(windows.items()), live=_live(request),
                has_log=rollups is not None, tasks=tasks)  # fmt: skip


def _tasks(request: Request, since: float) -> dict[str, dict[str, Any]]:
    """Per route, its tasks of the window: success rate and cost per successful task."""
    from inferline.store.tasks import TaskStore

    store = state_of(request).traces
    return TaskStore(store.engine).stats_by_route(since=since) if store is not None else {}


@router.get("/ui/overview/series")
def series(request: Request) -> Response:
    """The charts' series (JSON) for the chosen window."""
    require(request, "viewer")
    _, seconds = _window(request)
    rollups = _rollups(request)
    data = rollups.series(time.time(), seconds) if rollups is not None else {}
    return JSONResponse(data, headers={"cache-control": "no-store"})


@router.get("/ui/overview/live")
def live(request: Request) -> Response:
    """The live table alone (what htmx swaps in every two seconds)."""
    session = require(request, "viewer")
    return page(request, "live.html", session, live=_live(request))


def _live(request: Request) -> dict[str, Any]:
    """Routes with their targets' breakers, and each model's queue and KV use, now."""
    generator = state_of(request).generator
    routes = [{"name": info.name, "strategy": info.strategy,
               "targets": [dataclasses.asdict(t) for t in info.targets]}
              for info in generator.models() if info.kind == "route"]  # fmt: skip
    models = []
    for model, stats in sorted(generator.stats().items()):
        total, asked = stats.num_kv_blocks_total, stats.prefix_cache_queried_tokens
        models.append({"name": model, "running": stats.num_running, "waiting": stats.num_waiting,
                       "kv_use": stats.num_kv_blocks_used / total if total else None,
                       "prefix_hit_rate": stats.prefix_cache_hit_tokens / asked if asked else None,
                       "preemptions": stats.num_preemptions})  # fmt: skip
    return {
        "routes": routes,
        "models": models,
        "reload": state_of(request).last_reload,
        "reloadable": state_of(request).reload is not None,
    }
