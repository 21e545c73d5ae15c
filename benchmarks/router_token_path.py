"""What the router adds on the token path: µs per output, a generator read directly
against the same generator behind a `Router` (one route, one target).

The target is an instant in-process generator (no model, no network), so the figure is the
router's own cost per streamed output (its pump task, queue, bookkeeping and rebasing),
to compare with a decode step (SmolLM2 on 2 cores: ~10-25 ms per token).

usage: flock /tmp/bench.lock .venv/bin/python benchmarks/router_token_path.py [--tokens N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncGenerator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from inferline.core import (  # noqa: E402
    CompletionOutput,
    GenerationRequest,
    GeneratorStats,
    HealthReport,
    ModelInfo,
    RequestMetrics,
    RequestOutput,
)
from inferline.router.config import RouteConfig, TargetConfig, TargetRef  # noqa: E402
from inferline.router.router import Router  # noqa: E402
from inferline.router.target import Target  # noqa: E402


class Instant:
    """Yields ``num_tokens`` one-token outputs as fast as it can."""

    def __init__(self, num_tokens: int) -> None:
        self.num_tokens = num_tokens

    async def start(self) -> None:
        pass

    async def shutdown(self, drain_timeout_s: float) -> None:
        pass

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        metrics = RequestMetrics(time.time())
        for i in range(self.num_tokens):
            last = i == self.num_tokens - 1
            completion = CompletionOutput(
                0, text="x" * (i + 1), text_delta="x", num_tokens=i + 1, num_tokens_delta=1,
                finish_reason="length" if last else None,
            )  # fmt: skip
            yield RequestOutput(request.request_id, None, [], [completion], last, metrics)
            await asyncio.sleep(0)  # a real target yields to the loop between tokens

    async def abort(self, request_id: str) -> None:
        pass

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("instant")]

    def health(self) -> HealthReport:
        return HealthReport(True, True, "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        return {"instant": GeneratorStats()}


async def read(generator: object, model: str, index: int) -> int:
    request = GenerationRequest(f"r{index}", prompt="x", model=model)
    stream = await generator.submit(request)  # type: ignore[attr-defined]
    count = 0
    async for _ in stream:
        count += 1
    return count


async def per_output_us(generator: object, model: str, num_requests: int, num_tokens: int) -> float:
    started = time.perf_counter()
    for i in range(num_requests):
        await read(generator, model, i)
    return (time.perf_counter() - started) / (num_requests * num_tokens) * 1e6


def main() -> None:
    """Prints and writes the µs per output, direct and through the router (min of rounds)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    target = Instant(args.tokens)
    router = Router(
        [Target(TargetConfig("instant"), target)], [RouteConfig("r", (TargetRef("instant"),))]
    )
    direct, routed = [], []
    for _ in range(args.rounds):
        direct.append(asyncio.run(per_output_us(target, "", args.requests, args.tokens)))
        routed.append(asyncio.run(per_output_us(router, "r", args.requests, args.tokens)))
    result = {
        "tokens_per_request": args.tokens,
        "requests_per_round": args.requests,
        "direct_us_per_output": {"min": min(direct), "median": statistics.median(direct)},
        "router_us_per_output": {"min": min(routed), "median": statistics.median(routed)},
        "router_added_us_per_output_min": min(routed) - min(direct),
    }
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
