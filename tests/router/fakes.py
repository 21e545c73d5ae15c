"""`ScriptedGenerator`: a `Generator` whose requests follow a script, for router tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from inferline.core import (
    CompletionOutput,
    GenerationRequest,
    GeneratorStats,
    HealthReport,
    Logprob,
    ModelInfo,
    RequestMetrics,
    RequestOutput,
    StreamInterruptedError,
)

WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
]  # fmt: skip


@dataclass
class Step:
    """What one request to the target does.

    ``error`` is raised by submit; ``cut_after`` words are sent, then the stream raises;
    ``hang`` never answers; ``stall_after`` words are sent, then it waits forever;
    ``logprob`` is every token's logprob; ``delay_s`` paces the words.
    """

    error: Exception | None = None
    cut_after: int | None = None
    hang: bool = False
    stall_after: int | None = None
    logprob: float = -0.1
    delay_s: float = 0.0


@dataclass
class ScriptedGenerator:
    """Answers with ``WORDS`` (continuing an assistant prefix where asked), one step of
    ``script`` per request (the last one repeats)."""

    name: str
    script: list[Step] = field(default_factory=lambda: [Step()])
    max_model_len: int = 1000
    requests: list[GenerationRequest] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # request ids whose stream was closed early
    running: int = 0

    async def start(self) -> None:
        pass

    async def shutdown(self, drain_timeout_s: float) -> None:
        pass

    async def submit(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        step = self.script[min(len(self.requests), len(self.script) - 1)]
        self.requests.append(request)
        if step.error is not None:
            raise step.error
        return self._stream(request, step)

    def _words(self, request: GenerationRequest) -> list[str]:
        done = (request.assistant_prefix or "").split()
        assert WORDS[: len(done)] == done, (request.assistant_prefix, WORDS)
        words = WORDS[len(done) :]
        limit = request.params.max_tokens
        return words[:limit] if limit is not None else words

    async def _stream(self, request: GenerationRequest, step: Step) -> AsyncIterator[RequestOutput]:
        words = self._words(request)
        prefix = request.assistant_prefix
        completion = CompletionOutput(0)
        metrics = RequestMetrics(time.time())
        finished = False
        self.running += 1
        try:
            if step.hang:
                await asyncio.sleep(3600)
            for i, word in enumerate(words):
                if step.cut_after is not None and i == step.cut_after:
                    raise StreamInterruptedError("cut", target=self.name, code="stream_cut")
                if step.stall_after is not None and i == step.stall_after:
                    await asyncio.sleep(3600)
                await asyncio.sleep(step.delay_s)
                delta = word if (i == 0 and not prefix) else f" {word}"
                last = i == len(words) - 1
                logprobs = None
                if request.params.logprobs is not None:
                    logprobs = [Logprob(-1, w, step.logprob) for w in words[: i + 1]]
                completion = CompletionOutput(
                    0,
                    text=completion.text + delta,
                    text_delta=delta,
                    num_tokens=i + 1,
                    num_tokens_delta=1,
                    logprobs=logprobs,
                    finish_reason="stop" if last else None,
                )
                finished = last
                yield RequestOutput(
                    request.request_id, None, [], [completion], last, metrics,
                    num_prompt_tokens=7, model=self.name,
                )  # fmt: skip
        finally:
            self.running -= 1
            if not finished:
                self.closed.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        pass

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.name, "model", self.max_model_len)]

    def health(self) -> HealthReport:
        return HealthReport(True, True, "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        return {self.name: GeneratorStats(num_running=self.running, max_num_seqs=8)}


def text_of(outputs: list[RequestOutput]) -> str:
    """The text the client saw, joined from the deltas."""
    return "".join(c.text_delta for o in outputs for c in o.outputs)


def collect(stream: Any) -> Any:
    """All outputs of a stream (run in the current loop)."""

    async def run() -> list[RequestOutput]:
        return [o async for o in stream]

    return run()
