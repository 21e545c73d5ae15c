"""The response cache shared through a real redis-server (started by the test): two
`CachedGenerator`s stand for two gateway processes on one Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from inferline.cache import CachePolicy
from inferline.cache.shared import RedisAnswers, decode, encode
from inferline.cache.store import Entry
from inferline.core.outputs import (
    CompletionOutput,
    Logprob,
    RequestMetrics,
    RequestOutput,
    ToolCall,
    ToolCallDelta,
)
from tests.cache.test_cache import ask, build, request
from tests.router.fakes import text_of


def shared(redis_url: str) -> tuple[RedisAnswers, RedisAnswers]:
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return RedisAnswers(client, prefix), RedisAnswers(client, prefix)


def drain(answers: RedisAnswers, prefix_count: int = 1) -> None:
    """Waits for the background writes."""
    for _ in range(100):
        if len(answers.client.keys(f"{answers.prefix}:cache:*")) >= prefix_count:
            return
        time.sleep(0.02)
    raise AssertionError("nothing was written to Redis")


def test_an_answer_stored_by_one_process_is_a_hit_in_the_other(redis_url: str) -> None:
    answers_a, answers_b = shared(redis_url)
    first, a_target, _ = build(CachePolicy("exact", ttl_s=60))
    second, b_target, _ = build(CachePolicy("exact", ttl_s=60))
    first.share(answers_a)
    second.share(answers_b)
    miss = ask(first, request())
    drain(answers_a)
    hit = ask(second, request(request_id="r2"))
    assert len(a_target.requests) == 1 and b_target.requests == []
    assert hit[-1].route.cache == "hit" and text_of(hit) == text_of(miss)
    assert len(hit) == len(miss) > 1 and hit[-1].request_id == "r2"
    ttl_ms = answers_a.client.pttl(answers_a.client.keys(f"{answers_a.prefix}:cache:*")[0])
    assert 0 < ttl_ms <= 60_000  # the route's ttl_s, kept by Redis


def test_without_sharing_the_other_process_misses(redis_url: str) -> None:
    answers_a, _ = shared(redis_url)
    first, _, _ = build(CachePolicy("exact"))
    second, b_target, _ = build(CachePolicy("exact"))
    first.share(answers_a)
    ask(first, request())
    drain(answers_a)
    assert ask(second, request())[-1].route.cache == "miss" and len(b_target.requests) == 1


def test_an_unreachable_redis_is_a_miss_not_an_error() -> None:
    cached, target, _ = build(CachePolicy("exact"))
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                         retry=Retry(NoBackoff(), 0))  # fmt: skip
    cached.share(RedisAnswers(client))
    assert ask(cached, request())[-1].route.cache == "miss"
    assert len(target.requests) == 1


def test_the_codec_keeps_tool_calls_logprobs_and_counts() -> None:
    completion = CompletionOutput(
        0, "Hi", text_delta="Hi", num_tokens=2, num_tokens_delta=2,
        logprobs=[Logprob(5, "Hi", -0.1, ((5, "Hi", -0.1), (6, "Yo", -2.5)))],
        finish_reason="stop", stop_reason="\n",
        tool_calls=[ToolCall("call_1", "f", '{"a": 1}')],
        tool_call_deltas=[ToolCallDelta(0, '{"a": 1}', "call_1", "f")],
    )  # fmt: skip
    output = RequestOutput(
        "r", "prompt", [], [completion], True, RequestMetrics(1.0, 1.1, 1.2, 1.3, 4),
        num_prompt_tokens=7, model="m", prompt_logprobs=[None, Logprob(1, "p", -0.5)],
    )  # fmt: skip
    back = decode(encode(Entry((output,), "m", 0.0)), now_s=5.0)
    assert back.outputs == (output,) and back.model == "m" and back.created_s == 5.0


def test_semantic_entries_stay_in_their_process(redis_url: str) -> None:
    answers_a, answers_b = shared(redis_url)

    async def embed(text: str) -> list[float]:
        return [1.0, 0.0] if "capital" in text.lower() else [0.0, 1.0]

    policy = CachePolicy("semantic", embedding_model="e", guard="none")
    first, _, _ = build(policy, embedders={"e": embed})
    second, b_target, _ = build(policy, embedders={"e": embed})
    first.share(answers_a)
    second.share(answers_b)
    ask(first, request("What is the capital of France?"))
    drain(answers_a)
    reworded: Any = request("The capital of France is?")
    assert ask(first, reworded)[-1].route.cache == "semantic-hit"
    assert asyncio.run(_lookup_cache(second, reworded)) == "miss"
    assert len(b_target.requests) == 1


async def _lookup_cache(cached: Any, req: Any) -> str:
    outputs = [o async for o in await cached.submit(req)]
    return str(outputs[-1].route.cache)
