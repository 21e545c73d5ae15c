"""`inferline config check FILE`: the checks ``serve --config FILE`` runs before loading."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Adds ``config check``."""
    parser = sub.add_parser("config", help="check a serve config file")
    commands = parser.add_subparsers(dest="config_command", required=True)
    check = commands.add_parser("check", help="check a config file; nothing is loaded")
    check.add_argument("file", type=Path)
    check.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prints what the file describes, or raises the first mistake (exit code 2)."""
    from inferline.cli.config_file import load_config

    config = load_config(args.file, os.environ)
    for model in config.local:
        print(f"model {model.name}: llm {model.source} {dict(model.engine) or ''}".rstrip())
    for upstream in config.upstreams:
        key = f", key from ${upstream.api_key_env}" if upstream.api_key_env else ""
        print(f"model {upstream.name}: openai {upstream.client.base_url}{key}")
    for predictor in config.predictors:
        print(f"model {predictor.name}: {predictor.kind} {predictor.source}".rstrip())
    for route in config.routes:
        targets = ", ".join(t.name for t in route.targets)
        print(f"route {route.name}: {route.strategy} over {targets}")
    print(f"{args.file}: ok", file=sys.stderr)
    return 0
