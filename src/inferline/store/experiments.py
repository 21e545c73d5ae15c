"""Experiments and their results (migration ``m014``), and judge calibrations.

A result row is written once, when its item has been answered and scored; the unique
index on (experiment, target, item, repetition) makes a second write of the same row a
no-op, so a run resumed after a crash scores no item twice.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import Engine, MetaData, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from inferline.core.errors import NotFoundError


class ExperimentStore:
    """Reads and writes ``experiments``, ``experiment_results`` and ``judge_calibrations``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.experiments = Table("experiments", metadata, autoload_with=engine)
        self.results = Table("experiment_results", metadata, autoload_with=engine)
        self.calibrations = Table("judge_calibrations", metadata, autoload_with=engine)

    def create(self, row: dict[str, Any]) -> dict[str, Any]:
        """Writes a new running experiment (``config`` is a dict)."""
        values = {**row, "status": "running", "created_at": time.time(), "finished_at": None,
                  "config": json.dumps(row["config"])}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(insert(self.experiments).values(**values))
        return self.get(row["id"])

    def get(self, experiment_id: str) -> dict[str, Any]:
        """One experiment (404 when there is none)."""
        e = self.experiments.c
        with self.engine.connect() as conn:
            row = conn.execute(select(self.experiments).where(e.id == experiment_id)).first()
        if row is None:
            raise NotFoundError(f"no experiment {experiment_id!r}", "experiment")
        return {**row._asdict(), "config": json.loads(row.config)}

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """Experiments newest first."""
        e = self.experiments.c
        query = select(self.experiments).order_by(e.created_at.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{**r._asdict(), "config": json.loads(r.config)} for r in rows]

    def set_status(self, experiment_id: str, status: str) -> None:
        """Marks it running, done or failed."""
        finished = time.time() if status != "running" else None
        e = self.experiments.c
        with self.engine.begin() as conn:
            conn.execute(
                update(self.experiments)
                .where(e.id == experiment_id)
                .values(status=status, finished_at=finished)
            )

    def add_result(self, row: dict[str, Any]) -> bool:
        """Writes one result; False (nothing written) when the row exists already."""
        values = {**row, "created_at": time.time(), "scores": json.dumps(row["scores"])}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(self.results).values(**values))
        except IntegrityError:
            return False
        return True

    def done(self, experiment_id: str, *, errors_too: bool = True) -> set[tuple[str, str, int]]:
        """(target, item, repetition) of the rows written (without failed requests' rows
        when not ``errors_too``)."""
        r = self.results.c
        query = select(r.target, r.item_key, r.repetition).where(r.experiment_id == experiment_id)
        if not errors_too:
            query = query.where(r.status_code == 200)
        with self.engine.connect() as conn:
            return {(t, k, int(n)) for t, k, n in conn.execute(query).all()}

    def forget_errors(self, experiment_id: str) -> int:
        """Deletes the rows of failed requests (to run them again); how many."""
        r = self.results.c
        with self.engine.begin() as conn:
            gone = conn.execute(
                delete(self.results).where(r.experiment_id == experiment_id, r.status_code != 200)
            )
        return int(gone.rowcount)

    def rows(self, experiment_id: str) -> list[dict[str, Any]]:
        """Every result row, in the order written."""
        r = self.results.c
        query = select(self.results).where(r.experiment_id == experiment_id).order_by(r.id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{**row._asdict(), "scores": json.loads(row.scores)} for row in rows]

    def add_calibration(self, row: dict[str, Any]) -> dict[str, Any]:
        """Stores a judge's calibration (``details`` is a dict)."""
        values = {**row, "created_at": time.time(), "details": json.dumps(row["details"])}
        with self.engine.begin() as conn:
            done = conn.execute(insert(self.calibrations).values(**values))
        key = done.inserted_primary_key
        return {**values, "id": key[0] if key else None, "details": row["details"]}

    def calibrations_of(self, judge: str) -> list[dict[str, Any]]:
        """A judge's calibrations, newest first."""
        c = self.calibrations.c
        query = select(self.calibrations).where(c.judge == judge).order_by(c.created_at.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{**r._asdict(), "details": json.loads(r.details)} for r in rows]
