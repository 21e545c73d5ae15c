#!/usr/bin/env python3
"""Waits for a just-launched OpenAI-compatible server and times its start-up (scenario e).

benchmarks/compare records the wall clock (seconds since the epoch) right before it launches
a server and passes it as --t0.  This script then

1. polls ``GET /v1/models`` until it answers 200 (``ready_s``), failing early if the server
   process exits;
2. sends one streamed ``/v1/completions`` request (greedy, fixed length) and notes when its
   first text arrives (``first_token_s``: process start to first token, the figure of e).

The request also warms the server up a little before the measured scenarios.  Writes a JSON
object to --json and exits 1 (with the reason on stderr) if the server never became ready.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

PROMPT = "The capital of France is"


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, i.e. exited but not yet reaped, counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_ready(client: httpx.Client, base_url: str, pid: int, deadline: float) -> None:
    """Returns once /v1/models answers 200; raises RuntimeError on death or timeout."""
    while True:
        try:
            if client.get(f"{base_url}/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not listening yet, or still loading
        if not alive(pid):
            raise RuntimeError(f"server process {pid} exited before /v1/models answered")
        if time.time() > deadline:
            raise RuntimeError("timed out waiting for /v1/models")
        time.sleep(0.2)


def first_token(
    client: httpx.Client, base_url: str, model: str, max_tokens: int
) -> tuple[float, str]:
    """Streams one completion; returns (epoch time of the first text, full text)."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "ignore_eos": True,
    }
    first: float | None = None
    text = []
    with client.stream("POST", f"{base_url}/v1/completions", json=body, timeout=600) as response:
        if response.status_code != 200:
            raise RuntimeError(
                f"first request: HTTP {response.status_code}: {response.read()[:200]!r}"
            )
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            piece = choices[0].get("text") or ""
            if piece and first is None:
                first = time.time()
            text.append(piece)
    if first is None:
        raise RuntimeError("first request streamed no text")
    return first, "".join(text)


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--t0", type=float, required=True, help="launch time, epoch seconds")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for ready")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    base_url = args.base_url.rstrip("/")
    with httpx.Client() as client:
        try:
            wait_ready(client, base_url, args.pid, args.t0 + args.timeout)
            ready = time.time()
            sent = time.time()
            first, text = first_token(client, base_url, args.model, args.max_tokens)
        except (RuntimeError, httpx.HTTPError) as exc:
            print(f"startup_probe: {exc}", file=sys.stderr)
            return 1
    result = {
        "ready_s": ready - args.t0,
        "first_token_s": first - args.t0,
        "first_request_ttft_s": first - sent,
        "prompt": PROMPT,
        "text": text,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(
        f"ready after {result['ready_s']:.1f} s, first token after {result['first_token_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
