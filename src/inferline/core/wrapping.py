"""`GeneratorWrapper`: a `Generator` in front of another (the response cache, the checks),
passing everything but ``submit`` through."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from inferline.core.outputs import RequestOutput
from inferline.core.protocols import (
    ChatTokenizer,
    GenerationRequest,
    Generator,
    GeneratorStats,
    HealthReport,
    ModelInfo,
    Tokenized,
    TokenizeRequest,
    detokenize,
    tokenize,
)


class GeneratorWrapper:
    """Implements `Generator` by delegating to ``inner``; subclasses override ``submit``."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    async def start(self) -> None:
        """Starts the wrapped generator."""
        await self.inner.start()

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Stops the wrapped generator."""
        await self.inner.shutdown(drain_timeout_s)

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """The wrapped generator's stream."""
        return await self.inner.submit(request)

    async def abort(self, request_id: str) -> None:
        """Aborts in the wrapped generator."""
        await self.inner.abort(request_id)

    async def tokenize_chat(
        self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int] | None:
        """What the wrapped generator says (None if it cannot tell)."""
        if isinstance(self.inner, ChatTokenizer):
            return await self.inner.tokenize_chat(model, messages, tools)
        return None

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        """The wrapped generator's tokenization (`CannotTokenizeError` if it has none)."""
        return await tokenize(self.inner, request)

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        """The wrapped generator's detokenization (`CannotTokenizeError` if it has none)."""
        return await detokenize(self.inner, model, token_ids)

    def models(self) -> list[ModelInfo]:
        """The wrapped generator's models."""
        return self.inner.models()

    def health(self) -> HealthReport:
        """The wrapped generator's health."""
        return self.inner.health()

    def stats(self) -> dict[str, GeneratorStats]:
        """The wrapped generator's stats."""
        return self.inner.stats()
