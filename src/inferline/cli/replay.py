"""`inferline replay`: logged requests sent again, with their recorded arrival times, to
a candidate (a running server's URL, or a config file served for the replay), and the
outputs, latencies and cost compared with what was logged."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from inferline.cli.main import default_cache_dir


def register(sub: Any) -> None:
    """Adds the ``replay`` subcommand."""
    p = sub.add_parser("replay", help="send logged traffic again to a candidate, compare")
    p.add_argument(
        "--against", required=True,
        help="the candidate: a server's URL, or a config file to serve for the replay",
    )  # fmt: skip
    p.add_argument("--speed", type=float, default=1.0, help="2.0: twice as fast as recorded")
    p.add_argument("--since", default="1h", help="from-traces window: 30m, 2h, 7d")
    for name in ("route", "model", "team", "decision"):
        p.add_argument(f"--{name}", default=None, help=f"from-traces filter: {name}")
    p.add_argument("--prompt", default=None, help="from-traces filter: a prompt id, or id:version")
    p.add_argument("--status", default=None, help="from-traces filter: a code, or 'error'")
    p.add_argument("--text", default=None, help="from-traces filter: in prompt or output")
    p.add_argument("--limit", type=int, default=1000, help="at most this many requests")
    p.add_argument("--to-model", default=None, help="send every request to this route/model")
    p.add_argument("--prompt-version", default=None, help="pin stored prompts to a version")
    p.add_argument("--api-key", default=None, help="the candidate's key ($INFERLINE_API_KEY)")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="an extra `serve` argument for a config-file candidate")  # fmt: skip
    p.add_argument("--json", type=Path, default=None, help="write the comparison here")
    p.add_argument("--database-url", default=None, help="where the traces are read from")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Reads the traces, serves the candidate if it is a file, replays, prints the report."""
    from inferline.evals.replay import logged_of

    requests = [r for r in map(logged_of, _traces(args)) if r is not None]
    if not requests:
        print("no logged request with its body matches (was text logged?)", file=sys.stderr)
        return 1
    span = (requests[-1].created_at - requests[0].created_at) / args.speed
    print(f"replaying {len(requests)} requests over {span:.1f} s", file=sys.stderr)
    with _candidate(args) as base_url:
        report = asyncio.run(_replay(args, base_url, requests))
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _traces(args: argparse.Namespace) -> list[dict[str, Any]]:
    from inferline.cli.logs import parse_since
    from inferline.cli.traces import prompt_filter
    from inferline.store import connect, default_database_url, migrate
    from inferline.store.traces import TraceFilter, TraceStore, parse_status

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    prompt_id, prompt_version = prompt_filter(args.prompt)
    where = TraceFilter(
        since=parse_since(args.since), route=args.route, model=args.model, team=args.team,
        decision=args.decision, prompt_id=prompt_id, prompt_version=prompt_version,
        status=parse_status(args.status), text=args.text,
    )  # fmt: skip
    found = TraceStore(database).matching(where, args.limit)
    return sorted(found, key=lambda t: t["created_at"])


async def _replay(args: argparse.Namespace, base_url: str, requests: list[Any]) -> dict[str, Any]:
    import httpx

    from inferline.evals.replay import ReplayOptions, compare, replay

    version: str | int | None = args.prompt_version
    if isinstance(version, str) and version.isdecimal():
        version = int(version)
    options = ReplayOptions(speed=args.speed, model=args.to_model, prompt_version=version)
    key = args.api_key or os.environ.get("INFERLINE_API_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600,
                                 limits=limits, trust_env=False) as client:  # fmt: skip
        results = await replay(client, requests, options)
    return {"against": args.against, "speed": args.speed, **compare(results)}


@contextmanager
def _candidate(args: argparse.Namespace) -> Iterator[str]:
    """The candidate's base URL; a config file is served on a free port meanwhile (its
    own traces in a temporary database)."""
    if args.against.startswith(("http://", "https://")):
        yield args.against.rstrip("/")
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="inferline-replay-") as directory:
        command = [sys.executable, "-m", "inferline", "serve", "--config", args.against,
                   "--port", str(port), "--database-url", f"sqlite:///{directory}/replay.db",
                   *args.serve_arg]  # fmt: skip
        log = Path(directory) / "serve.log"
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
            try:
                _wait_ready(f"http://127.0.0.1:{port}", process, log)
                yield f"http://127.0.0.1:{port}"
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(60)


def _wait_ready(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the candidate server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("the candidate server did not become ready in 300 s")
