"""Rollouts on a real SQLite store: sticky arms at the configured share, a worse
candidate rolled back within the policy's sample size (the label moved back, the event
with its evidence), an equal one promoted, an SLO breach, a restart."""

from __future__ import annotations

from typing import Any

import pytest

from inferline.evals.rollout import Observation, RolloutController, RolloutSpec, Slo, in_candidate
from inferline.evals.scorers import JsonSchema
from inferline.evals.sequential import Policy, expected_samples
from inferline.store.prompts import PromptStore
from inferline.store.rollouts import RolloutStore

pytestmark = pytest.mark.anyio
SCHEMA = {"type": "object", "required": ["name", "age"]}


def _spec(**changes: Any) -> RolloutSpec:
    base = {"name": "reply-v2", "kind": "prompt", "subject": "reply", "baseline": "1",
            "candidate": "2", "share": 0.2, "scorers": (("json_schema:x", 1.0),),
            "policy": Policy(min_samples=10)}  # fmt: skip
    return RolloutSpec(**{**base, **changes})


def _controller(database: Any, **changes: Any) -> tuple[RolloutController, PromptStore]:
    prompts = PromptStore(database)
    for n in (1, 2):
        prompts.add_version("reply", {"messages": [{"role": "user", "content": f"v{n}"}]})
    prompts.move_label("reply", "production", 1)
    controller = RolloutController(_spec(**changes), RolloutStore(database),
                                   [(JsonSchema(SCHEMA), 1.0)], prompts)  # fmt: skip
    controller.start()
    return controller, prompts


def _seen(arm: str, n: int, good: bool, status: int = 200) -> Observation:
    output = '{"name": "A", "age": 3}' if good else '{"name": "A"}'
    return Observation(arm, f"{arm}-{n}", status, 0.1, [{"role": "user", "content": "q"}], output)


def test_arms_are_sticky_at_the_share() -> None:
    spec = _spec()
    chosen = [in_candidate(spec, f"user-{n}") for n in range(5000)]
    assert sum(chosen) / len(chosen) == pytest.approx(0.2, abs=0.02)
    assert all(in_candidate(spec, "user-7") == chosen[7] for _ in range(5))


async def test_a_worse_candidate_is_rolled_back_within_the_policy_sample_size(database) -> None:  # type: ignore[no-untyped-def]
    controller, prompts = _controller(database)
    assert prompts.label_map("reply")["production"] == 2  # the rollout moved it
    limit = expected_samples(controller.spec.policy, 1.0)["worse"]
    decision, n = None, 0
    while decision is None and n < 100:
        for k in range(4):  # 80% baseline
            await controller.observe(_seen("baseline", 4 * n + k, good=True))
        decision = await controller.observe(_seen("candidate", n, good=False))
        n += 1
    assert decision == "rolled_back" and n <= limit
    assert prompts.label_map("reply")["production"] == 1  # moved back, nobody involved
    event = controller.store.events_of("reply-v2")[-1]
    assert event["kind"] == "rolled_back" and "worse" in event["reason"]
    assert event["evidence"]["arms"]["candidate"]["fails"] == n
    assert event["evidence"]["llr"] >= event["evidence"]["bounds"]["rollback"]
    assert controller.arm("anyone") is None  # decided: the label rules again
    assert await controller.observe(_seen("candidate", 999, good=False)) is None


async def test_an_equal_candidate_is_promoted(database) -> None:  # type: ignore[no-untyped-def]
    controller, prompts = _controller(database)
    decision, n = None, 0
    while decision is None and n < 100:
        for k in range(4):
            await controller.observe(_seen("baseline", 4 * n + k, good=(4 * n + k) % 50 != 0))
        decision = await controller.observe(_seen("candidate", n, good=True))
        n += 1
    assert decision == "promoted" and n <= expected_samples(controller.spec.policy, 0.98)["equal"]
    assert prompts.label_map("reply")["production"] == 2
    restarted = RolloutController(controller.spec, controller.store, [], prompts)
    assert restarted.start()["state"] == "promoted"
    assert [e["kind"] for e in controller.store.events_of("reply-v2")] == ["started", "promoted"]


async def test_an_slo_breach_rolls_back(database) -> None:  # type: ignore[no-untyped-def]
    controller, _ = _controller(database, slo=Slo(error_rate=0.2), kind="route",
                                subject="bot", baseline="bot", candidate="bot-v2")  # fmt: skip
    for n in range(10):
        await controller.observe(_seen("baseline", n, good=True))
    decision = None
    for n in range(10):
        decision = await controller.observe(
            _seen("candidate", n, good=True, status=503 if n < 3 else 200)
        )
    assert decision == "rolled_back"
    assert controller.store.events_of("reply-v2")[-1]["reason"] == "SLO: error rate 0.300 > 0.2"
    assert controller.arm("u") == "baseline"  # a decided route rollout keeps its winner


async def test_a_rollback_whose_label_move_was_lost_is_repaired(database) -> None:  # type: ignore[no-untyped-def]
    controller, prompts = _controller(database)
    controller.store.decide("reply-v2", "rolled_back", "worse", {})  # then a crash
    assert prompts.label_map("reply")["production"] == 2
    RolloutController(controller.spec, controller.store, [], prompts).start()
    assert prompts.label_map("reply")["production"] == 1
    assert controller.store.events_of("reply-v2")[-1]["kind"] == "label_repaired"
