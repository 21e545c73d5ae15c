"""Rate limits and budgets shared through a real redis-server (started by the test): two
instances stand for two gateway processes on one Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from inferline.core.errors import LimitExceededError
from inferline.core.protocols import ModelInfo
from inferline.store import KeyStore, connect, migrate
from inferline.tenants import Estimate, KeyPolicy, Tenants
from inferline.tenants.budget import BudgetLedger
from inferline.tenants.limits import LocalLimits
from inferline.tenants.redis_budget import RedisLedger, _Hold
from inferline.tenants.redis_limits import RedisLimits
from inferline.tenants.redis_state import RedisState, SharedStateError, connect_redis


def shared(redis_url: str, lease_s: float = 30.0) -> RedisState:
    """A connection with a fresh key prefix (tests share one server)."""
    return connect_redis(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}", lease_s=lease_s)


def two(redis_url: str, lease_s: float = 30.0) -> tuple[RedisState, RedisState]:
    """Two processes' connections to the same prefix."""
    first = shared(redis_url, lease_s)
    return first, connect_redis(redis_url, prefix=first.prefix, lease_s=lease_s)


def test_the_redis_buckets_refuse_like_the_local_ones_across_two_processes(redis_url) -> None:
    a, b = two(redis_url)
    limits = [RedisLimits(a), RedisLimits(b)]
    key = KeyPolicy("k", "team", rpm=4, tpm=100)
    admitted = [limits[i % 2].admit(key, f"r{i}", 10) for i in range(4)]
    assert admitted == [None] * 4
    refusal = limits[0].admit(key, "r4", 10)
    assert refusal is not None and refusal.which == "requests"
    assert 14 < refusal.wait_s <= 15  # one request back every 15 s
    states = limits[1].states(key)  # what the headers say: 0 requests, 60 tokens left
    assert states["requests"].remaining == 0 and states["tokens"].remaining == 60
    local = LocalLimits()
    for i in range(4):
        local.admit(key, f"r{i}", 10)
    assert local.states(key)["tokens"].remaining == states["tokens"].remaining


def test_a_token_refusal_takes_nothing_and_finish_corrects_the_estimate(redis_url) -> None:
    limits = RedisLimits(shared(redis_url))
    key = KeyPolicy("k", "team", rpm=10, tpm=100)
    assert limits.admit(key, "big", 90) is None
    refusal = limits.admit(key, "more", 20)
    assert refusal is not None and refusal.which == "tokens"
    assert limits.states(key)["requests"].remaining == 9  # the refused request took nothing
    limits.finish(key, "big", 90, 30)  # it used 30 of the 90 it was estimated at
    assert limits.states(key)["tokens"].remaining == 70
    assert limits.admit(key, "more", 20) is None


def test_max_parallel_is_shared_and_a_dead_process_frees_its_slots(redis_url) -> None:
    a, b = two(redis_url, lease_s=0.5)
    first, second = RedisLimits(a), RedisLimits(b)
    key = KeyPolicy("k", "team", max_parallel=2)
    assert first.admit(key, "a1", 1) is None and second.admit(key, "b1", 1) is None
    refusal = second.admit(key, "b2", 1)
    assert refusal is not None and refusal.which == "parallel"
    second.finish(key, "b1", 1, 1)
    assert second.admit(key, "b2", 1) is None
    for _ in range(4):  # `first` lives: its lease is renewed; `second` died (no renewal)
        time.sleep(0.25)
        first.renew()
    assert first.admit(key, "a2", 1) is None  # b2's slot went with its lease
    refusal = first.admit(key, "a3", 1)
    assert refusal is not None and refusal.which == "parallel"  # a1 is still held


def test_two_ledgers_hold_one_budget_like_the_local_one(redis_url) -> None:
    a, b = two(redis_url)
    spent = lambda _key, _since: 0.25  # noqa: E731  (already spent, in the database)
    ledgers = [RedisLedger(a, spent), RedisLedger(b, spent), BudgetLedger(spent)]
    key = KeyPolicy("k", "team", budget_usd=1.0)
    for first, second in ((ledgers[0], ledgers[1]), (ledgers[2], ledgers[2])):
        assert first.reserve(key, "a", 0.5) and not second.reserve(key, "b", 0.5)
        assert second.reserve(key, "b", 0.25)
        assert first.charge(key, "a", 0.4) and second.charge(key, "b", 0.25)
        assert not second.charge(key, "b", 0.01)  # b is at its hold and nothing is left
        assert first.charge(key, "a", 0.1) and not first.charge(key, "a", 0.01)
        assert first.reserved(key) == pytest.approx(0.75)
        first.settle(key, "a", 0.5)
        second.settle(key, "b", 0.25)
        assert first.available(key) == pytest.approx(0.0) and second.reserved(key) == 0


def test_concurrent_admissions_from_two_processes_never_pass_the_budget(redis_url) -> None:
    a, b = two(redis_url)
    ledgers = [RedisLedger(a, lambda _k, _s: 0.0), RedisLedger(b, lambda _k, _s: 0.0)]
    key = KeyPolicy("k", "team", budget_usd=10.0)
    spent: list[float] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        ledger = ledgers[index % 2]
        for n in range(40):
            request_id = f"w{index}-{n}"
            if not ledger.reserve(key, request_id, 0.2):
                continue
            cost = 0.0
            for _ in range(3):  # charges past the reservation: the hold grows
                if ledger.charge(key, request_id, 0.1):
                    cost += 0.1
            ledger.settle(key, request_id, cost)
            with lock:
                spent.append(cost)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(spent) <= 10.0 + 1e-9
    assert sum(spent) >= 9.0  # and it was used, not refused for nothing
    assert ledgers[0].reserved(key) == 0
    assert ledgers[1].available(key) == pytest.approx(10.0 - sum(spent))


def test_a_dead_process_hold_is_charged_at_its_reservation_once(redis_url) -> None:
    a, b = two(redis_url, lease_s=0.4)
    dead, alive = RedisLedger(a, lambda _k, _s: 0.0), RedisLedger(b, lambda _k, _s: 0.0)
    key = KeyPolicy("k", "team", budget_usd=1.0)
    assert dead.reserve(key, "d", 0.6) and alive.reserve(key, "l", 0.3)
    assert not alive.reserve(key, "x", 0.2)
    assert alive.alive(["d", "l", "nope"]) == {"d", "l"}
    for _ in range(3):
        time.sleep(0.2)
        alive.renew()
    assert alive.alive(["d", "l"]) == {"l"}  # d's process stopped renewing
    assert alive.available(key) == pytest.approx(0.1)  # d charged 0.6, l holds 0.3
    dead.settle(key, "d", 0.05)  # it comes back late: charged already, not again
    assert alive.available(key) == pytest.approx(0.1)


def test_the_period_is_seeded_once_from_the_database(redis_url) -> None:
    state = shared(redis_url)
    calls: list[str] = []

    def spent_since(key_id: str, _since: float) -> float:
        calls.append(key_id)
        return 0.75

    first, second = RedisLedger(state, spent_since), RedisLedger(state, spent_since)
    key = KeyPolicy("k", "team", budget_usd=1.0)
    assert first.available(key) == pytest.approx(0.25)
    assert not second.reserve(key, "r", 0.3) and second.reserve(key, "r", 0.25)
    assert calls == ["k"]


@pytest.mark.anyio
async def test_recovery_at_start_leaves_the_rows_of_a_living_process(
    redis_url: str, tmp_path: Path
) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'keys.db'}")
    migrate(engine)
    store = KeyStore(engine)
    row, _secret = store.create({"name": "team", "budget_usd": 2.0, "budget_period": "total"})
    key = KeyPolicy.from_row(row)
    a, b = two(redis_url, lease_s=0.5)

    def tenants(state: RedisState) -> Tenants:
        ledger = RedisLedger(state, store.spent_since)
        return Tenants(store, limits=RedisLimits(state), ledger=ledger)

    running, crashed = tenants(a), tenants(b)
    info = ModelInfo("remote", output_usd_per_mtok=1e6)  # 1 USD per output token
    live = await running.admit(key, "live", info, Estimate(1, 1))
    await crashed.admit(key, "lost", info, Estimate(1, 1))
    with pytest.raises(LimitExceededError):
        await running.admit(key, "third", info, Estimate(1, 1))
    time.sleep(0.6)  # the crashed process's lease runs out; the running one renews
    running.renew()
    restarted = tenants(b)
    assert [r.request_id for r in restarted.recover()] == ["lost"]
    assert sorted(r["status"] for r in _rows(engine)) == ["interrupted", "reserved"]
    with pytest.raises(LimitExceededError):  # "lost" is charged its 1 USD, "live" holds 1
        await restarted.admit(key, "third", info, Estimate(1, 1))
    running.finish(live, None, (1, 0, 0))  # settled at 0 (in the background)
    for _ in range(50):
        if running.ledger.reserved(key) == 0:
            break
        await asyncio.sleep(0.02)
    await restarted.admit(key, "third", info, Estimate(1, 1))
    assert store.spent_since(key.id, 0) == pytest.approx(1.0)  # "lost" as reserved


def _rows(engine) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    from sqlalchemy import text

    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text("SELECT * FROM key_spend"))]


def test_the_tenants_package_does_not_import_redis() -> None:
    code = "import sys, inferline.tenants, inferline.cache; print('redis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.anyio
async def test_an_unreachable_redis_refuses_with_503_and_stops_charges() -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0),
                         decode_responses=True)  # fmt: skip
    state = RedisState(client, prefix="down")
    ledger = RedisLedger(state, lambda _k, _s: 0.0)
    tenants = Tenants(None, limits=RedisLimits(state), ledger=ledger)
    key = KeyPolicy("k", "team", rpm=5, budget_usd=1.0)
    with pytest.raises(SharedStateError) as refused:
        await tenants.admit(key, "r", ModelInfo("m"), Estimate(1, 1))
    assert refused.value.retry_after_s == 1  # an OverloadedError: 503 + Retry-After
    ledger._live["r"] = _Hold(ledger._keys(key), reserved=0.1, held=0.1)  # admitted before
    assert ledger.charge(key, "r", 0.05)  # within its hold: no Redis needed
    assert not ledger.charge(key, "r", 0.2)  # growing the hold needs Redis: stopped
