"""A local engine priced per machine hour: each request is charged the engine time it used
(each step's time split by its tokens), per step, so a budget stops it; the reservation
price follows the engine's measured time per token."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from inferline.core import GenerationRequest, SamplingParams
from inferline.core.errors import InvalidParameterError
from inferline.engine import FrontendConfig
from inferline.engine.async_engine import AsyncEngine
from inferline.engine.llm_engine import _share_step_time
from inferline.router.config import Price, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import PRIOR_ENGINE_S_PER_TOKEN, Target
from tests.router.fakes import ScriptedGenerator

PER_ENGINE_SECOND = Price(machine_per_hour=3600.0)  # 1 USD per second of engine time


@dataclass
class Wallet:
    """A `SpendGuard` over a fixed budget."""

    budget_usd: float
    spent_usd: float = 0.0

    def charge(self, amount_usd: float) -> bool:
        if self.spent_usd + amount_usd > self.budget_usd:
            return False
        self.spent_usd += amount_usd
        return True


def test_a_step_is_shared_by_tokens() -> None:
    requests = [SimpleNamespace(engine_s=0.0) for _ in range(3)]
    scheduled = [
        SimpleNamespace(request=r, num_tokens=n) for r, n in zip(requests, (1, 1, 98), strict=True)
    ]
    _share_step_time(scheduled, 0.5)  # type: ignore[arg-type]
    assert [r.engine_s for r in requests] == pytest.approx([0.005, 0.005, 0.49])
    _share_step_time([], 0.5)  # an empty step charges no one


def test_engine_time_is_the_steps_time_split_among_requests(make_engine: Any) -> None:
    import time

    engine = make_engine()
    short = engine.add_request("Say hi.", SamplingParams(max_tokens=4, temperature=0.0))
    long = engine.add_request("Tell a story.", SamplingParams(max_tokens=40, temperature=0.0,
                                                             ignore_eos=True))  # fmt: skip
    finished, stepping_s = {}, 0.0
    while engine.has_unfinished_requests():
        started = time.perf_counter()
        outputs = engine.step()
        stepping_s += time.perf_counter() - started
        finished.update({o.request_id: o for o in outputs if o.finished})
    short_s, long_s = finished[short].metrics.engine_s, finished[long].metrics.engine_s
    assert 0 < short_s < long_s
    assert 0.5 * stepping_s < short_s + long_s <= stepping_s


def test_machine_time_is_charged_per_step_and_the_budget_stops_the_answer(
    make_engine: Any,
) -> None:
    """Unbounded decoding on a real engine, 1 USD per engine second, a 0.15 USD budget:
    the answer ends with 'length' and what was charged equals the attempt's cost."""
    generator = AsyncEngine(make_engine(), FrontendConfig(), name="local")
    target = Target(TargetConfig("local", price=PER_ENGINE_SECOND), generator)
    router = Router([target], [RouteConfig("bot", (TargetRef("local"),))])
    wallet = Wallet(0.15)
    params = SamplingParams(max_tokens=2000, temperature=0.0, ignore_eos=True)

    async def run() -> list[Any]:
        await router.start()
        try:
            request = GenerationRequest("r", prompt="Count:", params=params, model="bot",
                                        spend=wallet)  # fmt: skip
            return [o async for o in await router.submit(request)]
        finally:
            await router.shutdown(5.0)

    outputs = asyncio.run(run())
    last = outputs[-1]
    assert last.finished and last.outputs[0].finish_reason == "length"
    assert last.route is not None and last.route.stopped_by == "budget"
    (attempt,) = last.route.attempts
    assert 0 < attempt.num_output_tokens < 2000 and attempt.engine_s > 0
    assert attempt.cost_usd == pytest.approx(attempt.engine_s)  # 1 USD per second
    assert wallet.spent_usd <= 0.15
    # what was sent was charged; the step the budget could not pay was not sent, not billed
    assert wallet.spent_usd == pytest.approx(attempt.cost_usd)
    assert target.engine_s_per_token != PRIOR_ENGINE_S_PER_TOKEN


def test_the_reservation_price_follows_the_measured_engine_time() -> None:
    target = Target(TargetConfig("local", price=PER_ENGINE_SECOND), ScriptedGenerator("local"))
    prior = target.reserve_output_per_mtok()
    assert prior == pytest.approx(PRIOR_ENGINE_S_PER_TOKEN * 1e6)
    for _ in range(40):
        target.note_engine_time(0.5, 100)  # 5 ms per token
    assert target.reserve_output_per_mtok() == pytest.approx(0.005 * 1e6, rel=0.01)
    router = Router([target], [RouteConfig("bot", (TargetRef("local"),))])
    bot = next(m for m in router.models() if m.name == "bot")
    assert bot.output_usd_per_mtok == pytest.approx(target.reserve_output_per_mtok())


def test_machine_price_is_for_local_engines_and_adds_to_token_prices() -> None:
    price = Price(input_per_mtok=1.0, output_per_mtok=2.0, machine_per_hour=36.0)
    assert price.cost_usd(1_000_000, 1_000_000, 0, engine_s=100.0) == pytest.approx(4.0)
    with pytest.raises(InvalidParameterError, match="machine_per_hour needs a local engine"):
        TargetConfig("partner", kind="openai", price=Price(machine_per_hour=1.0))
    with pytest.raises(InvalidParameterError, match="negative"):
        Price(machine_per_hour=-1.0)
