"""`inferline serve`: the OpenAI-compatible server on a local model."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from inferline.cli.main import add_engine_arguments, add_runtime_arguments, default_cache_dir
from inferline.core.errors import InvalidParameterError


def register(sub: Any) -> None:
    """Adds the ``serve`` subcommand."""
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    add_engine_arguments(p)
    add_runtime_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--served-model-name",
        action="append",
        default=None,
        help="name clients use for the model (repeatable; default: --model)",
    )
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="require this bearer key (repeatable; also $INFERLINE_API_KEY)",
    )
    p.add_argument("--api-key-file", type=Path, default=None, help="file with one key per line")
    p.add_argument("--cors-origin", action="append", default=[], help="allowed browser origin")
    p.add_argument(
        "--database-url",
        default=None,
        help="request log database (default: sqlite file under $INFERLINE_HOME)",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="share rate limits, budgets and the response cache with every gateway process "
        "on this Redis (redis://host:port/db; also state.redis_url in --config)",
    )
    p.add_argument("--no-log-text", action="store_true", help="log counts and timings, not text")
    p.add_argument(
        "--log-retention-days",
        type=float,
        default=None,
        help="delete request-log rows (traces) older than this, in the background",
    )
    p.add_argument(
        "--log-max-rows",
        type=int,
        default=None,
        help="keep at most this many request-log rows (the oldest go first)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds in-flight requests may take to finish",
    )
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024)
    p.add_argument(
        "--batch-max-in-flight",
        type=int,
        default=64,
        help="batch job lines running at once (at batch priority, behind live requests)",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback bind without an API key",
    )
    p.add_argument(
        "--otlp-endpoint",
        default=None,
        metavar="URL",
        help="export request traces as OpenTelemetry spans over OTLP/HTTP to this collector "
        "(e.g. http://localhost:4318; /v1/traces is added; default: "
        "$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or $OTEL_EXPORTER_OTLP_ENDPOINT, else none)",
    )
    p.add_argument(
        "--otel-capture-content",
        action="store_true",
        help="put prompt and output text on the exported spans (not with --no-log-text)",
    )
    p.add_argument(
        "--ray",
        action="store_true",
        help="run on Ray Serve: each local model a deployment of its `replicas` (or "
        "`autoscaling`), the gateway the ingress (same config file, same API)",
    )
    p.add_argument("--address", default=None, help="with --ray: a running cluster to join")
    p.add_argument("--gateway-replicas", type=int, default=1, help="with --ray: ingress replicas")
    p.set_defaults(run=run)  # fmt: skip


def _api_keys(args: argparse.Namespace) -> tuple[str, ...]:
    keys = list(args.api_key)
    if os.environ.get("INFERLINE_API_KEY"):
        keys.append(os.environ["INFERLINE_API_KEY"])
    if args.api_key_file is not None:
        lines = args.api_key_file.read_text(encoding="utf-8").splitlines()
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return tuple(keys)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _load_summary(gateway: Any) -> str:
    """What was loaded: per local model its weight format (and the measured crossover)."""
    lines = []
    for target in gateway.router.targets.values():
        loaded = getattr(getattr(target.generator, "engine", None), "loaded", None)
        if loaded is None:
            continue
        weights = loaded.weight_format
        if weights == "mixed":
            rows = getattr(loaded.model, "int4_max_rows", 0)
            weights += f" (int4 up to {rows} rows, W8A8 above: measured on this CPU)"
        lines.append(
            f"{target.name}: loaded {loaded.name} in {loaded.load_time_s:.1f} s: weights "
            f"{weights}, kernels {loaded.kernels}"
        )
    return "\n".join([*lines, gateway.summary()])


def run(args: argparse.Namespace) -> int:
    """Loads the models, starts the server, returns 0 after a graceful shutdown."""
    import uvicorn

    from inferline.cli.server_factory import build_app

    api_keys = _api_keys(args)
    if not api_keys and not _is_loopback(args.host) and not args.insecure_no_auth:
        raise InvalidParameterError(
            f"refusing to serve on {args.host} without an API key: pass --api-key "
            "(or --insecure-no-auth if the network is trusted)",
            "host",
        )
    if args.ray:
        from inferline.cli.serve_ray import run_on_ray

        return run_on_ray(args, api_keys)
    app, state, gateway = build_app(args, api_keys, default_cache_dir())
    for line in _load_summary(gateway).splitlines():
        print(f"inferline: {line}", file=sys.stderr)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=int(args.drain_timeout) + 1,
        log_level="info",
    )
    server = _DrainingServer(config, state)
    server.run()
    print("inferline: stopped", file=sys.stderr)
    return 0


class _DrainingServer:
    """uvicorn.Server that marks the app draining the moment SIGTERM/SIGINT arrives, and
    reloads the config on SIGHUP."""

    def __new__(cls, config: Any, state: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                if state.reload is not None and hasattr(signal, "SIGHUP"):
                    loop = asyncio.get_running_loop()
                    loop.add_signal_handler(signal.SIGHUP, _reload_in_background, state)

            def handle_exit(self, sig: int, frame: Any) -> None:
                state.is_draining = True  # new requests get 503 while in-flight ones finish
                super().handle_exit(sig, frame)
                # uvicorn re-raises the captured signal after shutdown, so the process would
                # die by SIGTERM; a completed drain is a clean exit (status 0).
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()

        return Server(config)


_RELOADS: set[asyncio.Task[Any]] = set()


def _reload_in_background(state: Any) -> None:
    """SIGHUP: reload the config; a bad one is reported and the old one stays."""

    async def reload() -> None:
        try:
            result = await state.reload()
            print(f"inferline: reloaded: {result}", file=sys.stderr)
        except InvalidParameterError as error:
            print(f"inferline: reload refused, the old config stays: {error}", file=sys.stderr)

    task = asyncio.get_running_loop().create_task(reload())
    _RELOADS.add(task)
    task.add_done_callback(_RELOADS.discard)
