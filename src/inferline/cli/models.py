"""`inferline models`: the built-in short model names and where their files are."""

from __future__ import annotations

import argparse
from typing import Any

from inferline.cli.main import default_cache_dir


def register(sub: Any) -> None:
    """Adds the ``models`` subcommand."""
    parser = sub.add_parser("models", help="list built-in model names")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prints each short name with what it is (nothing is loaded or assembled)."""
    from inferline.models import MODEL_SOURCES

    print(f"cache directory: {default_cache_dir()}")
    for name in MODEL_SOURCES.names():
        doc = (MODEL_SOURCES.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:24s} {doc}")
    return 0
