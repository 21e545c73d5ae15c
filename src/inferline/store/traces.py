"""Reading traces: a request's log row joined with its attempts, filtered and paged.

A trace is the ``requests`` row (written by `RequestLogWriter`) and its ``request_attempts``
rows; `TraceStore` reads them for ``GET /v1/traces`` and ``inferline traces``. Pages run
newest first and continue from the last row's ``id`` (keyset paging: the same cost on
page 1,000 as on page 1).

A page is read in two steps: the ids of the page (through an index, or newest first by id),
then those rows. SQLite sorts only ids when no index walks in id order, not whole rows with
their text (a route with 400,000 of 1,000,000 rows, through its (route, created_at) index:
2.3 s for whole rows, 56 ms for ids; m011's (route, id) index then needs no sort: 1 ms).
SQLite keeps no statistics, so it cannot tell a range that few rows pass (errors of the
last ten minutes) from one most rows pass, and reads both newest first by id, which scans
the whole table when fewer than a page match. On SQLite a range filter (time window,
``status=error``, ``min_latency_s``) that at most `NARROW_ROWS` rows pass, as a capped count
through its index shows, is marked as selective with ``likelihood()``, so SQLite reads it
through its index.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Select,
    Table,
    func,
    literal,
    literal_column,
    or_,
    select,
)

from inferline.core.errors import InvalidParameterError

MAX_PAGE = 500
NARROW_ROWS = 20_000  # a range that at most this many rows pass is read through its index


@dataclass(frozen=True)
class TraceFilter:
    """What ``GET /v1/traces`` can ask for (every field optional; times are epoch seconds).

    ``status``: an HTTP status code, or ``error`` for any status >= 400. ``text``: a
    substring of the logged prompt or output (only when text is logged; a scan, so pair it
    with a time range on large logs).
    """

    since: float | None = None
    until: float | None = None
    route: str | None = None
    model: str | None = None
    key_id: str | None = None
    team: str | None = None
    task_id: str | None = None
    trace_id: str | None = None
    prompt_id: str | None = None
    prompt_version: int | None = None
    decision: str | None = None
    status: int | str | None = None
    min_latency_s: float | None = None
    text: str | None = None
    limit: int = 50
    before_id: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE:
            raise InvalidParameterError(f"limit must be in [1, {MAX_PAGE}]", "limit")
        if isinstance(self.status, str) and self.status != "error":
            raise InvalidParameterError("status must be a status code or 'error'", "status")


_EQUAL = ("route", "model", "key_id", "team", "task_id", "trace_id", "prompt_id", "decision")


def parse_status(value: str | None) -> int | str | None:
    """A ``status`` filter as given: a status code, ``error``, or None (400 otherwise)."""
    if value is None or value == "error":
        return value
    if not value.isdecimal():
        raise InvalidParameterError("status must be a status code or 'error'", "status")
    return int(value)


class TraceStore:
    """Queries over the request log's traces."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.requests = Table("requests", metadata, autoload_with=engine)
        self.attempts = Table("request_attempts", metadata, autoload_with=engine)
        self.reviews: Table | None = None  # read when a trace names a review case

    def list(self, where: TraceFilter) -> tuple[list[dict[str, Any]], bool]:
        """One page of traces (without attempts), newest first, and whether more follow."""
        c = self.requests.c
        with self.engine.connect() as conn:
            ids = self._filtered(select(c.id), where, self._selective(conn, where))
            ids = ids.order_by(c.id.desc()).limit(where.limit + 1)
            query = select(self.requests).where(c.id.in_(ids)).order_by(c.id.desc())
            rows = [dict(row._mapping) for row in conn.execute(query)]
        return [trace_view(row) for row in rows[: where.limit]], len(rows) > where.limit

    def matching(self, where: TraceFilter, at_most: int) -> builtins.list[dict[str, Any]]:
        """Up to ``at_most`` traces ``where`` selects (its ``limit`` and ``before_id`` are
        the pages'), newest first, read page by page."""
        found: builtins.list[dict[str, Any]] = []
        before = where.before_id
        while len(found) < at_most:
            size = min(MAX_PAGE, at_most - len(found))
            page, more = self.list(dataclasses.replace(where, limit=size, before_id=before))
            found.extend(page)
            if not more or not page:
                break
            before = page[-1]["cursor"]
        return found

    def get(self, request_id: str) -> dict[str, Any] | None:
        """One trace with its attempts, or None."""
        c = self.requests.c
        query = select(self.requests).where(c.request_id == request_id).limit(1)
        a = self.attempts.c
        tried = select(self.attempts).where(a.request_id == request_id).order_by(a.attempt)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
            if row is None:
                return None
            attempts = [dict(r._mapping) for r in conn.execute(tried)]
            review = self._review(conn, row._mapping["review_id"])
        view = trace_view(dict(row._mapping), attempts)
        if review is not None:
            view["decision"]["review"] = review
        return view

    def _review(self, conn: Connection, review_id: str | None) -> dict[str, Any] | None:
        """What became of the request's review case: status, verdict, who, when."""
        if review_id is None:
            return None
        if self.reviews is None:
            self.reviews = Table("reviews", MetaData(), autoload_with=self.engine)
        r = self.reviews.c
        query = select(r.status, r.reviewer, r.comment, r.decided_at).where(r.id == review_id)
        found = conn.execute(query).first()
        return dict(found._mapping) if found is not None else None

    def _filtered(
        self, query: Select[Any], where: TraceFilter, selective: str | None = None
    ) -> Select[Any]:
        """``query`` with the filter's conditions; those of the range named ``selective``
        (see `_ranges`) are marked as passed by few rows."""
        c = self.requests.c
        for name in _EQUAL:
            value = getattr(where, name)
            if value is not None:
                query = query.where(c[name] == value)
        if where.prompt_version is not None:
            query = query.where(c.prompt_version == where.prompt_version)
        if isinstance(where.status, int):
            query = query.where(c.status_code == where.status)
        for name, conditions in self._ranges(where).items():
            for condition in conditions:
                query = query.where(_likely_rare(condition) if name == selective else condition)
        if where.before_id is not None:
            query = query.where(c.id < where.before_id)
        if where.text:
            pattern = "%" + _escape_like(where.text) + "%"
            query = query.where(
                or_(c.prompt.like(pattern, escape="\\"), c.output.like(pattern, escape="\\"))
            )
        return query

    def _ranges(self, where: TraceFilter) -> dict[str, Sequence[ColumnElement[bool]]]:
        """The filter's range conditions, by the column an index can read them through."""
        c = self.requests.c
        ranges: dict[str, Sequence[ColumnElement[bool]]] = {}
        window = []
        if where.since is not None:
            window.append(c.created_at >= where.since)
        if where.until is not None:
            window.append(c.created_at < where.until)
        if window:
            ranges["created_at"] = window
        if where.status == "error":
            ranges["status_code"] = [c.status_code >= 400]
        if where.min_latency_s is not None:
            ranges["total_time_s"] = [c.total_time_s >= where.min_latency_s]
        return ranges

    def _selective(self, conn: Connection, where: TraceFilter) -> str | None:
        """On SQLite, the indexed range the fewest rows pass if at most `NARROW_ROWS` do
        (counted through its index, never past that); else a time window with an upper
        bound, whatever its size (newest first by id, every newer row would come first)."""
        if self.engine.dialect.name != "sqlite":
            return None
        indexed = {ix.columns[0].name for ix in self.requests.indexes if ix.columns}
        ranges = {name: c for name, c in self._ranges(where).items() if name in indexed}
        best, fewest = None, NARROW_ROWS
        for name, conditions in ranges.items():
            capped = select(literal(1)).where(*conditions).limit(NARROW_ROWS).subquery()
            count = conn.scalar(select(func.count()).select_from(capped)) or 0
            if count < fewest:
                best, fewest = name, count
        if best is None and "created_at" in ranges and where.until is not None:
            return "created_at"
        return best


def _likely_rare(condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """``condition`` marked for SQLite's planner as passed by one row in a million."""
    return func.likelihood(condition, literal_column("0.000001"))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def trace_view(row: dict[str, Any], attempts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A log row (and its attempts) as the traces API returns it."""
    prompt = None
    if row.get("prompt_id") is not None:
        prompt = {"id": row["prompt_id"], "version": row["prompt_version"],
                  "label": row["prompt_label"]}  # fmt: skip
    view: dict[str, Any] = {
        "id": row["request_id"],
        "object": "trace",
        "cursor": row["id"],
        "created_at": row["created_at"],
        "trace_id": row["trace_id"],
        "span_id": row["span_id"],
        "parent_span_id": row["parent_span_id"],
        "endpoint": row["endpoint"],
        "model": row["model"],
        "route": row["route"],
        "target": row["target"],
        "status_code": row["status_code"],
        "error": row["error"],
        "finish_reason": row["finish_reason"],
        "stopped_by": row["stopped_by"],
        "key_id": row["key_id"],
        "team": row["team"],
        "user": row["user_id"],
        "task_id": row["task_id"],
        "metadata": _json(row["metadata"]) or {},
        "prompt": prompt,
        "cache": row["cache"],
        "num_attempts": row["num_attempts"],
        "fallback_reason": row["fallback_reason"],
        "timings": {
            "total_s": row["total_time_s"],
            "queue_s": row["queue_time_s"],
            "ttft_s": row["ttft_s"],
            "prefill_s": row["prefill_s"],
            "decode_s": row["decode_s"],
            "tpot_s": row["tpot_s"],
        },
        "usage": {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
            "cached_tokens": row["cached_tokens"],
        },
        "cost_usd": row["cost_usd"],
        "preemptions": row["preemptions"],
        "tool_calls": _json(row["tool_calls"]) or [],
        "tool_results": _json(row["tool_results"]) or [],
        "input": row["prompt"],
        "output": row["output"],
        "request": _json(row.get("request_body")),
        "decision": _decision_view(row),
    }
    if attempts is not None:
        view["attempts"] = [_attempt_view(a) for a in attempts]
    return view


def _decision_view(row: dict[str, Any]) -> dict[str, Any] | None:
    """What the route's checks decided, every check's outcome, the answer they withheld."""
    if row.get("decision") is None:
        return None
    checks = _json(row["checks"]) or {}
    return {"decision": row["decision"], "check": row["decision_check"],
            "score": row["decision_score"], "review_id": row["review_id"],
            "checks": checks.get("outcomes", []), "withheld": checks.get("withheld")}  # fmt: skip


def _attempt_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: row[key]
        for key in (
            "attempt", "target", "reason", "status", "error_type", "error", "started_at",
            "ttft_s", "duration_s", "prompt_tokens", "completion_tokens", "cached_tokens",
            "engine_s", "cost_usd",
        )
    }  # fmt: skip
