"""`inferline traces list|show`: request traces from the request log (what ``GET /v1/traces``
serves), read straight from the database."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from inferline.cli.logs import parse_since
from inferline.cli.main import default_cache_dir
from inferline.core.errors import InvalidParameterError


def register(sub: Any) -> None:
    """Adds the ``traces`` subcommand and its ``list`` and ``show``."""
    p = sub.add_parser("traces", help="request traces: list them, show one")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="traces newest first, filtered")
    listing.add_argument("--since", default=None, help="how far back: 30s, 10m, 2h, 1d")
    for name in ("route", "model", "key", "team", "task"):
        listing.add_argument(f"--{name}", default=None)
    listing.add_argument("--prompt", default=None, help="a prompt id, or id:version")
    listing.add_argument("--status", default=None, help="a status code, or 'error'")
    listing.add_argument("--min-latency-ms", type=float, default=None)
    listing.add_argument("--text", default=None, help="in the logged prompt or output")
    listing.add_argument("--limit", type=int, default=20)
    show = actions.add_parser("show", help="one trace with its attempts")
    show.add_argument("request_id", help="the x-request-id of the response")
    for action in (listing, show):
        action.add_argument("--database-url", default=None)
        action.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(run=run)


def prompt_filter(value: str | None) -> tuple[str | None, int | None]:
    """``--prompt id`` or ``id:version`` as (id, version)."""
    if value is None:
        return None, None
    name, _, version = value.partition(":")
    if version and not version.isdecimal():
        raise InvalidParameterError("--prompt must be an id or id:version", "prompt")
    return name, int(version) if version else None


def run(args: argparse.Namespace) -> int:
    """Lists traces or shows one; 1 when the one asked for is not there."""
    from inferline.store import connect, default_database_url, migrate
    from inferline.store.traces import TraceFilter, TraceStore, parse_status

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    store = TraceStore(database)
    if args.action == "show":
        trace = store.get(args.request_id)
        if trace is None:
            print(f"no trace {args.request_id!r}")
            return 1
        print(json.dumps(trace, indent=2) if args.json else _describe(trace))
        return 0
    prompt_id, prompt_version = prompt_filter(args.prompt)
    where = TraceFilter(
        since=parse_since(args.since), route=args.route, model=args.model, key_id=args.key,
        team=args.team, task_id=args.task, prompt_id=prompt_id, prompt_version=prompt_version,
        status=parse_status(args.status), text=args.text, limit=args.limit,
        min_latency_s=None if args.min_latency_ms is None else args.min_latency_ms / 1000,
    )  # fmt: skip
    traces, _ = store.list(where)
    if args.json:
        for trace in traces:
            print(json.dumps(trace))
        return 0
    print(f"{'time':19} {'status':>6} {'ms':>7} {'in':>5} {'out':>5} {'cost $':>9} "
          f"{'cache':>6}  route/target  request id")  # fmt: skip
    for trace in traces:
        print(_line(trace))
    return 0


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _line(trace: dict[str, Any]) -> str:
    usage = trace["usage"]
    where = f"{trace['route'] or trace['model']}/{trace['target'] or '-'}"
    return (
        f"{_when(trace['created_at']):19} {trace['status_code']:>6} "
        f"{_ms(trace['timings']['total_s']):>7} {usage['prompt_tokens']:>5} "
        f"{usage['completion_tokens']:>5} {trace['cost_usd']:>9.6f} {trace['cache'] or '-':>6}"
        f"  {where}  {trace['id']}"
    )


def _decision_lines(decision: dict[str, Any] | None) -> list[str]:
    """What the route's checks decided, each check's score, and the review's outcome."""
    if decision is None:
        return []
    head = f"decision {decision['decision']}"
    if decision["check"]:
        head += f" by {decision['check']} (score {decision['score']})"
    lines = [head]
    for check in decision["checks"]:
        fired = "fired" if check["fired"] else "passed"
        lines.append(f"  check {check['check']} ({check['on']} {check['kind']}): {fired}"
                     f"  score {check['score']}  {check['duration_s'] * 1000:.2f} ms")  # fmt: skip
    review = decision.get("review")
    if review is not None:
        who, comment = review["reviewer"] or "-", review["comment"] or ""
        lines.append(f"  review {decision['review_id']}: {review['status']} by {who}  {comment}")
    return lines


def _describe(trace: dict[str, Any]) -> str:
    """A trace as lines a person reads: who, what, how long, each attempt."""
    t, prompt = trace["timings"], trace["prompt"]
    lines = [
        f"{trace['id']}  {_when(trace['created_at'])}  status {trace['status_code']}"
        f"  finish {trace['finish_reason'] or '-'}",
        f"trace {trace['trace_id']} span {trace['span_id']} parent {trace['parent_span_id']}",
        f"route {trace['route']}  target {trace['target']}  cache {trace['cache'] or '-'}"
        f"  key {trace['key_id'] or '-'}  team {trace['team'] or '-'}"
        f"  task {trace['task_id'] or '-'}",
        f"prompt {prompt['id']} v{prompt['version']} ({prompt['label'] or 'no label'})"
        if prompt
        else "prompt -",
        f"ms: total {_ms(t['total_s'])}  queue {_ms(t['queue_s'])}  ttft {_ms(t['ttft_s'])}"
        f"  prefill {_ms(t['prefill_s'])}  decode {_ms(t['decode_s'])}"
        f"  per token {_ms(t['tpot_s'])}",
        f"tokens in {trace['usage']['prompt_tokens']} (cached "
        f"{trace['usage']['cached_tokens']}) out {trace['usage']['completion_tokens']}"
        f"  cost ${trace['cost_usd']:.6f}",
    ]
    if trace["error"]:
        lines.append(f"error: {trace['error']}")
    for call in trace["tool_calls"]:
        lines.append(f"tool call {call['id']} {call['name']}")
    lines += _decision_lines(trace.get("decision"))
    for attempt in trace.get("attempts", []):
        lines.append(
            f"  attempt {attempt['attempt']} {attempt['target']} ({attempt['reason']}): "
            f"{attempt['status']}{' ' + attempt['error_type'] if attempt['error_type'] else ''}"
            f"  ttft {_ms(attempt['ttft_s'])} ms  total {_ms(attempt['duration_s'])} ms"
            f"  ${attempt['cost_usd']:.6f}"
        )
    return "\n".join(lines)
