"""What the routes' checks decided, measured: per route, check and decision, how many
requests, their cost and latency; per review check, what reviewers said (how often holding
the answer was right: a rejected or edited draft was worth holding, an approved one was not).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, MetaData, Table, select

from inferline.store.reviews import ReviewStore


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def decision_stats(
    engine: Engine, *, since: float | None = None, route: str | None = None
) -> dict[str, Any]:
    """Counts, cost and latency per (route, check, decision), and review verdicts."""
    requests = Table("requests", MetaData(), autoload_with=engine)
    c = requests.c
    query = select(c.route, c.decision_check, c.decision, c.cost_usd, c.total_time_s).where(
        c.decision.is_not(None)
    )
    if since is not None:
        query = query.where(c.created_at >= since)
    if route is not None:
        query = query.where(c.route == route)
    groups: dict[tuple[str, str, str], list[tuple[float, float | None]]] = {}
    with engine.connect() as conn:
        for row_route, check, decision, cost, took in conn.execute(query):
            key = (row_route or "", check or "", decision)
            groups.setdefault(key, []).append((float(cost or 0.0), took))
    data = []
    for (row_route, check, decision), rows in sorted(groups.items()):
        costs = [cost for cost, _ in rows]
        times = [took for _, took in rows if took is not None]
        data.append({"route": row_route, "check": check or None, "decision": decision,
                     "requests": len(rows), "cost_usd": sum(costs),
                     "cost_per_request_usd": sum(costs) / len(rows),
                     "latency_p50_s": _percentile(times, 0.5),
                     "latency_p95_s": _percentile(times, 0.95)})  # fmt: skip
    return {"object": "check_stats", "decisions": data, "reviews": _verdicts(engine, since, route)}


def _verdicts(engine: Engine, since: float | None, route: str | None) -> list[dict[str, Any]]:
    verdicts = []
    for name, counts in sorted(ReviewStore(engine).counts(since).items()):
        review_route, _, check = name.partition("/")
        if route is not None and review_route != route:
            continue
        decided = sum(counts.get(s, 0) for s in ("approved", "edited", "rejected"))
        caught = counts.get("edited", 0) + counts.get("rejected", 0)
        verdicts.append({"route": review_route, "check": check, **counts,
                         "held_rightly": caught / decided if decided else None})  # fmt: skip
    return verdicts
