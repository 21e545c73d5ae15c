"""Builds the router, request log and app for `inferline serve` (the wiring, in one place)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from inferline.cli.gateway_factory import Gateway
from inferline.server import ServerConfig, create_app
from inferline.server.state import ServerState
from inferline.store import RequestLog, RequestLogWriter, connect, default_database_url, migrate


def build_app(
    args: argparse.Namespace, api_keys: tuple[str, ...], data_dir: Path
) -> tuple[Any, ServerState, Gateway]:
    """Checks the config, loads the models (slow), opens the request log; returns the app,
    its state and the gateway (routes and targets, reloadable)."""
    from inferline.cli.gateway_factory import serve_config

    config = serve_config(args, os.environ)  # every mistake is reported before a load
    predictors = []
    if config.predictors:
        from inferline.cli.predictor_factory import build_predictors

        predictors = build_predictors(
            list(config.predictors), data_dir, trust_pickle=args.trust_pickle
        )
    gateway = Gateway(args, data_dir, os.environ)
    database = connect(args.database_url or default_database_url(data_dir))
    migrate(database)
    writer = RequestLogWriter(RequestLog(database))
    server_config = ServerConfig(
        api_keys=api_keys,
        cors_origins=tuple(args.cors_origin),
        max_body_bytes=args.max_body_bytes,
        log_text=not args.no_log_text,
        drain_timeout_s=args.drain_timeout,
    )
    from inferline.cli.jobs_factory import jobs_extension

    jobs = jobs_extension(
        database,
        data_dir,
        api_keys[0] if api_keys else None,
        max_in_flight=args.batch_max_in_flight,
    )
    app = create_app(
        gateway.router,
        server_config,
        log_writer=writer,
        predictors=predictors,
        extensions=[jobs],
        reload=gateway.reload if args.config is not None else None,
    )
    return app, app.state.inferline, gateway
