"""`create_app`: the OpenAI-compatible ASGI app around any `Generator`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import Generator, Service
from inferline.prompts import PromptRegistry
from inferline.server import (
    routes_admin,
    routes_chat,
    routes_completions,
    routes_embeddings,
    routes_messages,
    routes_ops,
    routes_prompts,
    routes_responses,
    routes_tasks,
    routes_tokenize,
    routes_traces,
)
from inferline.server.config import ServerConfig
from inferline.server.errors import APIError, install_error_handlers
from inferline.server.metrics import Metrics
from inferline.server.middleware import GuardMiddleware
from inferline.server.observe import Observer, Redactor
from inferline.server.openapi import install_openapi
from inferline.server.predictors import PredictorEntry, PredictorPool
from inferline.server.responses_service import ResponsesService
from inferline.server.state import Reload, ServerState
from inferline.store.prompts import PromptStore
from inferline.store.request_log import RequestLogWriter
from inferline.store.responses import ResponseStore
from inferline.store.traces import TraceStore
from inferline.tenants import Tenants

if TYPE_CHECKING:  # the OpenTelemetry SDK is imported only when an exporter is made
    from inferline.server.otel import OtelExporter


@dataclass(frozen=True)
class Extension:
    """Routes another package adds to the app (the Batches API), with what they need.

    ``state`` is kept on ``app.state.<state_name>``; ``bind`` runs once the app exists (to
    point an in-process client at it); ``service`` starts after the models, stops before
    they drain.
    """

    router: APIRouter
    state_name: str
    state: Any
    bind: Callable[[FastAPI], None] | None = None
    service: Service | None = None


def create_app(
    generator: Generator,
    config: ServerConfig | None = None,
    *,
    log_writer: RequestLogWriter | None = None,
    predictors: Sequence[PredictorEntry] = (),
    extensions: Sequence[Extension] = (),
    reload: Reload | None = None,
    tenants: Tenants | None = None,
    otel_exporter: OtelExporter | None = None,
) -> FastAPI:
    """Builds the app; the generator, the predictors' batchers and the extensions' services
    start and stop with it.

    ``predictors`` are one-pass models (already set up) served on ``/v1/embeddings`` and
    ``/v1/predict/{model}`` beside the generator's LLMs; ``reload`` re-reads the config
    (``POST /admin/reload``); ``tenants`` holds the virtual keys, limits and budgets (by
    default: only the config's admin keys, no virtual keys); ``otel_exporter`` gets every
    finished chat or text completion as spans, and is flushed and shut down when the app stops.
    """
    config = config or ServerConfig()
    served = {info.name for info in generator.models()}
    clash = next((e.predictor.name for e in predictors if e.predictor.name in served), None)
    if clash is not None:
        raise InvalidParameterError(f"the model name {clash!r} is served twice", "model")
    metrics = Metrics(generator)
    observer = Observer(
        metrics, log_writer, config.log_text, Redactor(config.api_keys), otel_exporter
    )
    if otel_exporter is not None:
        otel_exporter.bind(generator)
    pool = PredictorPool(predictors, metrics)
    tenants = tenants or Tenants(None, config.api_keys)
    state = ServerState(generator, config, metrics, observer, pool, tenants, reload)
    responses = _attach_stores(state, log_writer)
    services: list[Service] = [e.service for e in extensions if e.service is not None]
    services[:0] = [responses] if responses is not None else []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.is_draining = False
        watcher = asyncio.create_task(state.tenants.watch())
        await generator.start()
        await state.predictors.start()
        for service in services:
            await service.start()
        yield
        state.is_draining = True
        for service in reversed(services):
            await service.stop()
        await generator.shutdown(config.drain_timeout_s)
        await state.predictors.stop()
        watcher.cancel()
        if log_writer is not None:
            log_writer.close()
        if otel_exporter is not None:
            await asyncio.to_thread(otel_exporter.shutdown)  # flushes: off the event loop

    app = FastAPI(
        title="inferline",
        summary="OpenAI-compatible inference server",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.inferline = state
    app.state.responses = responses
    _add_routes(app, state, extensions)
    _add_middleware(app, state, config)
    install_openapi(app)
    for extension in extensions:
        if extension.bind is not None:
            extension.bind(app)
    return app


def _attach_stores(
    state: ServerState, log_writer: RequestLogWriter | None
) -> ResponsesService | None:
    """The stores kept in the request log's database (traces, prompts, stored responses),
    when there is one; returns the Responses API's service."""
    if log_writer is None:
        return None
    engine = log_writer.log.engine
    state.traces = TraceStore(engine)
    state.prompts = PromptRegistry(PromptStore(engine))
    return ResponsesService(state, ResponseStore(engine))


def _add_routes(app: FastAPI, state: ServerState, extensions: Sequence[Extension]) -> None:
    def on_rejected(request: Request, error: APIError) -> None:
        model = request.path_params.get("model", "") if request.path_params else ""
        endpoint = (
            "/v1/predict" if request.url.path.startswith("/v1/predict/") else request.url.path
        )
        state.observer.reject(endpoint, model, error.status_code, error.message)

    install_error_handlers(app, on_rejected)
    modules = (
        routes_chat, routes_completions, routes_embeddings, routes_ops, routes_admin,
        routes_traces, routes_prompts, routes_tasks, routes_responses, routes_messages,
    )  # fmt: skip
    for module in modules:
        app.include_router(module.router)
    app.include_router(routes_tokenize.router)
    for extension in extensions:
        setattr(app.state, extension.state_name, extension.state)
        app.include_router(extension.router)


def _add_middleware(app: FastAPI, state: ServerState, config: ServerConfig) -> None:
    app.add_middleware(
        GuardMiddleware,
        tenants=state.tenants,
        max_body_bytes=config.max_body_bytes,
        max_file_bytes=config.max_file_bytes,
        is_draining=lambda: state.is_draining,
        metrics=state.metrics,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
