"""`inferline chat`: an interactive conversation, tokens streamed as they come."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from inferline.cli.engine_factory import build_llm, sampling_params
from inferline.cli.main import add_engine_arguments, add_sampling_arguments

_HELP = "Type a message and press Enter. /reset clears the history, /exit (or Ctrl-D) quits."


def register(sub: Any) -> None:
    """Adds the ``chat`` subcommand."""
    parser = sub.add_parser("chat", help="chat interactively with a model")
    parser.add_argument("--system", default=None, help="system message")
    add_engine_arguments(parser)
    add_sampling_arguments(parser)
    parser.set_defaults(run=run, temperature=0.7)


def run(args: argparse.Namespace) -> int:
    """Reads user turns from stdin until EOF or /exit; returns 0."""
    params = sampling_params(args)
    llm = build_llm(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict[str, str]] = []
    print(f"inferline chat · {args.model} · {_HELP}", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        text = line.strip()
        if text == "/exit":
            return 0
        if text == "/reset":
            history.clear()
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        reply = ""
        for output in llm.stream(llm.render_chat([*system, *history]), params):
            delta = output.outputs[0].text_delta
            reply += delta
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": reply})
