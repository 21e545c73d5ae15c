"""The one app builder: the router (`Gateway`) and predictors behind `create_app`, for
``serve`` (with the request log, the Batches API and reload) and ``batch run`` (in process,
locally or in each Ray actor)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferline.cli.gateway_factory import Gateway, serve_config
from inferline.cli.main import default_cache_dir
from inferline.core.protocols import Generator
from inferline.server import ServerConfig, create_app
from inferline.server.app import Extension
from inferline.store import RequestLogWriter
from inferline.tenants import Tenants

if TYPE_CHECKING:
    from inferline.guard import ReviewDesk
    from inferline.server.otel import OtelExporter


def build_app(
    args: argparse.Namespace,
    data_dir: Path,
    environ: Mapping[str, str],
    *,
    server_config: ServerConfig | None = None,
    log_writer: RequestLogWriter | None = None,
    extensions: Sequence[Extension] = (),
    reloadable: bool = False,
    tenants: Tenants | None = None,
    otel_exporter: OtelExporter | None = None,
    desk: ReviewDesk | None = None,
    local_generators: Mapping[str, Generator] | None = None,
) -> tuple[Any, Gateway]:
    """Checks the config (every mistake before a load), loads the models, builds the app
    (``otel_exporter``: where finished requests go as spans, if anywhere; ``desk``: where
    review cases are kept; ``local_generators``: the local models already running
    elsewhere, by name — their Ray Serve deployments under ``serve --ray``)."""
    config = serve_config(args, environ)
    predictors = []
    if config.predictors:
        from inferline.cli.predictor_factory import build_predictors

        predictors = build_predictors(
            list(config.predictors), data_dir, trust_pickle=args.trust_pickle
        )
    from inferline.cli.scorers import embedding_functions, embedding_scorers, guard_classifiers

    gateway = Gateway(
        args,
        data_dir,
        environ,
        scorers=embedding_scorers(predictors),
        embedders=embedding_functions(predictors),
        classifiers=lambda policies: guard_classifiers(policies, predictors),
        desk=desk,
        local_generators=local_generators,
    )
    app = create_app(
        gateway.generator,
        server_config or ServerConfig(),
        log_writer=log_writer,
        predictors=predictors,
        extensions=extensions,
        reload=gateway.reload if reloadable and args.config is not None else None,
        tenants=tenants,
        otel_exporter=otel_exporter,
    )
    return app, gateway


def app_from_options(options: dict[str, Any]) -> Any:
    """An app from a command's options (a Ray actor rebuilds its replica's app with it)."""
    app, _ = build_app(argparse.Namespace(**options), default_cache_dir(), os.environ)
    return app
