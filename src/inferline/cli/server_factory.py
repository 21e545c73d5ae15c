"""Builds the app of `inferline serve`: router, request log, Batches API, reload."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferline.cli.app_factory import build_app as build_gateway_app
from inferline.cli.gateway_factory import Gateway
from inferline.server import ServerConfig
from inferline.server.state import ServerState
from inferline.store import (
    KeyStore,
    RequestLog,
    RequestLogWriter,
    connect,
    default_database_url,
    migrate,
)

if TYPE_CHECKING:
    from inferline.server.otel import OtelExporter

_TRACES_PATH = "/v1/traces"


def build_app(
    args: argparse.Namespace,
    api_keys: tuple[str, ...],
    data_dir: Path,
    local_generators: Mapping[str, Any] | None = None,
) -> tuple[Any, ServerState, Gateway]:
    """Loads the models (slow; ``local_generators``: those already running elsewhere, by
    name), opens the request log; returns the app, its state and the gateway (routes and
    targets, reloadable)."""
    from inferline.cli.config_state import build_shared_state, build_tenants, state_config
    from inferline.cli.jobs_factory import jobs_extension
    from inferline.dashboard import dashboard_extension
    from inferline.dashboard.auth import Sessions

    state = state_config(args, os.environ)  # what gateway replicas share (state: / flags)
    database = connect(state.database_url or default_database_url(data_dir))
    migrate(database)
    server_config = ServerConfig(
        api_keys=api_keys,
        cors_origins=tuple(args.cors_origin),
        max_body_bytes=args.max_body_bytes,
        log_text=not args.no_log_text,
        drain_timeout_s=args.drain_timeout,
    )
    jobs = jobs_extension(
        database,
        data_dir,
        api_keys[0] if api_keys else None,
        max_in_flight=args.batch_max_in_flight,
    )
    shared = build_shared_state(state)  # None without a Redis URL: all in this process
    tenants = build_tenants(KeyStore(database), api_keys, shared)
    tenants.recover()  # requests in flight at a crash: charged as reserved, reported
    desk, reviews = _reviews(args, database)
    app, gateway = build_gateway_app(
        args,
        data_dir,
        os.environ,
        server_config=server_config,
        log_writer=RequestLogWriter(RequestLog(database)),
        extensions=[
            jobs,
            reviews,
            *_retention(args, database),
            *_rollouts(args, database, api_keys[0] if api_keys else None),
            dashboard_extension(Sessions(tenants)),
        ],  # fmt: skip
        reloadable=True,
        tenants=tenants,
        otel_exporter=otel_exporter(args, os.environ),
        desk=desk,
        local_generators=local_generators,
    )
    if shared is not None and gateway.cache is not None:
        from inferline.cache.shared import RedisAnswers

        gateway.cache.share(RedisAnswers(shared.client, shared.prefix))
    return app, app.state.inferline, gateway


def _reviews(args: argparse.Namespace, database: Any) -> tuple[Any, Any]:
    """The review desk (cases in the database) and its extension: the queue's routes, the
    expiry of overdue cases and the webhook of the config's ``reviews:``."""
    from inferline.cli.gateway_factory import serve_config
    from inferline.evals.reviewed import ReviewedCases
    from inferline.guard import ReviewDesk
    from inferline.server.reviews import ReviewService
    from inferline.server.routes_reviews import reviews_extension
    from inferline.store.datasets import DatasetStore
    from inferline.store.reviews import ReviewStore

    settings = serve_config(args, os.environ).reviews
    desk = ReviewDesk(ReviewStore(database))
    reviewed = ReviewedCases(desk.store, DatasetStore(database))
    service = ReviewService(
        desk, webhook_url=settings.webhook_url, webhook_secret=settings.webhook_secret,
        reviewed=reviewed,
    )  # fmt: skip
    return desk, reviews_extension(service)


def _rollouts(args: argparse.Namespace, database: Any, admin_key: str | None) -> list[Any]:
    """The config's rollouts (their scorers, state in the database), when it has any;
    their judges ask the server itself, with the admin key, at batch priority."""
    from inferline.cli.gateway_factory import serve_config
    from inferline.evals.gateway import InProcessGateway
    from inferline.evals.rollout import RolloutController
    from inferline.evals.scorer_specs import ScorerContext, build_scorer
    from inferline.prompts import PromptRegistry
    from inferline.server.rollouts import RolloutService, rollouts_extension
    from inferline.store.prompts import PromptStore
    from inferline.store.rollouts import RolloutStore

    config = serve_config(args, os.environ)
    if not config.rollouts:
        return []
    base_dir = config.path.parent if config.path is not None else Path.cwd()
    store, prompts = RolloutStore(database), PromptStore(database)
    registry, gateway = PromptRegistry(prompts), InProcessGateway(admin_key)
    context = ScorerContext(gateway=gateway, base_dir=base_dir,
                            resolve_prompt=lambda p, v: registry.version_of(p, v)[0])  # fmt: skip
    controllers = []
    for spec in config.rollouts:
        scorers = [(build_scorer(name, context), share) for name, share in spec.scorers]
        controllers.append(RolloutController(spec, store, scorers, prompts))
    return [rollouts_extension(RolloutService(controllers), bind=gateway.bind)]


def _retention(args: argparse.Namespace, database: Any) -> list[Any]:
    """The request log's pruner, when the command set a limit."""
    from inferline.core.errors import InvalidParameterError
    from inferline.server.retention import LogPruner, retention_extension

    days, rows = args.log_retention_days, args.log_max_rows
    if days is None and rows is None:
        return []
    if (days is not None and days <= 0) or (rows is not None and rows < 1):
        raise InvalidParameterError("--log-retention-days and --log-max-rows must be positive")
    return [retention_extension(LogPruner(database, max_age_days=days, max_rows=rows))]


def otlp_traces_endpoint(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """Where spans go: ``--otlp-endpoint`` (a collector's base URL, ``/v1/traces`` added
    unless there), else ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` as it is, else
    ``$OTEL_EXPORTER_OTLP_ENDPOINT`` plus ``/v1/traces``; None: nothing is exported."""
    base = flag or None
    if base is None:
        traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        if traces:
            return traces
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None
    if base is None:
        return None
    base = base.rstrip("/")
    return base if base.endswith(_TRACES_PATH) else base + _TRACES_PATH


def otel_exporter(args: argparse.Namespace, environ: Mapping[str, str]) -> OtelExporter | None:
    """The span exporter ``serve`` was asked for (``--otlp-endpoint`` or the standard
    variables), with message content when ``--otel-capture-content``; else None."""
    endpoint = otlp_traces_endpoint(getattr(args, "otlp_endpoint", None), environ)
    if endpoint is None:
        return None
    from inferline.server.otel import OtelExporter

    capture = bool(getattr(args, "otel_capture_content", False))
    return OtelExporter.otlp(endpoint, capture_content=capture)
