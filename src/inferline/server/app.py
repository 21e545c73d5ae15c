"""`create_app`: the OpenAI-compatible ASGI app around any `Generator`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import Generator, Service
from inferline.server import routes_chat, routes_completions, routes_embeddings, routes_ops
from inferline.server.config import ServerConfig
from inferline.server.errors import APIError, install_error_handlers
from inferline.server.middleware import GuardMiddleware
from inferline.server.observe import Metrics, Observer
from inferline.server.predictors import PredictorEntry, PredictorPool
from inferline.server.state import ServerState
from inferline.store.request_log import RequestLogWriter


def create_app(
    generator: Generator,
    config: ServerConfig | None = None,
    *,
    log_writer: RequestLogWriter | None = None,
    predictors: Sequence[PredictorEntry] = (),
    services: Sequence[Service] = (),
) -> FastAPI:
    """Builds the app; the generator and the predictors' batchers start and stop with it.

    ``predictors`` are one-pass models (already set up) served on ``/v1/embeddings`` and
    ``/v1/predict/{model}`` beside the generator's LLM. ``services`` are background workers
    (the batch job runner) started after the models and stopped before they drain.
    """
    config = config or ServerConfig(served_model_names=(generator.model_name,))
    clash = next(
        (e.predictor.name for e in predictors if e.predictor.name in config.served_model_names),
        None,
    )
    if clash is not None:
        raise InvalidParameterError(f"the model name {clash!r} is served twice", "model")
    metrics = Metrics(generator)
    observer = Observer(metrics, log_writer, config.log_text)
    state = ServerState(generator, config, metrics, observer, PredictorPool(predictors, metrics))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.is_draining = False
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
        if log_writer is not None:
            log_writer.close()

    app = FastAPI(
        title="inferline",
        summary="OpenAI-compatible inference server",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.inferline = state

    def on_rejected(request: Request, error: APIError) -> None:
        model = request.path_params.get("model", "") if request.path_params else ""
        endpoint = (
            "/v1/predict" if request.url.path.startswith("/v1/predict/") else request.url.path
        )
        state.observer.reject(endpoint, model, error.status_code, error.message)

    install_error_handlers(app, on_rejected)
    for module in (routes_chat, routes_completions, routes_embeddings, routes_ops):
        app.include_router(module.router)
    app.add_middleware(
        GuardMiddleware,
        api_keys=config.api_keys,
        max_body_bytes=config.max_body_bytes,
        is_draining=lambda: state.is_draining,
        metrics=metrics,
    )
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
