"""Scorers for the router's ``similarity`` check, from the server's sentence-embeddings
models: the cosine similarity of the question's and the answer's embeddings."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

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
