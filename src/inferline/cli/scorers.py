"""From the server's one-pass models: scorers for the router's ``similarity`` check (the
cosine similarity of the question's and the answer's embeddings), embedders for the
semantic response cache, and the classifier checks' scorers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from inferline.cache import Embed
from inferline.core.errors import InvalidParameterError
from inferline.core.predictor import Embedder, Predictor
from inferline.guard import Classify, GuardPolicy
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


def guard_classifiers(
    policies: Sequence[GuardPolicy], entries: Sequence[PredictorEntry]
) -> dict[str, Classify]:
    """The classifier checks' scorers, by check name: for a sentence-embeddings model, the
    best cosine similarity of the text to the check's examples (embedded once, on first
    use); for another one-pass model, the probability of the check's ``label``."""
    by_name = {entry.predictor.name: entry.predictor for entry in entries}
    scorers: dict[str, Classify] = {}
    for policy in policies:
        for check in policy.checks:
            if check.kind != "classifier":
                continue
            predictor = by_name[check.model]
            if isinstance(predictor, Embedder):
                scorers[check.name] = _topic_scorer(predictor, check.examples)
            else:
                scorers[check.name] = _label_scorer(predictor, check.label)
    return scorers


def _topic_scorer(embedder: Embedder, examples: Sequence[str]) -> Classify:
    matrix: list[np.ndarray] = []

    async def score(text: str) -> float:
        if not matrix:
            rows = [embedder.decode(_clip(e), "examples") for e in examples]
            vectors = await asyncio.to_thread(embedder.predict, rows)
            matrix.append(np.asarray([np.asarray(v) for v in vectors]))
        row = embedder.decode(_clip(text), "messages")
        (vector,) = await asyncio.to_thread(embedder.predict, [row])
        if isinstance(vector, Exception):
            raise InvalidParameterError(f"cannot embed for the check: {vector}", "checks")
        return float(np.max(matrix[0] @ np.asarray(vector)))

    return score


def _label_scorer(predictor: Predictor, label: str) -> Classify:
    async def score(text: str) -> float:
        row = predictor.decode(text, "messages")
        (result,) = await asyncio.to_thread(predictor.predict, [row])
        if isinstance(result, Exception):
            raise InvalidParameterError(f"cannot classify for the check: {result}", "checks")
        if isinstance(result, dict) and isinstance(result.get("probabilities"), dict):
            return float(result["probabilities"].get(label, 0.0))
        if isinstance(result, int | float):
            return float(result)
        raise InvalidParameterError(f"{predictor.name} gives no probability of {label!r}", "checks")

    return score


def text_embedder(source: str = "all-minilm-l6-v2") -> Callable[[Sequence[str]], Any]:
    """texts -> unit vectors with a local sentence-embeddings model (the evals' embedding
    scorer; loaded when called)."""
    from inferline.predictors.embeddings import SentenceEmbedder

    embedder = SentenceEmbedder("eval-embedder", source)

    async def embed(texts: Sequence[str]) -> list[list[float]]:
        rows = [embedder.decode(_clip(t), "texts") for t in texts]
        results = await asyncio.to_thread(embedder.predict, rows)
        for result in results:
            if isinstance(result, Exception):
                raise InvalidParameterError(f"cannot embed: {result}", "texts")
        return [[float(x) for x in r] for r in results]

    return embed
