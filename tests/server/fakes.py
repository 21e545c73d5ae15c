"""`EchoGenerator`: a `Generator` with no model, so the HTTP layer tests run in milliseconds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from inferline.core import (
    CompletionOutput,
    ContextLengthExceededError,
    EngineDeadError,
    GenerationRequest,
    GeneratorStats,
    HealthReport,
    InvalidParameterError,
    ModelInfo,
    OverloadedError,
    RequestMetrics,
    RequestOutput,
    UnknownModelError,
)
from inferline.core.predictor import Embedder
from inferline.core.protocols import Tokenized, TokenizeRequest
from inferline.engine.tool_parser import ToolOutputParser


class EchoGenerator:
    """Echoes the last user message (or the prompt) word by word, one word per token.

    Knobs: ``overloaded`` refuses with `OverloadedError`; ``dead`` reports a dead engine;
    ``max_model_len`` triggers context errors; ``delay_s`` paces tokens; ``last_finish``
    is the finish reason of the last word (``length`` by default, ``stop`` like a model's EOS).
    A request that may call tools has its words parsed as an engine does (Hermes format).
    """

    def __init__(self, max_model_len: int = 64, delay_s: float = 0.0, name: str = "echo") -> None:
        self.name = name
        self.max_model_len = max_model_len
        self.delay_s = delay_s
        self.overloaded = False
        self.dead = False
        self.started = False
        self.aborted: list[str] = []
        self.active: set[str] = set()
        self.requests: list[GenerationRequest] = []  # every request submitted, in order
        self.last_finish: Any = "length"

    async def start(self) -> None:
        self.started = True

    async def shutdown(self, drain_timeout_s: float) -> None:
        self.started = False

    async def submit(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        if request.model and request.model != self.name:
            raise UnknownModelError.not_served(request.model, [self.name])
        if self.dead:
            raise EngineDeadError("the engine is not running: test")
        if self.overloaded:
            raise OverloadedError("the request queue is full (test)", retry_after_s=3)
        self.requests.append(request)
        text = request.prompt if request.messages is None else request.messages[-1]["content"]
        words = str(text).split()
        max_tokens = request.params.max_tokens or 16
        if len(words) + max_tokens > self.max_model_len:
            raise ContextLengthExceededError(len(words), max_tokens, self.max_model_len)
        self.active.add(request.request_id)
        # an empty prompt still gets one (empty) token, as a model's EOS would be
        return self._stream(request, words[:max_tokens] or [""], num_prompt_tokens=len(words))

    async def _stream(
        self, request: GenerationRequest, words: list[str], num_prompt_tokens: int
    ) -> AsyncIterator[RequestOutput]:
        metrics = RequestMetrics(arrival_s=time.time(), first_scheduled_s=time.time())
        outputs = [CompletionOutput(index=i) for i in range(request.params.n)]
        structured = request.params.structured
        calls_tools = structured is not None and structured.kind == "tool_calls"
        parsers = [ToolOutputParser() if calls_tools else None for _ in outputs]
        finished = False
        try:
            for step, word in enumerate(words):
                await asyncio.sleep(self.delay_s)
                last = step == len(words) - 1
                for out, parser in zip(outputs, parsers, strict=True):
                    delta = word if step == 0 else f" {word}"
                    out.text += delta
                    out.text_delta = delta
                    out.token_ids = [*out.token_ids, step]
                    out.token_ids_delta = [step]
                    out.num_tokens, out.num_tokens_delta = step + 1, 1
                    out.finish_reason = self.last_finish if last else None
                    if parser is not None:
                        out.text_delta, out.tool_call_deltas = parser.feed(delta, last)
                        out.text, out.tool_calls = parser.content, parser.tool_calls
                finished = last
                yield RequestOutput(
                    request.request_id, None, list(range(num_prompt_tokens)),
                    [CompletionOutput(**vars(o)) for o in outputs], finished, metrics,
                    model=self.name,
                )  # fmt: skip
        finally:
            self.active.discard(request.request_id)
            if not finished:
                self.aborted.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def health(self) -> HealthReport:
        if self.dead:
            return HealthReport(False, False, "engine loop crashed: test")
        return HealthReport(True, self.started, "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        return {self.name: GeneratorStats(num_running=len(self.active), num_kv_blocks_total=10)}

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(self.name, "model", self.max_model_len)]

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        """One token per word: its length (the last message, as `submit` echoes)."""
        self._check_model(request.model)
        text = request.prompt if request.messages is None else request.messages[-1]["content"]
        return Tokenized([len(word) for word in str(text).split()], self.max_model_len)

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        """Token ``n`` spells ``n`` x's, words joined by spaces (`tokenize`'s inverse)."""
        self._check_model(model)
        return " ".join("x" * t for t in token_ids)

    def _check_model(self, model: str) -> None:
        if model and model != self.name:
            raise UnknownModelError.not_served(model, [self.name])


class WordCountEmbedder(Embedder):
    """Embeds text as normalised counts of its words' lengths (1..8); "boom" fails its row."""

    def __init__(self, name: str = "fake-embed", delay_s: float = 0.0) -> None:
        self.name = name
        self.dimensions = 8
        self.max_input_tokens = 16
        self.delay_s = delay_s
        self.batches: list[int] = []

    def decode(self, raw: object, field: str) -> list[int]:
        if not isinstance(raw, str):
            raise InvalidParameterError(f"{field}: expected a string", field)
        words = [min(len(w), 8) for w in raw.split()]
        if len(words) > self.max_input_tokens:
            raise InvalidParameterError(f"{field}: too long", field)
        return words or [1]

    def predict(self, batch: list[Any]) -> list[Any]:
        self.batches.append(len(batch))
        time.sleep(self.delay_s)
        results: list[Any] = []
        for lengths in batch:
            if lengths == [4] * len(lengths) and len(lengths) == 1:  # "boom" and its kin
                results.append(RuntimeError("this row cannot be embedded"))
                continue
            vector = np.zeros(8, dtype=np.float32)
            for n in lengths:
                vector[n - 1] += 1
            results.append(vector / np.linalg.norm(vector))
        return results
