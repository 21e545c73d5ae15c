"""`inferline prompts push|list|show|diff|label`: the prompt registry from YAML files, so
prompts can live in a repository (the same database the server uses)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from inferline.cli.main import default_cache_dir
from inferline.core.errors import InvalidParameterError


def register(sub: Any) -> None:
    """Adds the ``prompts`` subcommand and its actions."""
    p = sub.add_parser("prompts", help="the prompt registry: push YAML files, list, diff, label")
    actions = p.add_subparsers(dest="action", required=True)
    push = actions.add_parser("push", help="write each file as a new version (if it changed)")
    push.add_argument("files", nargs="+", type=Path, help="YAML: id, messages, route, params...")
    actions.add_parser("list", help="every prompt with its latest version and labels")
    show = actions.add_parser("show", help="a prompt's versions, labels and label moves")
    show.add_argument("prompt_id")
    diff = actions.add_parser("diff", help="what changed between two versions")
    for name in ("prompt_id", "old", "new"):
        diff.add_argument(name, type=int if name != "prompt_id" else str)
    label = actions.add_parser("label", help="point a label at a version (a rollback too)")
    label.add_argument("prompt_id")
    label.add_argument("label")
    label.add_argument("version", type=int)
    for action in (push, actions.choices["list"], show, diff, label):
        action.add_argument("--database-url", default=None)
    p.set_defaults(run=run)


def _spec(path: Path) -> Any:
    from inferline.guard.parse import prompt_checks
    from inferline.prompts import PromptSpec

    try:
        data = yaml.safe_load(path.read_text())
        spec = PromptSpec.model_validate(data)
        try:
            prompt_checks(spec.checks or ())
        except InvalidParameterError as exc:
            raise InvalidParameterError(f"{path}: {exc.message}", "files") from None
        return spec
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidParameterError(f"{path}: {exc}", "files") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidParameterError(f"{path}: {where}: {first['msg']}", "files") from None


def run(args: argparse.Namespace) -> int:
    """Runs one action against the registry's database."""
    from inferline.prompts import PromptRegistry
    from inferline.store import connect, default_database_url, migrate
    from inferline.store.prompts import PromptStore

    database = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(database)
    registry = PromptRegistry(PromptStore(database))
    if args.action == "push":
        specs = [_spec(path) for path in args.files]  # every file checked before any write
        for path, spec in zip(args.files, specs, strict=True):
            done = registry.push(spec)
            state = "new version" if done["created"] else "unchanged"
            print(f"{path}: {done['id']} v{done['version']} ({state}); labels {done['labels']}")
    elif args.action == "list":
        for row in registry.store.prompts():
            print(f"{row['prompt_id']}  v{row['latest']}  labels {row['labels']}")
    elif args.action == "show":
        print(json.dumps(registry.describe(args.prompt_id), indent=2))
    elif args.action == "diff":
        print(registry.diff(args.prompt_id, args.old, args.new) or "(no difference)", end="")
    else:
        before = registry.store.move_label(args.prompt_id, args.label, args.version)
        print(f"{args.prompt_id}: {args.label} -> v{args.version} (was {before or 'unset'})")
    return 0
