"""A 10-turn conversation through the Responses API, two ways, on one real server
(SmolLM2-135M on the CPU): ``chained`` sends only the new turn with
``previous_response_id`` (the server keeps the conversation); ``resent`` sends the whole
conversation as input items each turn (``store: false``), as a client of a stateless API
does. Per turn: input tokens, prefix-cache hits, tokens prefilled, time to first token
(streamed), and the request's bytes.

Each repetition gives each arm its own session line in the instructions, so the two never
share a cached prefix; answers are greedy and capped at ``--max-tokens``.

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/responses_turns.py [--turns 10]
           [--repetitions 3] [--max-tokens 24] [--out DIR]
Writes responses_turns.json and responses_turns.md to --out (default
benchmarks/results/<date>-<cpu>/).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx

from inferline.bench.host import cpu_description

BIN = Path(sys.executable).parent / "inferline"
QUESTIONS = [
    "I am planning a garden. Which vegetables grow well in partial shade?",
    "How often should I water lettuce in summer?",
    "What should I plant next to tomatoes?",
    "How do I keep slugs away without chemicals?",
    "When is the best time to harvest carrots?",
    "Can I grow herbs indoors in winter?",
    "Which herbs need the most sun?",
    "How deep should raised beds be?",
    "What is a cheap way to make compost?",
    "Summarise the plan we discussed in three short points.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (directory / "serve.log").open("wb")
    url = f"sqlite:///{directory / 'inferline.db'}"
    command = [str(BIN), "serve", "--port", str(port), "--database-url", url]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit("the server did not start")


def streamed(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Sends one streamed response request; its TTFT, final response and request bytes."""
    payload = json.dumps({**body, "stream": True}).encode()
    start = time.perf_counter()
    first = None
    final: dict[str, Any] | None = None
    headers = {"content-type": "application/json"}
    with client.stream("POST", "/v1/responses", content=payload, headers=headers) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.output_text.delta" and first is None:
                first = time.perf_counter() - start
            if event["type"] in ("response.completed", "response.incomplete"):
                final = event["response"]
    assert final is not None, "the stream did not complete"
    return {"ttft_s": first if first is not None else time.perf_counter() - start,
            "response": final, "bytes": len(payload)}  # fmt: skip


def conversation(client: httpx.Client, arm: str, session: str, turns: int, max_tokens: int) -> list:
    """One arm's turns: per turn its usage, TTFT and request size."""
    instructions = f"Session {session}. You are a helpful gardening assistant. Answer briefly."
    model = client.get("/v1/models").json()["data"][0]["id"]
    common = {"model": model, "instructions": instructions, "temperature": 0,
              "max_output_tokens": max_tokens}  # fmt: skip
    history: list[dict[str, Any]] = []
    previous = None
    rows = []
    for turn, question in enumerate(QUESTIONS[:turns], 1):
        if arm == "chained":
            body = {**common, "input": question, "previous_response_id": previous}
        else:
            history.append({"role": "user", "content": question})
            body = {**common, "input": history, "store": False}
        result = streamed(client, {k: v for k, v in body.items() if v is not None})
        response = result["response"]
        previous = response["id"]
        history.append({"role": "assistant", "content": _text(response)})
        usage = response["usage"]
        cached = usage["input_tokens_details"]["cached_tokens"]
        rows.append({
            "turn": turn, "input_tokens": usage["input_tokens"], "cached_tokens": cached,
            "prefilled_tokens": usage["input_tokens"] - cached,
            "ttft_ms": 1000 * result["ttft_s"], "request_bytes": result["bytes"],
        })  # fmt: skip
    return rows


def _text(response: dict[str, Any]) -> str:
    return "".join(
        part["text"] for item in response["output"] if item["type"] == "message"
        for part in item["content"]
    )  # fmt: skip


def summarise(runs: dict[str, list[list[dict[str, Any]]]]) -> dict[str, list[dict[str, Any]]]:
    """Per arm and turn: the median over repetitions of each figure."""
    out: dict[str, list[dict[str, Any]]] = {}
    for arm, repetitions in runs.items():
        out[arm] = [
            {
                key: statistics.median(rep[i][key] for rep in repetitions)
                for key in repetitions[0][i]
            }
            for i in range(len(repetitions[0]))
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cpu = cpu_description()
    tag = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40]
    out = args.out or Path(__file__).parent / "results" / f"{date.today()}-{tag}"
    runs: dict[str, list[list[dict[str, Any]]]] = {"chained": [], "resent": []}
    with tempfile.TemporaryDirectory() as directory:
        process, base = serve(Path(directory))
        try:
            with httpx.Client(base_url=base, timeout=120) as client:
                model = client.get("/v1/models").json()["data"][0]["id"]
                streamed(client, {"model": model, "input": "warm up", "max_output_tokens": 4})
                for repetition in range(args.repetitions):
                    for arm in runs:
                        session = f"{arm}-{repetition}-{time.time_ns()}"
                        runs[arm].append(
                            conversation(client, arm, session, args.turns, args.max_tokens)
                        )
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    result = {"cpu": cpu, "date": str(date.today()), "turns": args.turns,
              "repetitions": args.repetitions, "max_tokens": args.max_tokens,
              "median": summarise(runs), "runs": runs}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "responses_turns.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Responses API: 10 turns chained vs resent — {cpu}, {result['date']}", "",
             f"Medians over {args.repetitions} repetitions; greedy, <= {args.max_tokens} "
             "output tokens per turn.", "",
             "| turn | input tok (chained / resent) | cached | prefilled | TTFT ms "
             "| request bytes |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    chained, resent = result["median"]["chained"], result["median"]["resent"]
    for a, b in zip(chained, resent, strict=True):
        lines.append(
            f"| {a['turn']:.0f} | {a['input_tokens']:.0f} / {b['input_tokens']:.0f} | "
            f"{a['cached_tokens']:.0f} / {b['cached_tokens']:.0f} | "
            f"{a['prefilled_tokens']:.0f} / {b['prefilled_tokens']:.0f} | "
            f"{a['ttft_ms']:.0f} / {b['ttft_ms']:.0f} | "
            f"{a['request_bytes']:.0f} / {b['request_bytes']:.0f} |"
        )
    (out / "responses_turns.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
