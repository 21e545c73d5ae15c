"""`create_app`: the OpenAI-compatible ASGI app around any `Generator`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from inferline.core.protocols import Generator
from inferline.server import routes_chat, routes_completions, routes_ops
from inferline.server.config import ServerConfig
from inferline.server.errors import APIError, install_error_handlers
from inferline.server.middleware import GuardMiddleware
from inferline.server.observe import Metrics, Observer
from inferline.server.state import ServerState
from inferline.store.request_log import RequestLogWriter


def create_app(
    generator: Generator,
    config: ServerConfig | None = None,
    *,
    log_writer: RequestLogWriter | None = None,
) -> FastAPI:
    """Builds the app; the generator is started and stopped by the app's lifespan."""
    config = config or ServerConfig(served_model_names=(generator.model_name,))
    metrics = Metrics(generator)
    state = ServerState(generator, config, metrics, Observer(metrics, log_writer, config.log_text))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.is_draining = False
        await generator.start()
        yield
        state.is_draining = True
        await generator.shutdown(config.drain_timeout_s)
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
        state.observer.reject(request.url.path, model, error.status_code, error.message)

    install_error_handlers(app, on_rejected)
    for module in (routes_chat, routes_completions, routes_ops):
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
