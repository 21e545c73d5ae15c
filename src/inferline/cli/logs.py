"""`inferline logs`: recent requests from the request log."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from typing import Any

from inferline.cli.main import default_cache_dir
from inferline.core.errors import InvalidParameterError

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: Any) -> None:
    """Adds the ``logs`` subcommand."""
    p = sub.add_parser("logs", help="list recent requests from the request log")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--model", default=None)
    p.add_argument("--status", type=int, default=None, help="HTTP status code, e.g. 400")
    p.add_argument("--since", default=None, help="how far back: 30s, 10m, 2h, 1d")
    p.add_argument("--key", default=None, help="a virtual key's id (key_...)")
    p.add_argument("--database-url", default=None)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(run=run)


def parse_since(value: str | None) -> float | None:
    """``30s``, ``10m``, ``2h`` or ``1d`` ago as epoch seconds (None: no limit)."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if match is None:
        raise InvalidParameterError(
            f"--since must look like 30s, 10m, 2h or 1d, got {value!r}", "since"
        )
    return time.time() - int(match.group(1)) * _UNIT_S[match.group(2)]


def _fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run(args: argparse.Namespace) -> int:
    """Prints the newest matching rows, newest first."""
    from inferline.store import RequestLog, connect, default_database_url, migrate

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    rows = RequestLog(database).recent(
        limit=args.limit,
        model=args.model,
        status_code=args.status,
        since=parse_since(args.since),
        key_id=args.key,
    )
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'time':19} {'status':>6} {'finish':>7} {'in':>5} {'out':>5} {'ttft_s':>7} "
          f"{'total_s':>8}  model / request id")  # fmt: skip
    for row in rows:
        when = dt.datetime.fromtimestamp(row["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{when:19} {row['status_code']:>6} {row['finish_reason'] or '-':>7} "
            f"{row['prompt_tokens']:>5} {row['completion_tokens']:>5} {_fmt_s(row['ttft_s']):>7} "
            f"{_fmt_s(row['total_time_s']):>8}  {row['model']} {row['request_id']}"
        )
        if row["error"]:
            print(f"{'':19} error: {row['error']}")
    return 0
