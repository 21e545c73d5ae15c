"""Tasks: the requests that serve one job (an agent run, a document through a pipeline),
grouped by their ``task_id``, with the outcome a client reports (migration ``m010``).

Tool latency is the time between the end of an answer that asked for tool calls and the
start of the request that first brings their results (matched by ``tool_call_id``; later
requests resend them with the conversation): the time the caller spent in its tools, told
apart from the time the model took. Cost per successful
task divides everything the tasks cost (every attempt: retries, fallbacks, failures; cache
hits at zero) by the tasks that succeeded.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, MetaData, Table, delete, insert, select

_STEP_COLUMNS = (
    "request_id", "created_at", "total_time_s", "route", "status_code", "prompt_tokens",
    "completion_tokens", "num_attempts", "cost_usd", "tool_calls", "tool_results", "task_id",
)  # fmt: skip


class TaskStore:
    """Reads tasks from ``requests`` and writes their outcomes to ``task_outcomes``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata = MetaData()
        self.requests = Table("requests", metadata, autoload_with=engine)
        self.outcomes = Table("task_outcomes", metadata, autoload_with=engine)

    def set_outcome(
        self,
        task_id: str,
        success: bool,
        *,
        score: float | None = None,
        comment: str | None = None,
        source: str = "api",
        key_id: str | None = None,
    ) -> dict[str, Any]:
        """Records (or replaces) a task's outcome."""
        row = {"task_id": task_id, "success": success, "score": score, "comment": comment,
               "source": source, "key_id": key_id, "recorded_at": time.time()}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(delete(self.outcomes).where(self.outcomes.c.task_id == task_id))
            conn.execute(insert(self.outcomes).values(**row))
        return row

    def task(self, task_id: str, key_id: str | None = None) -> dict[str, Any] | None:
        """One task's steps and totals (None when no request names it; ``key_id``: only
        that key's requests)."""
        c = self.requests.c
        query = select(*(c[name] for name in _STEP_COLUMNS)).where(c.task_id == task_id)
        if key_id is not None:
            query = query.where(c.key_id == key_id)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query.order_by(c.created_at))]
            outcome = conn.execute(
                select(self.outcomes).where(self.outcomes.c.task_id == task_id)
            ).first()
        if not rows:
            return None
        return summarize(task_id, rows, dict(outcome._mapping) if outcome else None)

    def stats(
        self, *, since: float | None = None, route: str | None = None, key_id: str | None = None
    ) -> dict[str, Any]:
        """Tasks that started since ``since`` (and used ``route``): counts, success rate,
        cost per successful task, latency percentiles, the share of time in tools."""
        tasks = self._tasks(since, key_id)
        return aggregate([t for t in tasks if route is None or route in t["routes"]])

    def stats_by_route(self, *, since: float | None = None) -> dict[str, dict[str, Any]]:
        """`stats` for every route a task used (a task counts under each of its routes),
        read in one pass."""
        tasks = self._tasks(since, None)
        routes = sorted({r for t in tasks for r in t["routes"]})
        return {route: aggregate([t for t in tasks if route in t["routes"]]) for route in routes}

    def _tasks(self, since: float | None, key_id: str | None) -> list[dict[str, Any]]:
        """The summarized tasks that started since ``since``, each with the routes it used."""
        c = self.requests.c
        query = select(*(c[name] for name in _STEP_COLUMNS)).where(c.task_id.is_not(None))
        if since is not None:
            query = query.where(c.created_at >= since)
        if key_id is not None:
            query = query.where(c.key_id == key_id)
        grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with self.engine.connect() as conn:
            for row in conn.execute(query.order_by(c.created_at)):
                grouped[row.task_id].append(dict(row._mapping))
            outcomes = {
                r.task_id: dict(r._mapping)
                for r in conn.execute(
                    select(self.outcomes).where(self.outcomes.c.task_id.in_(list(grouped)))
                )
            }
        return [
            {**summarize(task_id, rows, outcomes.get(task_id)),
             "routes": {r["route"] for r in rows if r["route"]}}
            for task_id, rows in grouped.items()
        ]  # fmt: skip


def _ids(text: str | None, key: str | None = None) -> list[str]:
    items = json.loads(text) if text else []
    return [item[key] if key else item for item in items]


def summarize(
    task_id: str, rows: list[dict[str, Any]], outcome: dict[str, Any] | None
) -> dict[str, Any]:
    """A task from its requests (oldest first): each step, its tool waits, the totals."""
    asked_at: dict[str, float] = {}  # tool_call_id -> end of the answer that asked for it
    steps = []
    for row in rows:
        start = row["created_at"]
        end = start + (row["total_time_s"] or 0.0)
        # a conversation resends its earlier tool results: only a first one is a wait
        new = [i for i in _ids(row["tool_results"]) if i in asked_at]
        waits = [start - asked_at.pop(i) for i in new]
        steps.append({
            "request_id": row["request_id"], "started_at": start, "ended_at": end,
            "route": row["route"], "status_code": row["status_code"],
            "context_tokens": row["prompt_tokens"], "output_tokens": row["completion_tokens"],
            "attempts": row["num_attempts"], "retries": max(0, row["num_attempts"] - 1),
            "cost_usd": row["cost_usd"], "tool_calls": _ids(row["tool_calls"], "id"),
            "tool_wait_s": max(waits) if waits else None,
        })  # fmt: skip
        for call_id in _ids(row["tool_calls"], "id"):
            asked_at[call_id] = end
    tool_s = sum(s["tool_wait_s"] or 0.0 for s in steps)
    latency = max(s["ended_at"] for s in steps) - steps[0]["started_at"]
    return {
        "id": task_id,
        "object": "task",
        "outcome": outcome,
        "steps": steps,
        "num_requests": len(steps),
        "retries": sum(s["retries"] for s in steps),
        "cost_usd": sum(s["cost_usd"] for s in steps),
        "latency_s": latency,
        "tool_s": tool_s,
        "model_s": sum(s["ended_at"] - s["started_at"] for s in steps),
    }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def aggregate(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and rates over summarized tasks (success rate over tasks with an outcome)."""
    judged = [t for t in tasks if t["outcome"] is not None]
    succeeded = [t for t in judged if t["outcome"]["success"]]
    cost = sum(t["cost_usd"] for t in tasks)
    latencies = [t["latency_s"] for t in tasks]
    total_time = sum(latencies)
    return {
        "object": "task.stats",
        "tasks": len(tasks),
        "with_outcome": len(judged),
        "succeeded": len(succeeded),
        "success_rate": len(succeeded) / len(judged) if judged else None,
        "cost_usd": cost,
        "cost_per_successful_task_usd": cost / len(succeeded) if succeeded else None,
        "latency_p50_s": _percentile(latencies, 0.5),
        "latency_p95_s": _percentile(latencies, 0.95),
        "tool_time_share": sum(t["tool_s"] for t in tasks) / total_time if total_time else None,
    }
