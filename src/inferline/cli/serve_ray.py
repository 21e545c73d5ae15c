"""``inferline serve --ray``: the same config on Ray Serve. Each local model entry is a
deployment of engine replicas (``replicas: N`` or ``autoscaling: {min_replicas,
max_replicas, target_queued_tokens, upscale_delay_s, downscale_delay_s}``), the gateway is
the ingress deployment (``--gateway-replicas``), built in each of its replicas by the same
factory as a plain ``serve``, with the models as `cluster.ReplicaSet` targets."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inferline.cli.gateway_factory import build_local, serve_config
from inferline.cli.main import default_cache_dir
from inferline.core.protocols import Generator


def gateway_app(
    args: argparse.Namespace,
    api_keys: tuple[str, ...],
    data_dir: Path,
    generators: Mapping[str, Generator],
) -> Any:
    """The gateway's app in an ingress replica (the models are its ``generators``)."""
    from inferline.cli.server_factory import build_app

    app, _, _ = build_app(args, api_keys, data_dir, local_generators=generators)
    return app


def run_on_ray(args: argparse.Namespace, api_keys: tuple[str, ...]) -> int:
    """Deploys the config on a Ray cluster (a local one unless ``--address``) and serves
    until SIGTERM; returns 0."""
    from inferline.cluster.deploy import EngineDeployment, application, run

    config = serve_config(args, os.environ)
    data_dir = default_cache_dir()
    engines = [
        EngineDeployment(
            spec.name,
            functools.partial(build_local, spec, args, data_dir),
            spec.scale,
            args.drain_timeout,
        )
        for spec in config.local
    ]
    for engine in engines:
        scale = engine.scale
        count = (f"{scale.min_replicas or scale.replicas}-{scale.max_replicas} (autoscaled)"
                 if scale.autoscaled else str(scale.replicas))  # fmt: skip
        print(f"inferline: model {engine.name} on Ray: {count} replicas", file=sys.stderr)
    make_app = functools.partial(gateway_app, args, api_keys, data_dir)
    run(
        application(engines, make_app, args.gateway_replicas),
        address=args.address,
        host=args.host,
        port=args.port,
    )
    print("inferline: stopped", file=sys.stderr)
    return 0
