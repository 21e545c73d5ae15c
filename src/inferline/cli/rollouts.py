"""`inferline rollouts status [NAME]`: each rollout's state, per-arm counts, and its
events with their evidence (from the server's database)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from inferline.cli.main import default_cache_dir


def register(sub: Any) -> None:
    """Adds the ``rollouts`` subcommand."""
    p = sub.add_parser("rollouts", help="rollouts: state, counts, decisions and why")
    actions = p.add_subparsers(dest="action", required=True)
    status = actions.add_parser("status", help="every rollout, or one with its events")
    status.add_argument("name", nargs="?", default=None)
    status.add_argument("--json", action="store_true")
    status.add_argument("--database-url", default=None)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prints the rollouts; 1 when the one named is not there."""
    from inferline.store import connect, default_database_url, migrate
    from inferline.store.rollouts import RolloutStore

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    store = RolloutStore(database)
    rows = [r for r in store.all() if args.name in (None, r["name"])]
    if args.name is not None and not rows:
        print(f"no rollout {args.name!r}")
        return 1
    views = [{**row, "arms": _arms(store.counts(row["name"])),
              "events": store.events_of(row["name"])} for row in rows]  # fmt: skip
    if args.json:
        print(json.dumps(views, indent=2))
        return 0
    for view in views:
        print(_describe(view))
    return 0


def _arms(counts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {arm: {k: v for k, v in c.items() if k != "latencies"} for arm, c in counts.items()}


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _describe(view: dict[str, Any]) -> str:
    subject = f"{view['kind']} {view['subject']}" + (
        f" label {view['label']}" if view["label"] else "")  # fmt: skip
    lines = [f"{view['name']}: {view['state']} — {subject}: {view['baseline']} -> "
             f"{view['candidate']} at {view['share']:.0%}"]  # fmt: skip
    for arm, c in view["arms"].items():
        scored = c["passes"] + c["fails"]
        rate = f"{c['passes'] / scored:.3f}" if scored else "-"
        lines.append(f"  {arm:9} answers {c['n']:5}  pass rate {rate} of {scored}  "
                     f"errors {c['errors']}")  # fmt: skip
    for event in view["events"]:
        lines.append(f"  {_when(event['at'])}  {event['kind']:12} {event['reason']}")
    return "\n".join(lines)
