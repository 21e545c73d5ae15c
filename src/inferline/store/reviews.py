"""Human-review cases (migration ``m012``): written before the client hears
``pending_review``, decided once (every change is a conditional UPDATE on ``status``, so
two reviewers, or a reviewer and the expiry, cannot both decide a case), and each decision
queued for the route's webhook until it is delivered."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, MetaData, Table, func, insert, select, update

_JSON_FIELDS = ("request", "draft", "checks", "texts", "result")
STATUSES = ("pending", "approved", "edited", "rejected", "expired")


class ReviewStore:
    """Reads and writes ``reviews``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = Table("reviews", MetaData(), autoload_with=engine)

    def create(self, case: dict[str, Any]) -> dict[str, Any]:
        """Writes a new pending case (``case`` holds every column but the decision's)."""
        row = {**case, "status": "pending", "webhook_due": False, "webhook_attempts": 0}
        with self.engine.begin() as conn:
            conn.execute(insert(self.table).values(**_encoded(row)))
        return row

    def get(self, review_id: str) -> dict[str, Any] | None:
        """One case, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.table).where(self.table.c.id == review_id)).first()
        return _decoded(row._asdict()) if row else None

    def find(
        self,
        *,
        status: str | None = None,
        route: str | None = None,
        limit: int = 50,
        before: float | None = None,
    ) -> list[dict[str, Any]]:
        """Cases newest first (pending ones oldest first: the queue's order)."""
        c = self.table.c
        query = select(self.table)
        if status is not None:
            query = query.where(c.status == status)
        if route is not None:
            query = query.where(c.route == route)
        if status == "pending":
            query = query.order_by(c.deadline_at, c.id)
        else:
            if before is not None:
                query = query.where(c.created_at < before)
            query = query.order_by(c.created_at.desc(), c.id.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit)).all()
        return [_decoded(r._asdict()) for r in rows]

    def decide(
        self,
        review_id: str,
        status: str,
        result: dict[str, Any],
        *,
        reviewer: str | None,
        comment: str | None = None,
        now: float | None = None,
    ) -> dict[str, Any] | None:
        """Decides a pending case (queueing its webhook); None if it is not pending."""
        now = time.time() if now is None else now
        c = self.table.c
        values = {"status": status, "result": json.dumps(result), "reviewer": reviewer,
                  "comment": comment, "decided_at": now, "webhook_due": True,
                  "webhook_next_at": now}  # fmt: skip
        with self.engine.begin() as conn:
            done = conn.execute(
                update(self.table).where(c.id == review_id, c.status == "pending").values(**values)
            )
        return self.get(review_id) if done.rowcount else None

    def overdue(self, now: float, limit: int = 100) -> list[dict[str, Any]]:
        """Pending cases whose deadline has passed, oldest deadline first."""
        c = self.table.c
        query = (
            select(self.table)
            .where(c.status == "pending", c.deadline_at <= now)
            .order_by(c.deadline_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_decoded(r._asdict()) for r in conn.execute(query).all()]

    def webhooks_due(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        """Decided cases whose webhook is owed and due now."""
        c = self.table.c
        query = (
            select(self.table)
            .where(c.webhook_due.is_(True), c.webhook_next_at <= now)
            .order_by(c.webhook_next_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_decoded(r._asdict()) for r in conn.execute(query).all()]

    def claim_webhook(self, review_id: str, seen_next_at: float, until: float) -> bool:
        """Takes a due delivery for this process until ``until`` (a conditional UPDATE on
        the ``webhook_next_at`` it was read with): of several gateway replicas passing at
        once, one posts it; if that one dies, the delivery is due again at ``until``."""
        c = self.table.c
        query = (
            update(self.table)
            .where(c.id == review_id, c.webhook_due.is_(True), c.webhook_next_at == seen_next_at)
            .values(webhook_next_at=until)
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(query).rowcount)

    def webhook_sent(
        self, review_id: str, *, error: str | None = None, next_at: float | None = None
    ) -> None:
        """Records a delivery: done when ``error`` is None, else tried again at ``next_at``
        (None: given up)."""
        c = self.table.c
        again = error is not None and next_at is not None
        values: dict[str, Any] = {"webhook_attempts": c.webhook_attempts + 1,
                                  "webhook_error": error, "webhook_next_at": next_at,
                                  "webhook_due": again}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(update(self.table).where(c.id == review_id).values(**values))

    def decided_by_people(self, since: float, limit: int = 500) -> list[dict[str, Any]]:
        """Cases a reviewer decided at or after ``since`` (not expired ones), oldest
        decision first."""
        c = self.table.c
        query = (
            select(self.table)
            .where(c.status.in_(("approved", "edited", "rejected")), c.decided_at >= since)
            .order_by(c.decided_at, c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_decoded(r._asdict()) for r in conn.execute(query).all()]

    def counts(self, since: float | None = None) -> dict[str, dict[str, int]]:
        """Cases per check and status (how often review fired, and what reviewers said)."""
        c = self.table.c
        query = select(c.route, c.check_name, c.status, func.count()).group_by(
            c.route, c.check_name, c.status
        )
        if since is not None:
            query = query.where(c.created_at >= since)
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for route, check, status, count in conn.execute(query).all():
                out.setdefault(f"{route}/{check}", {})[status] = int(count)
        return out


def _encoded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in _JSON_FIELDS and v is not None else v for k, v in row.items()}


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if k in _JSON_FIELDS and v else v for k, v in row.items()}
