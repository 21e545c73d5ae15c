"""Per-minute rollups written with the log: sums, histograms, windows, series, percentiles."""

from __future__ import annotations

import re
import threading
from typing import Any

import pytest

from inferline.store import RequestLog, RequestRecord, connect, migrate
from inferline.store.rollups import EDGES, Rollups, bucket_of, quantile

NOW = 1_800_000_000.0  # a minute boundary: 30,000,000 minutes


def _record(
    n: int, at: float, route: str = "bot", status: int = 200, **extra: object
) -> RequestRecord:
    fields = {"total_time_s": 0.3, "ttft_s": 0.04, "tpot_s": 0.02, "prompt_tokens": 10,
              "completion_tokens": 20, "cost_usd": 0.001, "route": route,
              "num_attempts": 1}  # fmt: skip
    values: Any = {**fields, **extra}
    return RequestRecord(f"r{n}", at, route, "/v1/chat/completions", status, **values)


def test_buckets_and_quantiles() -> None:
    assert (bucket_of(0.001), bucket_of(0.005), bucket_of(0.3), bucket_of(1e9)) == (0, 0, 6, 21)
    histogram = [0] * len(EDGES)
    histogram[3], histogram[9] = 90, 10  # 90 at <= 50 ms, 10 at <= 1 s
    assert (quantile(histogram, 0.5), quantile(histogram, 0.95)) == (0.05, 1.0)
    assert quantile([0] * len(EDGES), 0.5) is None


def test_rollups_follow_the_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    log = RequestLog(engine)
    records = [_record(n, NOW - 30 + n % 20) for n in range(40)]  # one minute
    records += [_record(100, NOW - 90, status=503, total_time_s=None, ttft_s=None)]
    records += [_record(101, NOW - 10, route="other", num_attempts=2, cache="exact",
                        decision="abstain", total_time_s=2.5)]  # fmt: skip
    log.insert_many(records[:20])
    log.insert_many(records[20:])  # a second batch adds to the same rows
    rollups = Rollups(engine)
    windows = rollups.windows(NOW, 300)
    everything, bot, other = windows["*"], windows["bot"], windows["other"]
    assert (everything["requests"], bot["requests"], other["requests"]) == (42, 41, 1)
    assert bot["error_rate"] == pytest.approx(1 / 41)
    assert (other["fallback_rate"], other["cache_hit_rate"], other["cost_per_success_usd"]) == (
        1.0, 1.0, None)  # the abstained request is no success  # fmt: skip
    assert bot["latency_p50_s"] == 0.35 and bot["ttft_p95_s"] == 0.05  # upper bucket edges
    assert bot["cost_per_success_usd"] == pytest.approx(0.041 / 40)
    assert everything["output_tokens_per_s"] == pytest.approx(42 * 20 / 300)
    assert rollups.windows(NOW, 60)["*"]["requests"] == 41  # the 503 was 90 s ago
    assert rollups.windows(NOW + 60, 60)["*"]["requests"] == 0  # whole minutes only
    series = rollups.series(NOW, 3600, points=60)
    assert len(series["t"]) == 61 and sum(v or 0 for v in series["per_s"]) * 60 == pytest.approx(42)


def test_concurrent_writers_add_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)

    def write(k: int) -> None:
        log = RequestLog(engine)
        for j in range(10):
            log.insert_many([_record(1000 * k + j, NOW - 5)])

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Rollups(engine).windows(NOW, 60)["bot"]["requests"] == 40


def test_the_migration_backfills_the_same_rollups(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from inferline.store.migrations_evals import _backfill_rollups

    engine = connect(f"sqlite:///{tmp_path / 'r.db'}")
    migrate(engine)
    records = [_record(n, NOW - 200 + 7 * n, route=("bot", "other")[n % 2],
                       status=503 if n % 9 == 0 else 200, total_time_s=0.01 * n + 0.001,
                       ttft_s=None if n % 5 == 0 else 0.002 * n, num_attempts=1 + n % 3 // 2,
                       cache="exact" if n % 4 == 0 else None,
                       decision="abstain" if n % 7 == 0 else None) for n in range(60)]  # fmt: skip
    RequestLog(engine).insert_many(records)
    query = "SELECT * FROM request_rollups ORDER BY minute, route"
    with engine.connect() as conn:
        written = [dict(r._mapping) for r in conn.execute(text(query))]
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM request_rollups"))
        sums = tuple(k for k in written[0]
                     if k not in ("minute", "route") and not re.search(r"_h\d+$", k))  # fmt: skip
        _backfill_rollups(conn, sums)
    with engine.connect() as conn:
        rebuilt = [dict(r._mapping) for r in conn.execute(text(query))]
    assert len(written) >= 4
    for a, b in zip(written, rebuilt, strict=True):
        assert a == pytest.approx(b)
