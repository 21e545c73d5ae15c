"""The similarity scorer on the real MiniLM embedder: on-topic answers score higher."""

from __future__ import annotations

import asyncio

import pytest

from inferline.cli.scorers import similarity_scorer


@pytest.fixture(scope="module")
def embedder():  # type: ignore[no-untyped-def]
    from inferline.predictors import SentenceEmbedder

    model = SentenceEmbedder("all-minilm-l6-v2")
    model.setup()
    return model


def test_an_on_topic_answer_scores_higher(embedder) -> None:  # type: ignore[no-untyped-def]
    score = similarity_scorer(embedder)
    question = "What is the capital of France?"
    on_topic = asyncio.run(score(question, "The capital of France is Paris."))
    off_topic = asyncio.run(score(question, "Bananas are rich in potassium."))
    assert 0.5 < on_topic <= 1.0001 and off_topic < 0.3 and on_topic > off_topic
    long_answer = asyncio.run(score(question, "Paris " * 1000))  # judged by its start
    assert -1.0 <= long_answer <= 1.0001
