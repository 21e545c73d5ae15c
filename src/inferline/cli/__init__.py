"""The command line: parse arguments, build configs, construct the engine, run."""

from inferline.cli.main import main

__all__ = ["main"]
