"""`inferline batch run input.jsonl -o output.jsonl`: a batch file without a server.

The same line format as the Batches API. The model runs in process, and each line goes
through the same endpoint code as a served request, so outputs equal the server's. Results
are appended to the output as they finish (one JSON line per ``custom_id``, successes and
failures alike); ``--resume`` skips the ``custom_id``s already there, so an interrupted run
continues where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inferline.cli.main import add_engine_arguments, add_runtime_arguments, default_cache_dir
from inferline.core.errors import InvalidParameterError


def register(sub: Any) -> None:
    """Adds ``batch run``."""
    parser = sub.add_parser("batch", help="run batch job files (OpenAI batch format)")
    commands = parser.add_subparsers(dest="batch_command", required=True)
    run_parser = commands.add_parser("run", help="run an input file in process, no server")
    add_engine_arguments(run_parser)
    add_runtime_arguments(run_parser)
    run_parser.add_argument("input", type=Path, help="JSONL: {custom_id, method, url, body}")
    run_parser.add_argument("-o", "--output", type=Path, required=True)
    run_parser.add_argument("--resume", action="store_true", help="skip custom_ids in OUTPUT")
    run_parser.add_argument("--max-in-flight", type=int, default=64)
    run_parser.add_argument("--price-input", type=float, default=None, help="per 1M input tokens")
    run_parser.add_argument("--price-output", type=float, default=None, help="per 1M output tokens")
    run_parser.add_argument("--no-progress", action="store_true")
    run_parser.add_argument("--runner", choices=["local", "ray"], default="local")
    run_parser.add_argument("--address", default=None, help="Ray cluster (default: start one)")
    run_parser.add_argument("--replicas", type=int, default=2, help="engine actors on Ray")
    run_parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    run_parser.add_argument("--ray-batch-size", type=int, default=16, help="lines per map call")
    run_parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validates the whole file, then runs the lines not yet in the output."""
    from inferline.jobs import validate_input

    lines, errors = validate_input(args.input, _endpoint(args.input))
    if errors:
        for error in errors:
            print(f"line {error['line']}: {error['code']}: {error['message']}", file=sys.stderr)
        return 2
    done = _finished_ids(args.output, args.resume)
    todo = [line for line in lines if line[1] not in done]
    print(
        f"{len(lines)} requests, {len(done)} already in {args.output}, {len(todo)} to run",
        file=sys.stderr,
    )
    summary = _run_all(args, todo) if todo else _Summary()
    print(summary.report(args.price_input, args.price_output), file=sys.stderr)
    return 0 if summary.failed == 0 else 1


def run_suffix(path: Path) -> str:
    """The id of a file's run (output ids are ``batch_req_<suffix>_<line>``): a hash of the
    input, so a resumed run writes the same ids."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return f"file{digest.hexdigest()[:24]}"


def _endpoint(path: Path) -> str:
    """The ``url`` of the first line (validation then checks every line against it)."""
    with path.open("rb") as file:
        for raw in file:
            if raw.strip():
                try:
                    url = json.loads(raw).get("url")
                except (ValueError, AttributeError):
                    return "/v1/chat/completions"  # validation reports the bad line
                return str(url)
    return "/v1/chat/completions"


def _finished_ids(output: Path, resume: bool) -> set[str]:
    if not output.exists():
        return set()
    if not resume:
        raise InvalidParameterError(
            f"{output} exists: pass --resume to continue it, or choose another file", "output"
        )
    content = output.read_bytes()
    if content and not content.endswith(b"\n"):  # a line cut by a crash: drop it
        content = content[: content.rfind(b"\n") + 1]
        output.write_bytes(content)
    return {json.loads(line)["custom_id"] for line in content.splitlines() if line.strip()}


class _Summary:
    """Counts for the progress bar and the final report."""

    def __init__(self) -> None:
        self.completed = self.failed = self.input_tokens = self.output_tokens = 0
        self.started = time.perf_counter()

    def add(self, status: int, body: dict[str, Any]) -> None:
        if status == 200:
            self.completed += 1
        else:
            self.failed += 1
        usage = body.get("usage") or {}
        self.input_tokens += int(usage.get("prompt_tokens") or 0)
        self.output_tokens += int(usage.get("completion_tokens") or 0)

    def report(self, price_input: float | None, price_output: float | None) -> str:
        elapsed = time.perf_counter() - self.started
        text = (
            f"done: {self.completed} ok, {self.failed} failed in {elapsed:.1f} s; "
            f"tokens in {self.input_tokens}, out {self.output_tokens} "
            f"({self.output_tokens / max(elapsed, 1e-9):.1f} output tokens/s)"
        )
        if price_input is not None or price_output is not None:
            cost = (
                self.input_tokens * (price_input or 0) + self.output_tokens * (price_output or 0)
            ) / 1e6
            lines = max(self.completed + self.failed, 1)
            text += f"; cost {cost:.6f}, {cost / lines:.8f} per line"
        return text


@contextlib.contextmanager
def _progress(args: argparse.Namespace, total: int) -> Iterator[Callable[[_Summary], None]]:
    """A progress bar (done/total, failed, lines/s, ETA); yields its update function."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}  {task.fields[rate]:.2f} lines/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=args.no_progress) as progress:
        bar = progress.add_task("batch", total=total, failed=0, rate=0.0)

        def tick(summary: _Summary) -> None:
            done = summary.completed + summary.failed
            rate = done / (time.perf_counter() - summary.started)
            progress.update(bar, completed=done, failed=summary.failed, rate=rate)

        yield tick


def _run_all(args: argparse.Namespace, todo: list[tuple[int, str, dict[str, Any]]]) -> _Summary:
    summary = _Summary()
    url, suffix = _endpoint(args.input), run_suffix(args.input)
    with _progress(args, len(todo)) as tick:
        if args.runner == "ray":
            from inferline.cli.app_factory import app_from_options
            from inferline.jobs.offline_ray import run_on_ray

            results = run_on_ray(
                todo,
                url,
                suffix,
                args.output,
                app_factory=app_from_options,
                options=_replica_options(args),
                address=args.address,
                replicas=args.replicas,
                cpus_per_replica=args.cpus_per_replica,
                batch_size=args.ray_batch_size,
            )
            for status, body in results:
                summary.add(status, body)
                tick(summary)
        else:
            asyncio.run(_run_local(args, todo, url, suffix, summary, tick))
    return summary


def _replica_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options each Ray replica builds its app from (no callables, picklable)."""
    return {k: v for k, v in vars(args).items() if k != "run"}


async def _run_local(
    args: argparse.Namespace,
    todo: list[tuple[int, str, dict[str, Any]]],
    url: str,
    suffix: str,
    summary: _Summary,
    tick: Callable[[_Summary], None],
) -> None:
    from inferline.cli.app_factory import build_app
    from inferline.jobs.executor import LineResponse
    from inferline.jobs.offline import run_lines

    app, _ = build_app(args, default_cache_dir(), os.environ)

    def on_result(response: LineResponse) -> None:
        summary.add(response.status_code, response.body)
        tick(summary)

    await run_lines(
        app, todo, url, suffix, args.output, max_in_flight=args.max_in_flight, on_result=on_result
    )
