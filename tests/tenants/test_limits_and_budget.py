"""Token buckets, the budget ledger under concurrency, and the key store's ledger rows."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from inferline.core.errors import InvalidParameterError
from inferline.store import KeyStore, connect, migrate
from inferline.tenants import KeyPolicy
from inferline.tenants.budget import BudgetLedger
from inferline.tenants.limits import KeyLimits, TokenBucket, reset_text


def test_a_bucket_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])  # one per second
    assert all(bucket.take(1) == 0 for _ in range(60))
    assert bucket.take(1) == pytest.approx(1.0)
    now[0] = 2.5
    assert bucket.remaining() == 2 and bucket.take(2) == 0
    assert bucket.take(100) == pytest.approx(59.5)  # larger than the bucket: wait until full
    now[0] = 1000
    assert bucket.take(100) == 0 and bucket.remaining() == 0  # then it goes through


def test_key_limits_refuse_without_taking_anything() -> None:
    now = [0.0]
    limits = KeyLimits(rpm=10, tpm=100, max_parallel=2, clock=lambda: now[0])
    assert limits.admit(60) is None and limits.admit(30) is None
    assert limits.admit(1) == ("parallel", 1.0)
    limits.finish(60, 10)  # used 10 of the 60 estimated: 50 come back
    assert limits.admit(50) is None  # 2 in flight again
    limits.finish(50, 50)
    which, wait = limits.admit(80) or ("", 0.0)
    assert which == "tokens" and wait > 0 and limits.requests is not None
    assert limits.requests.remaining() == 7  # the refused request gave its request back
    states = limits.states()
    assert states["requests"].limit == 10 and states["tokens"].limit == 100
    assert reset_text(0.25) == "250ms" and reset_text(6) == "6s" and reset_text(61) == "1m1s"


def test_the_ledger_never_lets_concurrent_requests_pass_the_budget() -> None:
    key = KeyPolicy("k", "team", budget_usd=1.0, budget_period="total")
    ledger = BudgetLedger(lambda _key, _since: 0.25)  # 0.25 already spent
    assert ledger.reserve(key, "a", 0.5) and not ledger.reserve(key, "b", 0.5)
    assert ledger.reserve(key, "b", 0.25)
    assert ledger.charge(key, "a", 0.4) and ledger.charge(key, "b", 0.25)
    assert not ledger.charge(key, "b", 0.01)  # b is at its hold and nothing is left
    assert ledger.charge(key, "a", 0.1) and not ledger.charge(key, "a", 0.01)
    ledger.settle(key, "a", 0.5)
    ledger.settle(key, "b", 0.25)
    assert ledger.available(key) == pytest.approx(0.0) and ledger.reserved(key) == 0


def test_periods_start_at_utc_midnight_and_the_first_of_the_month() -> None:
    moment = 1_796_236_919.0  # 2026-12-02 18:41:59 UTC
    day = KeyPolicy("k", "t", budget_usd=1, budget_period="day").period_start(moment)
    month = KeyPolicy("k", "t", budget_usd=1, budget_period="month").period_start(moment)
    assert time.gmtime(day)[:6] == (2026, 12, 2, 0, 0, 0)
    assert time.gmtime(month)[:6] == (2026, 12, 1, 0, 0, 0)
    with pytest.raises(InvalidParameterError, match="budget.period"):
        KeyPolicy("k", "t", budget_usd=1, budget_period="week")  # type: ignore[arg-type]


def test_the_store_keeps_hashes_and_reports_requests_cut_by_a_crash(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'keys.db'}")
    migrate(engine)
    store = KeyStore(engine)
    row, secret = store.create({"name": "team-a", "budget_usd": 5.0, "budget_period": "total"})
    assert secret.startswith("sk-inf-") and len(secret) > 40
    assert "key_hash" not in row and secret not in str(store.all())
    store.reserve(row["id"], "r1", "bot", 0.02)
    store.reserve(row["id"], "r2", "bot", 0.03)
    assert store.settle("r1", 0.015, 10, 0, 5) and not store.settle("r1", 1.0)
    interrupted = store.interrupt_unsettled()  # as at a start-up after kill -9
    assert [(r.request_id, r.spend_usd) for r in interrupted] == [("r2", 0.03)]
    assert store.spent_since(row["id"], 0) == pytest.approx(0.045)
    (usage,) = store.usage(row["id"], 0)
    assert usage["requests"] == 2 and usage["interrupted"] == 1
