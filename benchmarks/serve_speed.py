"""TTFT and tokens/s through HTTP (1 stream and N concurrent), and the same load on the
engine called directly, to measure the server's overhead.

Usage (start `inferline serve` first, then):
    flock /tmp/bench.lock .venv/bin/python benchmarks/serve_speed.py \\
        --base-url http://127.0.0.1:8000 --json bench-results/serve.json
Output length is fixed with ``ignore_eos``; prompts are distinct (no prefix-cache hits
beyond the chat template's system prompt).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

from openai import AsyncOpenAI

from inferline import SamplingParams
from inferline.cli.main import default_cache_dir
from inferline.core import GenerationRequest
from inferline.engine import AsyncEngine, EngineConfig, LLMEngine

FILLER = "The lighthouse keeper counted ships and wrote their names in a book. "


def prompt(i: int, num_words: int) -> str:
    """A distinct prompt of roughly ``num_words`` words."""
    words = (f"Story {i}: " + FILLER * (num_words // 12 + 1)).split()[:num_words]
    return " ".join(words)


def summarize(ttfts: list[float], durations: list[float], num_tokens: int, wall_s: float) -> dict:  # type: ignore[type-arg]
    """TTFT p50, per-stream decode rate and aggregate output rate."""
    tpots = [(d - t) / (num_tokens - 1) for t, d in zip(ttfts, durations, strict=True)]
    return {
        "requests": len(ttfts),
        "ttft_s_p50": statistics.median(ttfts),
        "tpot_s_p50": statistics.median(tpots),
        "stream_tokens_per_s_p50": 1 / statistics.median(tpots),
        "output_tokens_per_s": len(ttfts) * num_tokens / wall_s,
    }


async def http_run(base_url: str, model: str, concurrency: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """``concurrency`` streams at once, ``args.rounds`` times each."""
    async with AsyncOpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0) as client:
        return await _http_load(client, model, concurrency, args)


async def _http_load(
    client: AsyncOpenAI, model: str, concurrency: int, args: argparse.Namespace
) -> dict:  # type: ignore[type-arg]
    ttfts: list[float] = []
    durations: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        first = None
        stream = await client.completions.create(
            model=model, prompt=prompt(i, args.prompt_words), max_tokens=args.max_tokens,
            temperature=0, stream=True, extra_body={"ignore_eos": True},
        )  # fmt: skip
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
        ttfts.append(first or 0.0)
        durations.append(time.perf_counter() - start)

    start = time.perf_counter()
    for r in range(args.rounds):
        await asyncio.gather(*(one(r * concurrency + i) for i in range(concurrency)))
    return summarize(ttfts, durations, args.max_tokens, time.perf_counter() - start)


async def direct_run(engine: AsyncEngine, concurrency: int, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """The same load through `AsyncEngine` in-process (no HTTP, no JSON)."""
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    ttfts: list[float] = []
    durations: list[float] = []

    async def one(i: int) -> None:
        start = time.perf_counter()
        first = None
        stream = await engine.submit(
            GenerationRequest(f"d{i}", prompt=prompt(i, args.prompt_words), params=params)
        )
        async for output in stream:
            if first is None and output.outputs[0].token_ids:
                first = time.perf_counter() - start
        ttfts.append(first or 0.0)
        durations.append(time.perf_counter() - start)

    start = time.perf_counter()
    for r in range(args.rounds):
        await asyncio.gather(*(one(10_000 + r * concurrency + i) for i in range(concurrency)))
    return summarize(ttfts, durations, args.max_tokens, time.perf_counter() - start)


async def direct(args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    config = EngineConfig(model=args.model, cache_dir=default_cache_dir())
    engine = AsyncEngine(lambda: LLMEngine(config))  # built on its own thread, as the server does
    await engine.start()
    result = {f"c{c}": await direct_run(engine, c, args) for c in args.concurrency}
    await engine.shutdown(1)
    return result


def main() -> None:
    """Runs HTTP then direct, prints a table, writes JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompt-words", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    http = {
        f"c{c}": asyncio.run(http_run(args.base_url, args.model, c, args)) for c in args.concurrency
    }
    engine = asyncio.run(direct(args))
    print(f"{'path':8} {'conc':>4} {'TTFT p50':>9} {'stream tok/s':>13} {'total tok/s':>12}")
    for name, results in (("http", http), ("engine", engine)):
        for c in args.concurrency:
            r = results[f"c{c}"]
            print(
                f"{name:8} {c:>4} {r['ttft_s_p50']:>8.3f}s "
                f"{r['stream_tokens_per_s_p50']:>13.1f} {r['output_tokens_per_s']:>12.1f}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"http": http, "engine": engine, "args": vars(args) | {"json": str(args.json)}},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
