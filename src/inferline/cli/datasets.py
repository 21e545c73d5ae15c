"""`inferline datasets import|from-traces|from-reviews|list|show|export`: versioned
datasets in the server's database, from files, logged traffic and reviewed cases."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

from inferline.cli.main import default_cache_dir


def register(sub: Any) -> None:
    """Adds the ``datasets`` subcommand and its actions."""
    p = sub.add_parser("datasets", help="versioned datasets: import files, sample traces")
    actions = p.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", help="a JSONL or CSV file as the next version")
    imp.add_argument("name")
    imp.add_argument("file", type=Path)
    imp.add_argument(
        "--append", action="store_true",
        help="add to the latest version (default: the file is the whole dataset)",
    )  # fmt: skip
    imp.add_argument("--description", default=None)
    traces = actions.add_parser("from-traces", help="a sample of logged requests")
    traces.add_argument("name")
    traces.add_argument("--since", default="7d", help="how far back: 30m, 2h, 7d")
    for name in ("route", "model", "team", "decision"):
        traces.add_argument(f"--{name}", default=None)
    traces.add_argument("--prompt", default=None, help="a prompt id, or id:version")
    traces.add_argument("--status", default="200", help="a status code, or 'error'")
    traces.add_argument("--text", default=None, help="in the logged prompt or output")
    traces.add_argument("--sample", type=int, default=200, help="at most this many items")
    traces.add_argument("--scan", type=int, default=20_000, help="traces read to sample from")
    traces.add_argument("--seed", type=int, default=0)
    traces.add_argument(
        "--expected-from-output", action="store_true",
        help="the logged answer becomes the expected one (regression sets)",
    )  # fmt: skip
    actions.add_parser("from-reviews", help="add decided review cases now (the server does it)")
    actions.add_parser("list", help="every dataset with its latest version")
    show = actions.add_parser("show", help="a dataset's versions")
    show.add_argument("name")
    export = actions.add_parser("export", help="a version as JSONL or CSV")
    export.add_argument("name", help="NAME or NAME@VERSION")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    export.add_argument("--output", type=Path, default=None, help="default: stdout")
    for action in actions.choices.values():
        action.add_argument("--database-url", default=None)
    p.set_defaults(run=run)


def split_version(text: str) -> tuple[str, int | None]:
    """``NAME@VERSION`` -> (name, version); a bare name -> (name, None)."""
    name, _, version = text.rpartition("@")
    if name and version.isdecimal():
        return name, int(version)
    return text, None


def run(args: argparse.Namespace) -> int:
    """Runs one action against the database."""
    from inferline.store import connect, default_database_url, migrate
    from inferline.store.datasets import DatasetStore

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    store = DatasetStore(database)
    if args.action == "import":
        from inferline.evals.items import read_file

        items = read_file(args.file)
        done = store.write(args.name, items, source="file", note=str(args.file),
                           replace=not args.append, description=args.description)  # fmt: skip
        _said(done, len(items))
    elif args.action == "from-traces":
        _from_traces(args, database, store)
    elif args.action == "from-reviews":
        from inferline.evals.reviewed import ReviewedCases
        from inferline.store.reviews import ReviewStore

        print(f"{ReviewedCases(ReviewStore(database), store).sync()} reviewed case(s) added")
    elif args.action == "list":
        for row in store.catalog():
            print(f"{row['name']}  v{row['latest_version']}  {row['items']} items"
                  + (f"  {row['description']}" if row["description"] else ""))  # fmt: skip
    elif args.action == "show":
        print(json.dumps(store.get(args.name), indent=2, default=str))
    else:
        _export(args, store)
    return 0


def _said(done: dict[str, Any], count: int) -> None:
    state = "new version" if done["changed"] else "unchanged"
    print(f"{done['dataset']} v{done['version']} ({state}): {count} items, "
          f"{done['added']} added, {done['removed']} removed")  # fmt: skip


def _from_traces(args: argparse.Namespace, database: Any, store: Any) -> None:
    from inferline.cli.logs import parse_since
    from inferline.cli.traces import prompt_filter
    from inferline.evals.items import from_trace
    from inferline.store.traces import TraceFilter, TraceStore, parse_status

    prompt_id, prompt_version = prompt_filter(args.prompt)
    traces = TraceStore(database)
    where = TraceFilter(
        since=parse_since(args.since), route=args.route, model=args.model, team=args.team,
        decision=args.decision, prompt_id=prompt_id, prompt_version=prompt_version,
        status=parse_status(args.status), text=args.text,
    )  # fmt: skip
    found = traces.matching(where, args.scan)
    # the list view has no request body: read each sampled trace whole
    chosen = random.Random(args.seed).sample(found, min(args.sample, len(found)))
    items = [from_trace(traces.get(t["id"]) or t, expected_from_output=args.expected_from_output)
             for t in chosen]  # fmt: skip
    kept = [i for i in items if i is not None]
    if not kept:
        print(f"no trace with logged text among {len(found)} matching (serve --log-text?)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(1)
    note = f"{len(kept)} of {len(found)} traces since {args.since}"
    _said(store.write(args.name, kept, source="traces", note=note), len(kept))


def _export(args: argparse.Namespace, store: Any) -> None:
    from inferline.evals.items import to_csv, to_jsonl

    name, version = split_version(args.name)
    rows = [item.as_dict() for item in store.items(name, version)]
    text = to_jsonl(rows) if args.format == "jsonl" else to_csv(rows)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"{len(rows)} items written to {args.output}", file=sys.stderr)
