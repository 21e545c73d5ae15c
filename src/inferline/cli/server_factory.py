"""Builds the engine, request log and app for `inferline serve` (the wiring, in one place)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inferline.cli.engine_factory import engine_config
from inferline.server import ServerConfig, create_app
from inferline.server.state import ServerState
from inferline.store import RequestLog, RequestLogWriter, connect, default_database_url, migrate


def build_app(
    args: argparse.Namespace, api_keys: tuple[str, ...], data_dir: Path
) -> tuple[Any, ServerState]:
    """Loads the models (slow), opens the request log, returns the app and its state."""
    predictors = []
    if args.config is not None:  # read and check the models file before the slow part
        from inferline.cli.models_file import load_specs
        from inferline.cli.predictor_factory import build_predictors

        specs = load_specs(args.config)
        predictors = build_predictors(specs, data_dir, trust_pickle=args.trust_pickle)
    from inferline.engine import (
        AsyncEngine,
        FrontendConfig,
        LLMEngine,
        SchedulerConfig,
    )

    engine_settings = engine_config(
        args,
        data_dir,
        scheduler=SchedulerConfig(
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_num_seqs=args.max_num_seqs,
            batch_token_share=args.batch_token_share,
            batch_prefill_tokens=args.batch_prefill_tokens,
        ),
    )
    generator = AsyncEngine(
        lambda: LLMEngine(engine_settings),  # built on the engine thread (see AsyncEngine)
        FrontendConfig(
            max_queued_requests=args.max_queued_requests, stall_timeout_s=args.stall_timeout
        ),
        name=(args.served_model_name or [args.model])[0],
    )
    database = connect(args.database_url or default_database_url(data_dir))
    migrate(database)
    writer = RequestLogWriter(RequestLog(database))
    config = ServerConfig(
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
    app = create_app(generator, config, log_writer=writer, predictors=predictors, extensions=[jobs])
    return app, app.state.inferline
