"""Builds the engine, request log and app for `inferline serve` (the wiring, in one place)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from inferline.server import ServerConfig, create_app
from inferline.server.state import ServerState
from inferline.store import RequestLog, RequestLogWriter, connect, default_database_url, migrate


def build_app(
    args: argparse.Namespace, api_keys: tuple[str, ...], data_dir: Path
) -> tuple[Any, ServerState]:
    """Loads the model (slow), opens the request log, returns the app and its state."""
    from inferline.engine import (
        AsyncEngine,
        CacheConfig,
        EngineConfig,
        FrontendConfig,
        LLMEngine,
        SchedulerConfig,
    )

    engine_config = EngineConfig(
        model=args.model,
        cache_dir=data_dir,
        device=args.device,
        weight_format=args.weight_format,
        max_model_len=args.max_model_len,
        cache=CacheConfig(kv_cache_gib=args.kv_cache_gib),
        scheduler=SchedulerConfig(
            max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs
        ),
    )
    generator = AsyncEngine(
        lambda: LLMEngine(engine_config),  # built on the engine thread (see AsyncEngine)
        FrontendConfig(
            max_queued_requests=args.max_queued_requests, stall_timeout_s=args.stall_timeout
        ),
    )
    database = connect(args.database_url or default_database_url(data_dir))
    migrate(database)
    writer = RequestLogWriter(RequestLog(database))
    config = ServerConfig(
        served_model_names=tuple(args.served_model_name or [args.model]),
        api_keys=api_keys,
        cors_origins=tuple(args.cors_origin),
        max_body_bytes=args.max_body_bytes,
        log_text=not args.no_log_text,
        drain_timeout_s=args.drain_timeout,
    )
    app = create_app(generator, config, log_writer=writer)
    return app, app.state.inferline
