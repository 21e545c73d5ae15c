"""Keeping the request log bounded: rows older than a maximum age, and the oldest beyond a
maximum count, are deleted with their attempts, in batches (each its own short
transaction, so writers wait at most one batch). Spend ledgers, keys, prompts, jobs and
task outcomes are never pruned here."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Engine, MetaData, Table, delete, func, select

BATCH_ROWS = 5000


@dataclass(frozen=True)
class Pruned:
    """What one pruning pass deleted."""

    requests: int = 0
    attempts: int = 0


def prune_log(
    engine: Engine,
    *,
    max_age_s: float | None = None,
    max_rows: int | None = None,
    now: float | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Pruned:
    """Deletes requests older than ``max_age_s`` and the oldest beyond ``max_rows``."""
    metadata = MetaData()
    requests = Table("requests", metadata, autoload_with=engine)
    attempts = Table("request_attempts", metadata, autoload_with=engine)
    r = requests.c
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(r.id))).scalar()
        oldest = conn.execute(select(func.min(r.id))).scalar()
        cutoff_id = 0
        if max_age_s is not None:
            cutoff = (now if now is not None else time.time()) - max_age_s
            aged = select(func.max(r.id)).where(r.created_at < cutoff)
            cutoff_id = conn.execute(aged).scalar() or 0
    if newest is None:
        return Pruned()
    if max_rows is not None:
        cutoff_id = max(cutoff_id, newest - max_rows)
    total = Pruned()
    start = oldest or 0
    while start <= cutoff_id:
        end = min(cutoff_id, start + batch_rows - 1)
        in_range = (r.id >= start) & (r.id <= end)
        ids = select(r.request_id).where(in_range)
        with engine.begin() as conn:
            gone_attempts = conn.execute(delete(attempts).where(attempts.c.request_id.in_(ids)))
            gone = conn.execute(delete(requests).where(in_range))
        total = Pruned(total.requests + gone.rowcount, total.attempts + gone_attempts.rowcount)
        start = end + 1
    return total
