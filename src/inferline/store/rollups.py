"""Per-minute rollups of the request log (migration ``m016``): one row per (minute, route)
with counts, sums and two histograms (total latency and time to first token, over
`EDGES`), added to atomically (``INSERT ... ON CONFLICT DO UPDATE``) in the transaction
that writes the log rows. The dashboard reads windows and series from here, so its
charts cost a few hundred rows whatever the size of the log; percentiles are read from
the histograms (the upper edge of the bucket the rank falls in)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    MetaData,
    Table,
    select,
)

EDGES = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
         10.0, 15.0, 20.0, 30.0, 60.0, 120.0, math.inf)  # fmt: skip
_SUMS = ("requests", "errors", "successes", "fallbacks", "cache_hits", "prompt_tokens",
         "completion_tokens", "cost_usd", "latency_sum", "ttft_sum", "ttft_n", "tpot_sum",
         "tpot_n")  # fmt: skip
_HISTS = ("lat", "ttft")  # the table (m016) has a column per bucket: lat_h0..lat_h21


def bucket_of(seconds: float) -> int:
    """The histogram bucket of a duration."""
    for index, edge in enumerate(EDGES):
        if seconds <= edge:
            return index
    return len(EDGES) - 1


def fold(records: Iterable[Any]) -> dict[tuple[int, str], dict[str, float]]:
    """Log records summed per (minute, route) (a record without a route counts under the
    model it named)."""
    out: dict[tuple[int, str], dict[str, float]] = {}
    for r in records:
        key = (int(r.created_at // 60), r.route or r.model)
        row = out.setdefault(key, {})
        ok = r.status_code < 400
        values = {
            "requests": 1, "errors": 0 if ok else 1,
            "successes": 1 if ok and r.decision not in ("abstain", "block") else 0,
            "fallbacks": 1 if r.num_attempts > 1 else 0,
            "cache_hits": 1 if r.cache in ("exact", "semantic", "hit") else 0,
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "cost_usd": r.cost_usd or 0.0,
        }  # fmt: skip
        if ok and r.total_time_s is not None:
            values["latency_sum"] = r.total_time_s
            values[f"lat_h{bucket_of(r.total_time_s)}"] = 1
        if ok and r.ttft_s is not None:
            values.update({"ttft_sum": r.ttft_s, "ttft_n": 1, f"ttft_h{bucket_of(r.ttft_s)}": 1})
        if ok and r.tpot_s is not None:
            values.update({"tpot_sum": r.tpot_s, "tpot_n": 1})
        for name, value in values.items():
            row[name] = row.get(name, 0) + value
    return out


def upsert(conn: Connection, table: Table, folded: dict[tuple[int, str], dict[str, float]]) -> None:
    """Adds folded sums to their rows (created when missing), atomically."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    for (minute, route), values in folded.items():
        statement = dialect.insert(table).values(minute=minute, route=route, **values)
        added = {name: table.c[name] + statement.excluded[name] for name in values}
        conn.execute(
            statement.on_conflict_do_update(index_elements=["minute", "route"], set_=added)
        )


@dataclass
class Window:
    """A route's (or all routes') figures over a time window."""

    sums: dict[str, float] = field(default_factory=dict)
    lat: list[int] = field(default_factory=lambda: [0] * len(EDGES))
    ttft: list[int] = field(default_factory=lambda: [0] * len(EDGES))

    def add(self, row: dict[str, Any]) -> None:
        """Adds one rollup row."""
        for name in _SUMS:
            self.sums[name] = self.sums.get(name, 0) + (row[name] or 0)
        for i in range(len(EDGES)):
            self.lat[i] += row[f"lat_h{i}"]
            self.ttft[i] += row[f"ttft_h{i}"]

    def view(self, seconds: float) -> dict[str, Any]:
        """Rates, means and percentiles of the window (``seconds`` long)."""
        s = self.sums
        n, ok = s.get("requests", 0), s.get("requests", 0) - s.get("errors", 0)
        return {
            "requests": int(n), "per_s": n / seconds if seconds else None,
            "error_rate": s.get("errors", 0) / n if n else None,
            "fallback_rate": s.get("fallbacks", 0) / n if n else None,
            "cache_hit_rate": s.get("cache_hits", 0) / n if n else None,
            "output_tokens_per_s": s.get("completion_tokens", 0) / seconds if seconds else None,
            "cost_usd": s.get("cost_usd", 0.0),
            "cost_per_success_usd": (
                s.get("cost_usd", 0.0) / s["successes"] if s.get("successes") else None
            ),
            "latency_mean_s": s.get("latency_sum", 0) / ok if ok else None,
            "latency_p50_s": quantile(self.lat, 0.5), "latency_p95_s": quantile(self.lat, 0.95),
            "ttft_p50_s": quantile(self.ttft, 0.5), "ttft_p95_s": quantile(self.ttft, 0.95),
            "tpot_mean_s": s.get("tpot_sum", 0) / s["tpot_n"] if s.get("tpot_n") else None,
        }  # fmt: skip


def quantile(histogram: Sequence[int], q: float) -> float | None:
    """The upper edge of the bucket holding the ``q`` quantile (None: empty)."""
    total = sum(histogram)
    if not total:
        return None
    rank, seen = q * total, 0
    for count, edge in zip(histogram, EDGES, strict=True):
        seen += count
        if seen >= rank:
            return edge if math.isfinite(edge) else EDGES[-2]
    return EDGES[-2]


class Rollups:
    """Reads ``request_rollups``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = Table("request_rollups", MetaData(), autoload_with=engine)

    def rows(self, since_minute: int) -> list[dict[str, Any]]:
        """Every row from ``since_minute`` on."""
        query = select(self.table).where(self.table.c.minute >= since_minute)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def windows(self, now: float, seconds: float) -> dict[str, dict[str, Any]]:
        """Per route, and ``*`` for all, the last ``seconds`` (from the start of the minute
        ``seconds`` ago: whole minutes, the current one as far as it went)."""
        by_route: dict[str, Window] = {"*": Window()}
        for row in self.rows(int((now - seconds) // 60)):
            by_route.setdefault(row["route"], Window()).add(row)
            by_route["*"].add(row)
        return {route: window.view(seconds) for route, window in by_route.items()}

    def series(self, now: float, seconds: float, points: int = 60) -> dict[str, list[Any]]:
        """All routes over the last ``seconds`` in ``points`` steps: time, requests/s,
        errors, output tokens/s, p50/p95 latency and p50 TTFT per step."""
        step = max(60, int(seconds // points) // 60 * 60)
        first = int((now - seconds) // step) * step
        steps: dict[int, Window] = {
            first + i * step: Window() for i in range(int(seconds // step) + 1)
        }
        for row in self.rows(first // 60):
            at = (row["minute"] * 60 - first) // step * step + first
            if at in steps:
                steps[at].add(row)
        names = ("t", "per_s", "error_rate", "tokens_per_s", "latency_p50_s", "latency_p95_s",
                 "ttft_p50_s")  # fmt: skip
        out: dict[str, list[Any]] = {k: [] for k in names}
        for at, window in sorted(steps.items()):
            view = window.view(step)
            out["t"].append(at)
            out["per_s"].append(view["per_s"])
            out["error_rate"].append(view["error_rate"])
            out["tokens_per_s"].append(view["output_tokens_per_s"])
            for name in ("latency_p50_s", "latency_p95_s", "ttft_p50_s"):
                out[name].append(view[name])
        return out
