"""Models and routes lists, health, readiness, metrics and the admin reload."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferline.core.errors import UnknownModelError
from inferline.core.protocols import ModelInfo
from inferline.server.errors import APIError
from inferline.server.state import ServerState

router = APIRouter()
_STARTED = int(time.time())


def _card(info: ModelInfo) -> dict[str, Any]:
    card: dict[str, Any] = {
        "id": info.name,
        "object": "model",
        "created": _STARTED,
        "owned_by": info.owned_by,
        "task": "generate",
        "kind": info.kind,
        "max_model_len": info.max_model_len,
    }
    if info.kind == "route":
        card["strategy"] = info.strategy
        card["targets"] = [t.name for t in info.targets]
    return card


def _predictor_card(state: ServerState, name: str) -> dict[str, Any]:
    predictor = state.predictors.entries[name].predictor
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "inferline",
        "task": predictor.task,
        **predictor.describe(),
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """What ``model`` may name, OpenAI-shaped: routes and LLMs, then micro-batched models."""
    state: ServerState = request.app.state.inferline
    cards = [_card(info) for info in state.generator.models()]
    cards += [_predictor_card(state, n) for n in state.predictors.names()]
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model}")
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    """One route, model or micro-batched model, or 404."""
    state: ServerState = request.app.state.inferline
    if model in state.predictors.entries:
        return _predictor_card(state, model)
    infos = state.generator.models()
    for info in infos:
        if info.name == model:
            return _card(info)
    served = [i.name for i in infos] + state.predictors.names()
    raise UnknownModelError.not_served(model, served)


@router.get("/v1/routes")
async def list_routes(request: Request) -> dict[str, Any]:
    """Every route with its targets: breaker state, in-flight, error rate, latency."""
    state: ServerState = request.app.state.inferline
    routes = [
        {
            "id": info.name,
            "object": "route",
            "strategy": info.strategy,
            "targets": [dataclasses.asdict(t) for t in info.targets],
        }
        for info in state.generator.models()
        if info.kind == "route"
    ]
    return {"object": "list", "data": routes}


@router.post(
    "/admin/reload",
    responses={400: {"description": "the new config is invalid; the old one stays"}},
)
async def reload(request: Request) -> dict[str, Any]:
    """Re-reads the config file: new models load before traffic moves, dropped ones drain."""
    state: ServerState = request.app.state.inferline
    if state.reload is None:
        raise APIError(
            400, "this server was not started with --config: nothing to reload", param="config"
        )
    try:
        result = await state.reload()
    except Exception as exc:
        state.last_reload = {"at": time.time(), "ok": False, "error": str(exc)[:500]}
        raise
    state.last_reload = {"at": time.time(), "ok": True, "result": result}
    return result


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the engine makes progress; 503 when its loop is dead or stalled."""
    state: ServerState = request.app.state.inferline
    report = state.generator.health()
    status = "ok" if report.is_live else "unhealthy"
    return JSONResponse({"status": status, "reason": report.reason}, 200 if report.is_live else 503)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once the model is loaded and the server admits requests (not while draining)."""
    state: ServerState = request.app.state.inferline
    report = state.generator.health()
    is_ready = report.is_ready and not state.is_draining
    reason = "shutting down" if state.is_draining else report.reason
    return JSONResponse({"ready": is_ready, "reason": reason}, 200 if is_ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    state: ServerState = request.app.state.inferline
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
