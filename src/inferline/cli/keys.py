"""`inferline keys create|list|revoke|update`: virtual keys in the server's database.

Writes the database directly (a running server picks changes up within a second); the
secret of a new key is printed once and stored only as a hash.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from inferline.cli.main import default_cache_dir


def register(sub: Any) -> None:
    """Adds ``keys``."""
    parser = sub.add_parser("keys", help="manage virtual API keys")
    parser.add_argument("--database-url", default=None, help="default: the server's")
    commands = parser.add_subparsers(dest="keys_command", required=True)
    create = commands.add_parser("create", help="a new key (its secret is printed once)")
    create.add_argument("name")
    _limit_arguments(create)
    update = commands.add_parser("update", help="change a key's limits")
    update.add_argument("key_id")
    update.add_argument("--name", default=None)
    _limit_arguments(update)
    commands.add_parser("list", help="every key")
    revoke = commands.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id")
    parser.set_defaults(run=run)


def _limit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--route", action="append", default=None, help="allowed (repeatable)")
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--tpm", type=int, default=None)
    parser.add_argument("--max-parallel", type=int, default=None)
    parser.add_argument("--budget-usd", type=float, default=None)
    parser.add_argument("--budget-period", choices=["day", "month", "total"], default=None)
    parser.add_argument("--budget-policy", choices=["refuse", "lower_max_tokens"], default=None)
    parser.add_argument("--expires-at", type=float, default=None, help="epoch seconds")
    parser.add_argument("--metadata", type=json.loads, default=None, help="a JSON object")
    parser.add_argument(
        "--role", choices=["user", "reviewer"], default=None, help="reviewer: works /v1/reviews"
    )


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {
        "routes": args.route,
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_parallel": args.max_parallel,
        "budget_usd": args.budget_usd,
        "budget_period": args.budget_period,
        "budget_policy": args.budget_policy,
        "expires_at": args.expires_at,
        "metadata": args.metadata,
        "role": args.role,
    }
    if getattr(args, "name", None) is not None:
        fields["name"] = args.name
    return {k: v for k, v in fields.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    """Runs one keys command against the database."""
    from inferline.server.routes_admin import key_object
    from inferline.store import KeyStore, connect, default_database_url, migrate
    from inferline.tenants import KeyPolicy

    engine = connect(args.database_url or default_database_url(default_cache_dir()))
    migrate(engine)
    store = KeyStore(engine)
    command = args.keys_command
    if command == "list":
        for listed in store.all():
            print(json.dumps(key_object(listed)))
        return 0
    if command == "create":
        fields = _fields(args)
        fields.setdefault("budget_period", "month" if "budget_usd" in fields else None)
        KeyPolicy.from_row({"id": "new", **fields})  # raises naming a bad field
        created, secret = store.create(fields)
        print(json.dumps({**key_object(created), "key": secret}))
        print("the key is shown once: keep it now", file=sys.stderr)
        return 0
    row = _change(store, args, command)
    if row is None:
        print(f"error: no such key {args.key_id!r}", file=sys.stderr)
        return 2
    print(json.dumps(key_object(row)))
    return 0


def _change(store: Any, args: argparse.Namespace, command: str) -> dict[str, Any] | None:
    from inferline.tenants import KeyPolicy

    if command == "revoke":
        revoked: dict[str, Any] | None = store.revoke(args.key_id)
        return revoked
    fields = _fields(args)
    current = store.get(args.key_id)
    if current is None:
        return None
    KeyPolicy.from_row({**current, **fields})  # raises naming a bad field
    updated: dict[str, Any] | None = store.update(args.key_id, fields)
    return updated
