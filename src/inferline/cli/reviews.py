"""`inferline reviews list|export`: the human-review queue, read straight from the
database. ``export`` writes decided cases as JSONL, one test case a line — the input, the
draft, the reviewer's verdict and the answer they stood by (``expected``: the approved or
edited answer; none for a rejected or expired one) — for the evaluation datasets."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from inferline.cli.logs import parse_since
from inferline.cli.main import default_cache_dir

_DECIDED = ("approved", "edited", "rejected", "expired")


def register(sub: Any) -> None:
    """Adds the ``reviews`` subcommand and its ``list`` and ``export``."""
    p = sub.add_parser("reviews", help="the human-review queue: list it, export decided cases")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="cases (pending: nearest deadline first)")
    listing.add_argument("--status", default="pending", choices=["pending", *_DECIDED, "all"])
    listing.add_argument("--limit", type=int, default=50)
    export = actions.add_parser("export", help="decided cases as JSONL test cases")
    export.add_argument("--since", default=None, help="how far back: 30m, 2h, 7d")
    export.add_argument("--out", default="-", help="a file (default: standard output)")
    for name, action in (("list", listing), ("export", export)):
        action.add_argument("--route", default=None)
        action.add_argument("--database-url", default=None)
        if name == "list":
            action.add_argument("--json", action="store_true", help="JSON lines, not a table")
    p.set_defaults(run=run)


def test_case(case: dict[str, Any]) -> dict[str, Any]:
    """A decided case as a dataset line."""
    result = case.get("result") or {}
    stood_by = case["status"] in ("approved", "edited")
    return {
        "id": case["id"], "route": case["route"], "request_id": case["request_id"],
        "input": {"messages": case["request"].get("messages"),
                  "tools": case["request"].get("tools")},
        "draft": case["draft"]["message"], "verdict": case["status"],
        "expected": result.get("message") if stood_by else None,
        "check": case["check_name"], "score": case["score"], "checks": case["checks"],
        "reviewer": case["reviewer"], "comment": case["comment"],
        "decided_at": case["decided_at"],
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Lists cases or exports the decided ones."""
    from inferline.store import connect, default_database_url, migrate
    from inferline.store.reviews import ReviewStore

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    store = ReviewStore(database)
    if args.action == "list":
        status = None if args.status == "all" else args.status
        for case in store.find(status=status, route=args.route, limit=args.limit):
            print(json.dumps(case) if args.json else _line(case))
        return 0
    since = parse_since(args.since)
    cases = _decided(store, args.route, since)
    lines = "".join(json.dumps(test_case(case)) + "\n" for case in cases)
    if args.out == "-":
        sys.stdout.write(lines)
    else:
        Path(args.out).write_text(lines)
    print(f"{len(cases)} decided cases", file=sys.stderr)
    return 0


def _decided(store: Any, route: str | None, since: float | None) -> list[dict[str, Any]]:
    cases = []
    for status in _DECIDED:
        cases += [c for c in store.find(status=status, route=route, limit=1_000_000)
                  if since is None or (c["decided_at"] or 0) >= since]  # fmt: skip
    return sorted(cases, key=lambda c: c["decided_at"] or 0)


def _line(case: dict[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(case["created_at"]).strftime("%Y-%m-%d %H:%M:%S")
    deadline = dt.datetime.fromtimestamp(case["deadline_at"]).strftime("%H:%M:%S")
    draft = case["draft"]["message"]
    what = ", ".join(c["function"]["name"] for c in draft.get("tool_calls") or [])
    what = f"calls {what}" if what else repr((draft.get("content") or "")[:60])
    return (f"{case['id']}  {when}  {case['status']:8}  {case['route']}  check "
            f"{case['check_name']}  deadline {deadline}  {what}")  # fmt: skip
