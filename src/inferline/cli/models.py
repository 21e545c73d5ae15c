"""`inferline models`: the built-in model names and where their files are."""

from __future__ import annotations

import argparse
from typing import Any

from inferline.cli.main import default_cache_dir


def register(sub: Any) -> None:
    """Adds the ``models`` subcommand."""
    parser = sub.add_parser("models", help="list built-in model names")
    parser.add_argument(
        "--build-examples",
        action="store_true",
        help="train and export the example classic models (risk-classifier) into the cache",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prints each short name with what it is (nothing is loaded or assembled)."""
    from inferline.models import MODEL_SOURCES
    from inferline.predictors.embeddings import BUILTIN_PACKAGES

    cache_dir = default_cache_dir()
    print(f"cache directory: {cache_dir}")
    print("LLMs (--model):")
    for name in MODEL_SOURCES.names():
        doc = (MODEL_SOURCES.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"  {name:24s} {doc}")
    print("embedding models (kind: sentence-embeddings, source: NAME):")
    for name, package in BUILTIN_PACKAGES.items():
        print(f"  {name:24s} from the PyPI package {package.replace('_', '-')}")
    print("example classic models (kind: onnx, source: example:NAME):")
    if args.build_examples:
        from inferline.predictors.examples import risk_classifier_path

        path = risk_classifier_path(cache_dir)
        print(f"  {'risk-classifier':24s} {path}")
    else:
        print(f"  {'risk-classifier':24s} breast-cancer logistic regression, built on first use")
    return 0
