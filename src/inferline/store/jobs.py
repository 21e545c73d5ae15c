"""Durable state of the Files and Batches API: files, batch jobs and each job's lines.

Every status change is one conditional UPDATE (``WHERE status IN (...)``), so two actors (the
runner and a cancel request) cannot both move a job; a line's result is written once
(``WHERE status_code IS NULL``), so a line finished twice (before and after a crash) is
recorded once. Times are Unix seconds, as in the OpenAI objects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, MetaData, Table, and_, case, func, insert, select, tuple_, update

ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True)
class LineResult:
    """What one executed line produced."""

    status_code: int
    response: dict[str, Any] | None  # the endpoint's JSON body (also for 4xx)
    error: dict[str, Any] | None = None  # {code, message} when the line could not run at all
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0


class JobStore:
    """Reads and writes ``files``, ``batches`` and ``batch_lines`` (created by migrations)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.files = Table("files", metadata, autoload_with=engine)
        self.batches = Table("batches", metadata, autoload_with=engine)
        self.lines = Table("batch_lines", metadata, autoload_with=engine)

    # ---- files -------------------------------------------------------------------------

    def add_file(self, row: dict[str, Any]) -> None:
        """Registers a file whose content is already on disk at ``row["path"]``."""
        with self.engine.begin() as conn:
            conn.execute(insert(self.files).values(**row, deleted=0))

    def get_file(self, file_id: str) -> dict[str, Any] | None:
        """The file's row, or None if unknown or deleted."""
        query = select(self.files).where(self.files.c.id == file_id, self.files.c.deleted == 0)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return dict(row._mapping) if row else None

    def list_files(
        self, purpose: str | None, limit: int, after: str | None
    ) -> list[dict[str, Any]]:
        """Newest first; ``after`` is the id of the last file of the previous page."""
        query = select(self.files).where(self.files.c.deleted == 0)
        if purpose:
            query = query.where(self.files.c.purpose == purpose)
        if after:
            anchor = self.get_file(after)
            if anchor is not None:
                key = tuple_(self.files.c.created_at, self.files.c.id)
                query = query.where(key < tuple_(anchor["created_at"], after))
        query = query.order_by(self.files.c.created_at.desc(), self.files.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def delete_file(self, file_id: str) -> bool:
        """Marks a file deleted; False if it was not there."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(self.files)
                .where(self.files.c.id == file_id, self.files.c.deleted == 0)
                .values(deleted=1)
            )
        return bool(result.rowcount)

    # ---- batches -----------------------------------------------------------------------

    def create_batch(self, row: dict[str, Any]) -> None:
        """Inserts a new job (status ``validating``; lines come with `start_batch`)."""
        values = {**row, "metadata": json.dumps(row.get("metadata"))}
        with self.engine.begin() as conn:
            conn.execute(insert(self.batches).values(**values))

    def get_batch(self, batch_id: str) -> dict[str, Any] | None:
        """The job's row (``metadata`` and ``errors`` decoded), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.batches).where(self.batches.c.id == batch_id)).first()
        return _decoded(dict(row._mapping)) if row else None

    def list_batches(self, limit: int, after: str | None) -> list[dict[str, Any]]:
        """Newest first, paged by the last id seen."""
        query = select(self.batches)
        if after:
            anchor = self.get_batch(after)
            if anchor is not None:
                key = tuple_(self.batches.c.created_at, self.batches.c.id)
                query = query.where(key < tuple_(anchor["created_at"], after))
        order = (self.batches.c.created_at.desc(), self.batches.c.id.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(*order).limit(limit))
            return [_decoded(dict(r._mapping)) for r in rows]

    def active_batch_ids(self) -> list[str]:
        """Jobs not yet in a final status, oldest first (what a restart resumes)."""
        query = (
            select(self.batches.c.id)
            .where(self.batches.c.status.in_(ACTIVE_STATUSES))
            .order_by(self.batches.c.created_at, self.batches.c.id)
        )
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def transition(
        self, batch_id: str, allowed_from: Sequence[str], status: str, **fields: Any
    ) -> bool:
        """Moves a job to ``status`` (stamping ``<status>_at``) if it is in ``allowed_from``."""
        values = {"status": status, f"{status}_at": int(time.time()), **fields}
        if "errors" in values:
            values["errors"] = json.dumps(values["errors"])
        query = (
            update(self.batches)
            .where(self.batches.c.id == batch_id, self.batches.c.status.in_(allowed_from))
            .values(**values)
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(query).rowcount)

    def set_fields(self, batch_id: str, **fields: Any) -> None:
        """Updates fields of a job without changing its status (e.g. result file ids)."""
        with self.engine.begin() as conn:
            conn.execute(update(self.batches).where(self.batches.c.id == batch_id).values(**fields))

    def start_batch(self, batch_id: str, lines: list[tuple[int, str, dict[str, Any]]]) -> bool:
        """Stores the validated lines and moves the job to ``in_progress``, atomically."""
        rows = [
            {"batch_id": batch_id, "line": n, "custom_id": cid, "request": json.dumps(body)}
            for n, cid, body in lines
        ]
        now = int(time.time())
        with self.engine.begin() as conn:
            moved = conn.execute(
                update(self.batches)
                .where(self.batches.c.id == batch_id, self.batches.c.status == "validating")
                .values(status="in_progress", in_progress_at=now)
            ).rowcount
            if moved and rows:
                conn.execute(insert(self.lines), rows)
        return bool(moved)

    # ---- lines -------------------------------------------------------------------------

    def pending_lines(self, batch_id: str, limit: int) -> list[tuple[int, str, dict[str, Any]]]:
        """Lines with no result yet, in file order: (line number, custom_id, request)."""
        c = self.lines.c
        query = (
            select(c.line, c.custom_id, c.request)
            .where(c.batch_id == batch_id, c.status_code.is_(None))
            .order_by(c.line)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(r.line, r.custom_id, json.loads(r.request)) for r in conn.execute(query)]

    def record_line(self, batch_id: str, line: int, result: LineResult) -> bool:
        """Stores a line's result unless it already has one."""
        c = self.lines.c
        query = (
            update(self.lines)
            .where(c.batch_id == batch_id, c.line == line, c.status_code.is_(None))
            .values(
                status_code=result.status_code,
                response=json.dumps(result.response) if result.response is not None else None,
                error=json.dumps(result.error) if result.error is not None else None,
                input_tokens=result.input_tokens,
                cached_tokens=result.cached_tokens,
                output_tokens=result.output_tokens,
                finished_at=time.time(),
            )
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(query).rowcount)

    def counts(self, batch_id: str) -> dict[str, int]:
        """``request_counts`` and token totals of a job."""
        c = self.lines.c
        done = and_(c.status_code.is_not(None), c.error.is_(None), c.status_code < 400)
        query = select(
            func.count(),
            func.count(c.status_code),
            func.sum(case((done, 1), else_=0)),
            func.coalesce(func.sum(c.input_tokens), 0),
            func.coalesce(func.sum(c.cached_tokens), 0),
            func.coalesce(func.sum(c.output_tokens), 0),
        ).where(c.batch_id == batch_id)
        with self.engine.connect() as conn:
            total, finished, completed, inputs, cached, outputs = conn.execute(query).one()
        completed = int(completed or 0)
        return {
            "total": int(total),
            "completed": completed,
            "failed": int(finished) - completed,
            "input_tokens": int(inputs),
            "cached_tokens": int(cached),
            "output_tokens": int(outputs),
        }

    def finished_lines(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """Every line with a result, in file order (for the output and error files)."""
        c = self.lines.c
        query = (
            select(c.line, c.custom_id, c.status_code, c.response, c.error)
            .where(c.batch_id == batch_id, c.status_code.is_not(None))
            .order_by(c.line)
        )
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                yield {
                    "line": r.line,
                    "custom_id": r.custom_id,
                    "status_code": r.status_code,
                    "response": json.loads(r.response) if r.response else None,
                    "error": json.loads(r.error) if r.error else None,
                }

    def unfinished_lines(self, batch_id: str) -> list[tuple[int, str]]:
        """(line, custom_id) of lines with no result (the error file of a cancelled job)."""
        c = self.lines.c
        query = (
            select(c.line, c.custom_id)
            .where(c.batch_id == batch_id, c.status_code.is_(None))
            .order_by(c.line)
        )
        with self.engine.connect() as conn:
            return [(int(r.line), str(r.custom_id)) for r in conn.execute(query)]


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("metadata", "errors"):
        if row.get(key):
            row[key] = json.loads(row[key])
    return row
