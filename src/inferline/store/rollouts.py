"""Rollouts (migration ``m015``): their state, the scored answers of both arms, and the
decisions as events. A decision is a conditional UPDATE on ``state = 'running'`` written
with its event in one transaction, so two server processes cannot both decide one
rollout, and a decision is never without its evidence."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, MetaData, Table, insert, select, update

_SAMPLE_COLUMNS = ("arm", "status_code", "latency_s", "passed")


class RolloutStore:
    """Reads and writes ``rollouts``, ``rollout_samples`` and ``rollout_events``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.rollouts = Table("rollouts", metadata, autoload_with=engine)
        self.samples = Table("rollout_samples", metadata, autoload_with=engine)
        self.events = Table("rollout_events", metadata, autoload_with=engine)

    def ensure(self, row: dict[str, Any], evidence: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The rollout named ``row["name"]``, created running (with a ``started`` event)
        when there is none; (its row, whether it was created now)."""
        existing = self.get(row["name"])
        if existing is not None:
            return existing, False
        values = {**row, "config": json.dumps(row["config"]), "state": "running",
                  "created_at": time.time(), "decided_at": None}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(insert(self.rollouts).values(**values))
            conn.execute(insert(self.events).values(
                rollout=row["name"], at=time.time(), kind="started",
                reason=f"{row['candidate']} to {row['share']:.0%} of {row['subject']}",
                evidence=json.dumps(evidence)))  # fmt: skip
        found = self.get(row["name"])
        assert found is not None
        return found, True

    def get(self, name: str) -> dict[str, Any] | None:
        """One rollout, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.rollouts).where(self.rollouts.c.name == name)).first()
        return {**row._asdict(), "config": json.loads(row.config)} if row else None

    def all(self) -> list[dict[str, Any]]:
        """Every rollout, newest first."""
        query = select(self.rollouts).order_by(self.rollouts.c.created_at.desc())
        with self.engine.connect() as conn:
            return [{**r._asdict(), "config": json.loads(r.config)} for r in conn.execute(query)]

    def add_sample(self, rollout: str, sample: dict[str, Any]) -> None:
        """Records one answer of one arm."""
        values = {"rollout": rollout, "at": time.time(), "request_id": sample.get("request_id"),
                  "scores": json.dumps(sample.get("scores") or {}),
                  **{k: sample.get(k) for k in _SAMPLE_COLUMNS}}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(insert(self.samples).values(**values))

    def counts(self, rollout: str) -> dict[str, dict[str, Any]]:
        """Per arm: answers, passes, fails (scored ones), errors (status >= 400), and
        latencies of the successful ones."""
        s = self.samples.c
        out: dict[str, dict[str, Any]] = {
            arm: {"n": 0, "passes": 0, "fails": 0, "errors": 0, "latencies": []}
            for arm in ("baseline", "candidate")
        }
        query = select(s.arm, s.status_code, s.passed, s.latency_s).where(s.rollout == rollout)
        with self.engine.connect() as conn:
            for arm, status, passed, latency in conn.execute(query):
                entry = out[arm]
                entry["n"] += 1
                if status >= 400:
                    entry["errors"] += 1
                    continue
                entry["passes" if passed else "fails"] += passed is not None
                if latency is not None:
                    entry["latencies"].append(latency)
        return out

    def decide(self, name: str, state: str, reason: str, evidence: dict[str, Any]) -> bool:
        """Moves a running rollout to ``state`` with its event; False when it was not
        running (decided already, here or by another process)."""
        r = self.rollouts.c
        now = time.time()
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(self.rollouts)
                .where(r.name == name, r.state == "running")
                .values(state=state, decided_at=now)
            )
            if moved.rowcount != 1:
                return False
            conn.execute(insert(self.events).values(
                rollout=name, at=now, kind=state, reason=reason,
                evidence=json.dumps(evidence)))  # fmt: skip
        return True

    def event(self, name: str, kind: str, reason: str, evidence: dict[str, Any]) -> None:
        """Records an event that changes no state (an SLO warning, a label repaired)."""
        with self.engine.begin() as conn:
            conn.execute(insert(self.events).values(
                rollout=name, at=time.time(), kind=kind, reason=reason,
                evidence=json.dumps(evidence)))  # fmt: skip

    def events_of(self, name: str) -> list[dict[str, Any]]:
        """A rollout's events, oldest first."""
        e = self.events.c
        query = select(self.events).where(e.rollout == name).order_by(e.at, e.id)
        with self.engine.connect() as conn:
            return [
                {**r._asdict(), "evidence": json.loads(r.evidence)} for r in conn.execute(query)
            ]
