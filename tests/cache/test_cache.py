"""The response cache in front of a router over scripted targets: what hits, what must
miss (any sampling parameter, the system prompt, a tool, the model), scopes, Cache-Control,
expiry, and the semantic cache."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from inferline.cache import CachedGenerator, CachePolicy
from inferline.core import GenerationRequest, SamplingParams, StructuredOutput
from inferline.router.config import RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from tests.router.fakes import WORDS, ScriptedGenerator, collect, text_of

GREEDY = SamplingParams(max_tokens=20, temperature=0)
SYSTEM = {"role": "system", "content": "Be brief."}


def build(policy: CachePolicy, embedders: Any = None, clock: Any = None) -> Any:
    a, b = ScriptedGenerator("a"), ScriptedGenerator("b")
    targets = [Target(TargetConfig("a"), a), Target(TargetConfig("b"), b)]
    routes = [RouteConfig("bot", (TargetRef("a"),)), RouteConfig("bot2", (TargetRef("b"),))]
    policies = {"bot": policy, "bot2": policy}
    extra = {"clock": clock} if clock else {}
    cached = CachedGenerator(Router(targets, routes), policies, embedders, **extra)
    return cached, a, b


def request(text: str = "What is the capital of France?", **fields: Any) -> GenerationRequest:
    fields.setdefault("params", GREEDY)
    fields.setdefault("model", "bot")
    messages = fields.pop("messages", [SYSTEM, {"role": "user", "content": text}])
    return GenerationRequest(fields.pop("request_id", "r"), messages=messages, **fields)


def ask(cached: CachedGenerator, req: GenerationRequest) -> Any:
    async def run() -> list[Any]:
        return await collect(await cached.submit(req))

    return asyncio.run(run())


def test_the_same_deterministic_request_is_answered_from_the_cache() -> None:
    cached, a, _ = build(CachePolicy("exact"))
    first = ask(cached, request())
    second = ask(cached, request(request_id="r2"))
    assert len(a.requests) == 1 and text_of(second) == text_of(first) == " ".join(WORDS)
    assert first[-1].route.cache == "miss" and second[-1].route.cache == "hit"
    assert second[-1].route.attempts == [] and second[-1].route.cost_usd == 0
    assert len(second) == len(first) > 1  # a stream is replayed as a stream
    assert second[-1].request_id == "r2" and second[-1].model == "a"


@pytest.mark.parametrize(
    "change",
    [
        {"params": dataclasses.replace(GREEDY, max_tokens=21)},
        {"params": dataclasses.replace(GREEDY, top_p=0.9)},
        {"params": dataclasses.replace(GREEDY, stop=("x",))},
        {"params": dataclasses.replace(GREEDY, seed=7)},
        {"params": dataclasses.replace(GREEDY, presence_penalty=0.5)},
        {"params": dataclasses.replace(GREEDY, logprobs=0)},
        {"params": dataclasses.replace(GREEDY, temperature=0.7, top_k=1)},
        {"params": dataclasses.replace(GREEDY, structured=StructuredOutput("json_object"))},
        {"messages": [{"role": "system", "content": "Be long."},
                      {"role": "user", "content": "What is the capital of France?"}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"model": "bot2"},
        {"assistant_prefix": "alpha"},
    ],
)  # fmt: skip
def test_changing_anything_that_changes_the_answer_misses(change: dict[str, Any]) -> None:
    cached, _, _ = build(CachePolicy("exact"))
    ask(cached, request())
    assert ask(cached, request(**change))[-1].route.cache == "miss"


def test_random_sampling_and_n_are_not_cached_by_default() -> None:
    cached, a, _ = build(CachePolicy("exact"))
    sampled = SamplingParams(max_tokens=20, temperature=0.8)
    for _ in range(2):
        ask(cached, request(params=sampled))
    assert len(a.requests) == 2
    seeded = dataclasses.replace(sampled, seed=3)
    ask(cached, request(params=seeded))
    assert ask(cached, request(params=seeded))[-1].route.cache == "hit"


def test_answers_stay_with_their_key_unless_shared() -> None:
    cached, a, _ = build(CachePolicy("exact"))
    ask(cached, request(key_id="key_a"))
    assert ask(cached, request(key_id="key_b"))[-1].route.cache == "miss"
    assert ask(cached, request(key_id="key_a"))[-1].route.cache == "hit"
    shared, _, _ = build(CachePolicy("exact", shared=True))
    ask(shared, request(key_id="key_a"))
    assert ask(shared, request(key_id="key_b"))[-1].route.cache == "hit"


def test_cache_control_no_cache_and_no_store() -> None:
    cached, a, _ = build(CachePolicy("exact"))
    ask(cached, request(cache="no-store"))
    assert ask(cached, request(cache="no-cache"))[-1].route.cache == "miss"  # stored now
    assert ask(cached, request())[-1].route.cache == "hit" and len(a.requests) == 2


def test_entries_expire_and_the_least_recently_used_go_first() -> None:
    now = [0.0]
    cached, _, _ = build(CachePolicy("exact", ttl_s=10, max_entries=2), clock=lambda: now[0])
    for text in ("one?", "two?", "three?"):
        ask(cached, request(text))
    assert cached.size("bot") == 2
    assert ask(cached, request("one?"))[-1].route.cache == "miss"  # evicted
    now[0] = 11.0
    assert ask(cached, request("three?"))[-1].route.cache == "miss"  # expired


class FakeEmbedder:
    """Unit vectors from a table; texts not in it are orthogonal to everything."""

    def __init__(self, table: dict[str, Sequence[float]]) -> None:
        self.table = table

    async def __call__(self, text: str) -> Sequence[float]:
        return self.table.get(text, [0.0, 0.0, 1.0])


def test_a_semantic_hit_needs_a_close_message_and_everything_else_equal() -> None:
    embed = FakeEmbedder({"How do I reset my password?": [1.0, 0.0, 0.0],
                          "How can I change my forgotten password?": [0.98, 0.199, 0.0],
                          "How do I reset my username?": [0.9, 0.436, 0.0]})  # fmt: skip
    policy = CachePolicy("semantic", threshold=0.95, embedding_model="minilm", guard="none")
    cached, a, _ = build(policy, {"minilm": embed})
    ask(cached, request("How do I reset my password?"))
    hit = ask(cached, request("How can I change my forgotten password?"))[-1].route
    assert hit.cache == "semantic-hit" and hit.cache_similarity == pytest.approx(0.98)
    assert ask(cached, request("How do I reset my username?"))[-1].route.cache == "miss"
    other_system = [
        {"role": "system", "content": "Be long."},
        {"role": "user", "content": "How can I change my forgotten password?"},
    ]
    assert ask(cached, request(messages=other_system))[-1].route.cache == "miss"


def test_the_default_guard_wants_the_same_words_numbers_and_negations() -> None:
    same = [1.0, 0.0, 0.0]
    texts = (
        "What is the capital of France?",
        "what's the capital of france",
        "Flights from Paris to Rome",
        "flights from Rome to Paris",
        "I want the blue one",
        "I don't want the blue one",
        "Where is order #48213?",
        "Where is order #48231?",
    )
    embed = FakeEmbedder(dict.fromkeys(texts, same))
    policy = CachePolicy("semantic", threshold=0.9, embedding_model="minilm")  # strict
    cached, _, _ = build(policy, {"minilm": embed})
    for cached_text, asked, outcome in [
        ("What is the capital of France?", "what's the capital of france", "semantic-hit"),
        ("Flights from Paris to Rome", "flights from Rome to Paris", "miss"),
        ("I want the blue one", "I don't want the blue one", "miss"),
        ("Where is order #48213?", "Where is order #48231?", "miss"),
    ]:
        ask(cached, request(cached_text))
        assert ask(cached, request(asked))[-1].route.cache == outcome, (cached_text, asked)
