"""``python -m inferline.bench.fake_upstream``: serve the fake upstream from the command line.

Prints one JSON line to stdout once it accepts requests:
``{"ready": true, "base_url": "http://HOST:PORT", "port": PORT, "reset_port": R or null}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket

import uvicorn

from inferline.bench.fake_upstream.app import FakeUpstream
from inferline.bench.fake_upstream.runner import (
    FakeServer,
    ResetListener,
    bind,
    install_drop_filter,
)
from inferline.bench.fake_upstream.text import DEFAULT_WORDS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m inferline.bench.fake_upstream",
        description="A fault-injecting fake OpenAI-compatible upstream.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--reset-port", type=int, default=None, help="RST every connection here")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="between word chunks")
    parser.add_argument("--words", type=int, default=DEFAULT_WORDS, help="canonical answer length")
    parser.add_argument("--models", default="fake-model", help="comma-separated /v1/models ids")
    parser.add_argument("--max-log", type=int, default=100_000, help="request log entries kept")
    parser.add_argument("--log-level", default="warning")
    return parser


async def _serve(server: uvicorn.Server, sock: socket.socket, ready: dict[str, object]) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.005)
    if server.started:
        print(json.dumps(ready), flush=True)
    await task


def main(argv: list[str] | None = None) -> int:
    """Runs the fake upstream until interrupted (SIGINT/SIGTERM)."""
    args = _parser().parse_args(argv)
    app = FakeUpstream(
        words=args.words,
        token_delay_ms=args.token_delay_ms,
        models=tuple(m for m in args.models.split(",") if m),
        max_log=args.max_log,
    )
    sock = bind(args.host, args.port)
    resetter = None if args.reset_port is None else ResetListener(args.host, args.reset_port)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=1,
    )
    install_drop_filter()
    port = sock.getsockname()[1]
    ready = {
        "ready": True,
        "base_url": f"http://{args.host}:{port}",
        "port": port,
        "reset_port": None if resetter is None else resetter.port,
    }
    try:
        asyncio.run(_serve(FakeServer(config), sock, ready))
    finally:
        if resetter is not None:
            resetter.stop()
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
