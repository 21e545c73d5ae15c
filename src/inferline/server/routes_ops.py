"""Models list, health, readiness and metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inferline.server.state import ServerState

router = APIRouter()
_STARTED = int(time.time())


def _model_card(state: ServerState, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": _STARTED,
        "owned_by": "inferline",
        "task": "generate",
        "max_model_len": state.generator.max_model_len,
    }


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
    """The served models, OpenAI-shaped: the LLM's names, then the micro-batched models."""
    state: ServerState = request.app.state.inferline
    cards = [_model_card(state, n) for n in state.config.served_model_names]
    cards += [_predictor_card(state, n) for n in state.predictors.names()]
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model}")
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    """One served model, or 404."""
    state: ServerState = request.app.state.inferline
    if model in state.predictors.entries:
        return _predictor_card(state, model)
    state.check_model(model)
    return _model_card(state, model)


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
