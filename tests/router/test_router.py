"""The router over scripted targets: fallbacks, retries, deadlines, breakers, continuation,
strategies and cascades (no model, no network: milliseconds per test)."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from inferline.core import (
    AllTargetsFailedError,
    ContextLengthExceededError,
    DeadlineExceededError,
    GenerationRequest,
    InvalidParameterError,
    RateLimitedError,
    SamplingParams,
    StreamInterruptedError,
    UnknownModelError,
    UpstreamUnavailableError,
)
from inferline.router.config import (
    BreakerConfig,
    CheckConfig,
    RetryBudget,
    RetryPolicy,
    RouteConfig,
    TargetConfig,
    TargetRef,
)
from inferline.router.router import Router
from inferline.router.target import Target
from tests.router.fakes import WORDS, ScriptedGenerator, Step, collect, text_of

WHOLE = " ".join(WORDS)


def target(gen: ScriptedGenerator, **config: Any) -> Target:
    return Target(TargetConfig(gen.name, **config), gen)


def route(name: str, *targets: str, **fields: Any) -> RouteConfig:
    fields.setdefault("retry", RetryPolicy(attempts=1))
    return RouteConfig(name, tuple(TargetRef(t) for t in targets), **fields)


def ask(router: Router, model: str = "bot", **fields: Any) -> Any:
    params = fields.pop("params", SamplingParams(max_tokens=50))
    request = GenerationRequest(
        fields.pop("request_id", "r1"),
        messages=[{"role": "user", "content": "hi"}],
        params=params,
        model=model,
        **fields,
    )

    async def run() -> tuple[list[Any], float]:
        started = time.monotonic()
        outputs = await collect(await router.submit(request))
        return outputs, time.monotonic() - started

    return run()


def test_a_failing_primary_falls_back_invisibly() -> None:
    a = ScriptedGenerator("a", [Step(error=UpstreamUnavailableError("down", target="a"))])
    b = ScriptedGenerator("b")
    router = Router([target(a), target(b)], [route("bot", "a", "b")])
    outputs, _ = asyncio.run(ask(router))
    assert text_of(outputs) == WHOLE and outputs[-1].finished
    report = outputs[-1].route
    assert outputs[-1].model == "b" and report.target == "b" and report.model == "b"
    assert report.fallback_reason == "upstream_unavailable"
    assert [(x.target, x.status, x.reason) for x in report.attempts] == [
        ("a", "error", "first"),
        ("b", "ok", "upstream_unavailable"),
    ]
    assert b.requests[0].model == "b" and b.requests[0].request_id == "r1-a2"


def test_retryable_errors_are_retried_with_backoff_on_the_same_target() -> None:
    flaky = ScriptedGenerator("a", [Step(error=UpstreamUnavailableError("x", target="a")), Step()])
    policy = RetryPolicy(attempts=2, backoff_ms=50, max_backoff_ms=50)
    router = Router([target(flaky)], [route("bot", "a", retry=policy)], rng=random.Random(1))
    outputs, _ = asyncio.run(ask(router))
    assert text_of(outputs) == WHOLE
    assert [x.reason for x in outputs[-1].route.attempts] == ["first", "retry"]


def test_retry_after_is_honoured_exactly_when_it_fits_the_deadline() -> None:
    limited = RateLimitedError("slow down", target="a", retry_after_s=0.3)
    a = ScriptedGenerator("a", [Step(error=limited), Step()])
    bot = route("bot", "a", retry=RetryPolicy(attempts=2), deadline_s=5)
    outputs, elapsed = asyncio.run(ask(Router([target(a)], [bot])))
    assert text_of(outputs) == WHOLE and 0.3 <= elapsed < 0.6


def test_a_retry_after_past_the_deadline_moves_to_the_next_target_at_once() -> None:
    limited = RateLimitedError("slow down", target="a", retry_after_s=30)
    a, b = ScriptedGenerator("a", [Step(error=limited)]), ScriptedGenerator("b")
    bot = route("bot", "a", "b", retry=RetryPolicy(attempts=3), deadline_s=5)
    outputs, elapsed = asyncio.run(ask(Router([target(a), target(b)], [bot])))
    assert outputs[-1].model == "b" and elapsed < 0.2 and len(a.requests) == 1


def test_persistent_rate_limits_end_in_429_with_retry_after() -> None:
    limited = RateLimitedError("slow down", target="a", retry_after_s=2)
    a = ScriptedGenerator("a", [Step(error=limited)])
    with pytest.raises(AllTargetsFailedError) as info:
        asyncio.run(ask(Router([target(a)], [route("bot", "a")])))
    assert info.value.status_code == 429 and info.value.retry_after_s == 2
    assert "a: rate_limited" in str(info.value)
    assert len(info.value.route_report.attempts) == 1  # type: ignore[attr-defined]


def test_the_clients_own_errors_are_not_retried_or_fallen_back() -> None:
    a = ScriptedGenerator("a", [Step(error=InvalidParameterError("bad top_p", "top_p"))])
    b = ScriptedGenerator("b")
    with pytest.raises(InvalidParameterError, match="top_p"):
        asyncio.run(ask(Router([target(a), target(b)], [route("bot", "a", "b")])))
    assert b.requests == []


def test_a_prompt_too_long_for_one_target_goes_to_the_next_it_fits() -> None:
    small = ScriptedGenerator("small", [Step(error=ContextLengthExceededError(900, 50, 512))])
    large = ScriptedGenerator("large")
    router = Router([target(small), target(large)], [route("bot", "small", "large")])
    outputs, _ = asyncio.run(ask(router))
    assert outputs[-1].model == "large"
    assert outputs[-1].route.fallback_reason == "context_window"
    too_long = ScriptedGenerator("tiny", [Step(error=ContextLengthExceededError(900, 50, 100))])
    with pytest.raises(ContextLengthExceededError):  # fits nowhere: the client's to fix
        asyncio.run(ask(Router([target(too_long)], [route("bot", "tiny")])))


def test_the_deadline_bounds_a_target_that_never_answers() -> None:
    hung = ScriptedGenerator("a", [Step(hang=True)])
    router = Router([target(hung)], [route("bot", "a", deadline_s=0.3)])
    with pytest.raises(DeadlineExceededError):
        asyncio.run(ask(router))
    assert hung.closed == ["r1-a1"]  # its stream was closed (a local engine frees its KV)


def test_the_clients_shorter_timeout_wins() -> None:
    hung = ScriptedGenerator("a", [Step(hang=True)])
    router = Router([target(hung)], [route("bot", "a", deadline_s=30)])
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        asyncio.run(ask(router, deadline=time.monotonic() + 0.2))
    assert time.monotonic() - started < 1.0


def test_a_stream_cut_midway_is_continued_on_the_next_target() -> None:
    a = ScriptedGenerator("a", [Step(cut_after=4)])
    b = ScriptedGenerator("b")
    router = Router([target(a), target(b)], [route("bot", "a", "b")])
    outputs, _ = asyncio.run(ask(router))
    assert text_of(outputs) == WHOLE  # one whole answer
    final = outputs[-1]
    assert final.outputs[0].text == WHOLE and final.outputs[0].num_tokens == len(WORDS)
    assert final.model == "b" and final.route.target == "a" and final.route.model == "b"
    assert b.requests[0].assistant_prefix == " ".join(WORDS[:4])
    assert b.requests[0].params.max_tokens == 50 - 4
    assert final.route.attempts[1].reason == "continuation"
    assert final.route.fallback_reason == "stream_cut"


def test_a_stall_midway_with_a_deadline_is_continued_elsewhere() -> None:
    """A local engine has no idle timeout; the deadline still ends a stalled stream."""
    a = ScriptedGenerator("a", [Step(stall_after=3)])
    b = ScriptedGenerator("b")
    router = Router([target(a), target(b)], [route("bot", "a", "b", deadline_s=0.3)])
    with pytest.raises(DeadlineExceededError):
        asyncio.run(ask(router))  # the deadline is the whole request's: nothing is left


def test_a_cut_stream_nobody_can_continue_ends_with_an_error_not_a_short_answer() -> None:
    a = ScriptedGenerator("a", [Step(cut_after=4)])
    b = ScriptedGenerator("b")
    router = Router([target(a), target(b, can_continue=False)], [route("bot", "a", "b")])

    async def run() -> list[Any]:
        seen = []
        with pytest.raises(StreamInterruptedError, match="could not be completed"):
            async for output in await router.submit(
                GenerationRequest("r", prompt="hi", model="bot")
            ):
                seen.append(output)
        return seen

    seen = asyncio.run(run())
    assert text_of(seen) == " ".join(WORDS[:4]) and not any(o.finished for o in seen)
    assert b.requests == []


def test_the_breaker_opens_skips_the_target_then_probes_it() -> None:
    now = [0.0]
    down = UpstreamUnavailableError("down", target="a")
    a = ScriptedGenerator("a", [Step(error=down)] * 3 + [Step()])
    b = ScriptedGenerator("b")
    breaker = BreakerConfig(failures=3, window_s=10, cooldown_s=5)
    targets = [
        Target(TargetConfig("a", breaker=breaker), a, clock=lambda: now[0]),
        Target(TargetConfig("b"), b, clock=lambda: now[0]),
    ]
    router = Router(targets, [route("bot", "a", "b")], clock=lambda: now[0])
    for i in range(3):
        asyncio.run(ask(router, request_id=f"r{i}"))
    assert targets[0].breaker.state == "open" and len(a.requests) == 3
    outputs, _ = asyncio.run(ask(router, request_id="r3"))
    assert len(a.requests) == 3 and outputs[-1].model == "b"  # skipped while open
    assert outputs[-1].route.attempts[0].error_type == "breaker_open"
    now[0] = 6.0  # after the cool-down: one probe, which succeeds and closes it
    outputs, _ = asyncio.run(ask(router, request_id="r4"))
    assert outputs[-1].model == "a" and targets[0].breaker.state == "closed"


def test_the_retry_budget_stops_retry_storms() -> None:
    down = UpstreamUnavailableError("down", target="a")
    a = ScriptedGenerator("a", [Step(error=down)])
    policy = RetryPolicy(attempts=3, backoff_ms=0, max_backoff_ms=0)
    config = {"breaker": BreakerConfig(failures=1000), "retry_budget": RetryBudget(min_retries=2)}
    router = Router([target(a, **config)], [route("bot", "a", retry=policy)])
    for i in range(5):
        with pytest.raises(AllTargetsFailedError):
            asyncio.run(ask(router, request_id=f"r{i}"))
    assert len(a.requests) == 5 + 2  # five first attempts, two retries in all


def test_weighted_routing_is_sticky_per_user_and_follows_the_weights() -> None:
    a, b = ScriptedGenerator("a"), ScriptedGenerator("b")
    refs = (TargetRef("a", 3.0), TargetRef("b", 1.0))
    ab = RouteConfig("bot", refs, strategy="weighted", retry=RetryPolicy(attempts=1))
    router = Router([target(a), target(b)], [ab], rng=random.Random(7))
    firsts = [asyncio.run(ask(router, user="u42"))[0][-1].model for _ in range(5)]
    assert len(set(firsts)) == 1  # sticky
    models = [asyncio.run(ask(router, user=f"user{i}"))[0][-1].model for i in range(400)]
    assert 0.65 < models.count("a") / 400 < 0.85


def test_least_loaded_prefers_the_idle_target() -> None:
    busy, idle = ScriptedGenerator("busy"), ScriptedGenerator("idle")
    busy.running = 6
    bot = RouteConfig("bot", (TargetRef("busy"), TargetRef("idle")), strategy="least_loaded")
    router = Router([target(busy), target(idle)], [bot])
    outputs, _ = asyncio.run(ask(router))
    assert outputs[-1].model == "idle"


@pytest.mark.parametrize(("small_logprob", "answered_by"), [(-0.1, "small"), (-3.0, "large")])
def test_a_cascade_accepts_a_confident_answer_and_escalates_an_unsure_one(
    small_logprob: float, answered_by: str
) -> None:
    small = ScriptedGenerator("small", [Step(logprob=small_logprob)])
    large = ScriptedGenerator("large")
    check = CheckConfig("logprob_mean", threshold=-1.0)
    cascade = RouteConfig(
        "bot", (TargetRef("small"), TargetRef("large")), strategy="cascade", checks=(check,)
    )
    router = Router([target(small), target(large)], [cascade])
    outputs, _ = asyncio.run(ask(router))
    assert outputs[-1].model == answered_by and text_of(outputs) == WHOLE
    assert small.requests[0].params.logprobs == 0  # asked for the check
    assert all(c.logprobs is None for o in outputs for c in o.outputs)  # not for the client
    if answered_by == "large":
        assert outputs[-1].route.fallback_reason == "cascade:logprob_mean"
        assert outputs[-1].route.attempts[0].error_type == "check_failed:logprob_mean"


def test_unknown_names_and_bad_configs() -> None:
    a = ScriptedGenerator("a")
    router = Router([target(a)], [route("bot", "a")])
    with pytest.raises(UnknownModelError, match="Available: a, bot"):
        asyncio.run(ask(router, model="nope"))
    with pytest.raises(InvalidParameterError, match=r"routes\[0\].targets\[1\]: unknown model"):
        Router([target(a)], [route("bot", "a", "parnter")])
    with pytest.raises(InvalidParameterError, match="already the name"):
        Router([target(a)], [route("a", "a")])
    names = [(m.name, m.kind) for m in router.models()]
    assert names == [("bot", "route"), ("a", "model")]


def test_abort_ends_the_stream_and_closes_the_targets() -> None:
    slow = ScriptedGenerator("a", [Step(delay_s=0.05)])
    router = Router([target(slow)], [route("bot", "a")])

    async def run() -> None:
        stream = await router.submit(GenerationRequest("r", prompt="x", model="bot"))
        await stream.__anext__()
        await router.abort("r")
        with pytest.raises(InvalidParameterError, match="aborted"):
            async for _ in stream:
                pass

    asyncio.run(run())
    assert slow.closed == ["r-a1"]


def test_a_non_streaming_answer_cut_midway_is_answered_again_from_the_start() -> None:
    """Nobody saw its first words: the next target answers whole, no prefix."""
    a, b = ScriptedGenerator("a", [Step(cut_after=4)]), ScriptedGenerator("b")
    router = Router([target(a), target(b)], [route("bot", "a", "b")])
    outputs, _ = asyncio.run(ask(router, streaming=False))
    assert outputs[-1].outputs[0].text == WHOLE and outputs[-1].model == "b"
    assert b.requests[0].assistant_prefix is None and b.requests[0].params.max_tokens == 50


@pytest.mark.parametrize(("score", "answered_by"), [(0.8, "small"), (0.1, "large")])
def test_a_cascade_checks_a_one_pass_models_score(score: float, answered_by: str) -> None:
    small, large = ScriptedGenerator("small"), ScriptedGenerator("large")
    seen: list[tuple[str, str]] = []

    async def scorer(question: str, answer: str) -> float:
        seen.append((question, answer))
        return score

    check = CheckConfig("similarity", threshold=0.5, model="embed")
    cascade = RouteConfig(
        "bot", (TargetRef("small"), TargetRef("large")), strategy="cascade", checks=(check,)
    )
    router = Router([target(small), target(large)], [cascade], scorers={"embed": scorer})
    outputs, _ = asyncio.run(ask(router))
    assert outputs[-1].model == answered_by and seen == [("hi", WHOLE)]
    with pytest.raises(InvalidParameterError, match=r"checks\[0\].model: 'embed'"):
        Router([target(small), target(large)], [cascade])


def test_a_client_leaving_midway_is_no_verdict_on_the_target() -> None:
    slow = ScriptedGenerator("a", [Step(delay_s=0.02)])
    config = TargetConfig("a", breaker=BreakerConfig(failures=1))
    routed = Target(config, slow)
    router = Router([routed], [route("bot", "a")])

    async def run() -> None:
        stream = await router.submit(GenerationRequest("r", prompt="x", model="bot"))
        await stream.__anext__()
        await stream.aclose()  # the client went away

    asyncio.run(run())
    assert routed.breaker.state == "closed" and routed.window.num_requests == 0
    assert slow.closed == ["r-a1"]
