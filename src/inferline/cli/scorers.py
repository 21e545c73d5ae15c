"""From the server's sentence-embeddings models: scorers for the router's ``similarity``
check (the cosine similarity of the question's and the answer's embeddings) and embedders
for the semantic response cache."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from inferline.cache import Embed
from inferline.core.errors import InvalidParameterError
from inferline.core.predictor import Embedder
from inferline.router.checks import Scorer
from inferline.server.predictors import PredictorEntry

_MAX_WORDS = 150  # well inside MiniLM's 256 tokens; a longer text is judged by its start


def _clip(text: str) -> str:
    return " ".join(text.split()[:_MAX_WORDS])


def similarity_scorer(embedder: Embedder) -> Scorer:
    """(question, answer) -> cosine similarity of their embeddings (unit vectors)."""

    async def score(question: str, answer: str) -> float:
        rows = [
            embedder.decode(_clip(question), "question"),
            embedder.decode(_clip(answer), "answer"),
        ]
        results = await asyncio.to_thread(embedder.predict, rows)
        for result in results:
            if isinstance(result, Exception):
                raise InvalidParameterError(f"cannot embed for the check: {result}", "checks")
        return float(np.dot(np.asarray(results[0]), np.asarray(results[1])))

    return score


def embedding_scorers(entries: Sequence[PredictorEntry]) -> dict[str, Scorer]:
    """A scorer per sentence-embeddings model, by its served name."""
    return {
        entry.predictor.name: similarity_scorer(entry.predictor)
        for entry in entries
        if isinstance(entry.predictor, Embedder)
    }


def embedding_functions(entries: Sequence[PredictorEntry]) -> dict[str, Embed]:
    """text -> unit vector, per sentence-embeddings model (the semantic cache's)."""

    def embed_with(embedder: Embedder) -> Embed:
        async def embed(text: str) -> Sequence[float]:
            row = embedder.decode(_clip(text), "message")
            (result,) = await asyncio.to_thread(embedder.predict, [row])
            if isinstance(result, Exception):
                raise InvalidParameterError(f"cannot embed: {result}", "messages")
            return [float(x) for x in result]

        return embed

    return {
        entry.predictor.name: embed_with(entry.predictor)
        for entry in entries
        if isinstance(entry.predictor, Embedder)
    }
