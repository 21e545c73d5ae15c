"""The load generator: streams completions from any OpenAI-compatible server and times them.

Closed loop: ``concurrency`` workers, each sending its next request when the last finishes.
Open loop: requests start at Poisson-distributed times (``rate`` per second), whatever the
server's state, so queueing shows up in the latencies.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

import httpx

from inferline.bench.metrics import RequestResult
from inferline.bench.scenarios import Scenario

OnDone = Callable[[RequestResult], None]


class LoadGenerator:
    """Sends a scenario's requests to ``base_url`` and collects `RequestResult`s."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        ignore_eos: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self.ignore_eos = ignore_eos
        self.transport = transport  # tests pass an in-process ASGI transport

    async def run(self, scenario: Scenario, on_done: OnDone, seed: int = 0) -> list[RequestResult]:
        """All of the scenario's requests; results in completion order."""
        prompts = scenario.prompts(seed)
        limits = httpx.Limits(max_connections=max(64, scenario.concurrency or 64))
        client = httpx.AsyncClient(timeout=self.timeout_s, limits=limits, transport=self.transport)
        async with client:
            if scenario.concurrency is not None:
                return await self._closed_loop(client, scenario, prompts, on_done)
            return await self._open_loop(client, scenario, prompts, on_done, seed)

    async def _closed_loop(
        self, client: httpx.AsyncClient, scenario: Scenario, prompts: list[str], on_done: OnDone
    ) -> list[RequestResult]:
        pending = iter(prompts)
        results: list[RequestResult] = []

        async def worker() -> None:
            for prompt in pending:
                result = await self._one(client, prompt, scenario.output_tokens)
                results.append(result)
                on_done(result)

        assert scenario.concurrency is not None
        await asyncio.gather(*(worker() for _ in range(scenario.concurrency)))
        return results

    async def _open_loop(
        self,
        client: httpx.AsyncClient,
        scenario: Scenario,
        prompts: list[str],
        on_done: OnDone,
        seed: int,
    ) -> list[RequestResult]:
        assert scenario.rate is not None
        rng = random.Random(seed + 1)
        results: list[RequestResult] = []

        async def timed(prompt: str) -> None:
            result = await self._one(client, prompt, scenario.output_tokens)
            results.append(result)
            on_done(result)

        tasks = []
        for prompt in prompts:
            tasks.append(asyncio.create_task(timed(prompt)))
            await asyncio.sleep(rng.expovariate(scenario.rate))
        await asyncio.gather(*tasks)
        return results

    async def _one(self, client: httpx.AsyncClient, prompt: str, max_tokens: int) -> RequestResult:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        start = time.perf_counter()
        result = RequestResult(ok=False, start_s=start)
        try:
            async with client.stream("POST", self.url, json=body, headers=self.headers) as response:
                if response.status_code != 200:
                    text = (await response.aread()).decode(errors="replace")[:200]
                    result.error = f"HTTP {response.status_code}: {text}"
                    return result
                await self._read_stream(response, result, start)
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    @staticmethod
    async def _read_stream(response: httpx.Response, result: RequestResult, start: float) -> None:
        last_chunk: float | None = None
        num_chunks = 0
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                result.error = str(chunk["error"].get("message", chunk["error"]))[:200]
                return
            now = time.perf_counter()
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                num_chunks += 1
                if result.ttft_s is None:
                    result.ttft_s = now - start
                elif last_chunk is not None:
                    result.chunk_gaps_s.append(now - last_chunk)
                last_chunk = now
            if chunk.get("usage"):
                result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                result.output_tokens = chunk["usage"]["completion_tokens"]
        result.e2e_s = time.perf_counter() - start
        result.output_tokens = result.output_tokens or num_chunks  # servers without usage
        result.ok = result.ttft_s is not None
