"""Pages that read: traces (the traces API's filters; a trace as a timeline; a task's
steps and tool waits), prompts
(versions, diffs, labels — moving one, after a confirmation, is the rollback — and each
version's requests, latency, cost and prefix-cache hits), evals (experiments side by
side, rollouts and their decisions) and keys with their spend (admin)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from inferline.core.errors import InferlineError, NotFoundError
from inferline.dashboard.app import require, require_post, state_of
from inferline.dashboard.render import page
from inferline.dashboard.timeline import timeline
from inferline.store.traces import TraceFilter, parse_status

router = APIRouter(include_in_schema=False)
_FILTERS = ("route", "model", "key_id", "team", "task_id", "decision", "text")
_SINCE = {"5m": 300, "1h": 3600, "24h": 86400, "7d": 7 * 86400}


@router.get("/ui/traces")
def traces(request: Request) -> Response:
    """Traces newest first, filtered like ``GET /v1/traces``, 50 a page."""
    session = require(request, "viewer")
    store = state_of(request).traces
    query = request.query_params
    chosen = {name: query.get(name) or None for name in _FILTERS}
    since_name = query.get("since") or ""
    if chosen["text"] and since_name not in _SINCE:
        since_name = "24h"  # a text search scans: within a day unless a range is chosen
    since = _SINCE.get(since_name)
    error, more = None, False
    rows: list[dict[str, Any]] = []
    before = query.get("before", "")
    try:
        where = TraceFilter(
            since=time.time() - since if since else None,
            status=parse_status(query.get("status") or None),
            before_id=int(before) if before.isdecimal() else None, **chosen,  # type: ignore[arg-type]
        )  # fmt: skip
        if store is not None:
            rows, more = store.list(where)
    except InferlineError as exc:
        error = str(exc)
    return page(request, "traces.html", session, rows=rows, more=more, error=error,
                filters={**chosen, "status": query.get("status") or "", "since": since_name},
                has_log=store is not None)  # fmt: skip


@router.get("/ui/traces/{request_id}")
def trace(request_id: str, request: Request) -> Response:
    """One trace: its timeline (queue, prefill, decode, attempts, checks, tool waits), the
    messages when text is logged, the decision."""
    session = require(request, "viewer")
    store = state_of(request).traces
    found = store.get(request_id) if store is not None else None
    if found is None:
        raise NotFoundError(f"no trace {request_id!r}", "request_id")
    return page(request, "trace.html", session, trace=found, bars=timeline(found))


@router.get("/ui/prompts")
def prompts(request: Request) -> Response:
    """Every prompt with its latest version and labels."""
    session = require(request, "viewer")
    registry = state_of(request).prompts
    rows = registry.store.prompts() if registry is not None else []
    return page(request, "prompts.html", session, prompts=rows)


@router.get("/ui/prompts/{prompt_id}")
def prompt(prompt_id: str, request: Request) -> Response:
    """A prompt's versions with their figures, labels, moves, and a diff to choose."""
    session = require(request, "viewer")
    registry = state_of(request).prompts
    if registry is None:
        raise NotFoundError("this server keeps no prompt registry", "prompt_id")
    described = registry.describe(prompt_id)
    numbers = [v["version"] for v in described["versions"]]
    old = int(request.query_params.get("old", numbers[-2] if len(numbers) > 1 else numbers[-1]))
    new = int(request.query_params.get("new", numbers[-1]))
    confirm = request.query_params.get("confirm")  # "label:version" awaiting a yes
    engine = _engine(request)
    scores = version_scores(engine, prompt_id) if engine is not None else {}
    return page(
        request, "prompt.html", session, prompt=described, old=old, new=new, numbers=numbers,
        scores=scores,
        diff=registry.diff(prompt_id, old, new), confirm=confirm.split(":", 1) if confirm else None,
    )  # fmt: skip


@router.post("/ui/prompts/{prompt_id}/labels")
def move_label(
    prompt_id: str, request: Request, label: str = Form(...), version: int = Form(...),
    confirmed: str = Form(""), csrf: str | None = Form(None),
) -> Response:  # fmt: skip
    """Moves a label (admin), once confirmed; otherwise back to the page to confirm."""
    require_post(request, "admin", csrf)
    registry = state_of(request).prompts
    if registry is None:
        raise NotFoundError("this server keeps no prompt registry", "prompt_id")
    if confirmed != "yes":
        return RedirectResponse(
            f"/ui/prompts/{prompt_id}?confirm={label}:{version}", status_code=303
        )
    registry.store.move_label(prompt_id, label, version)
    return RedirectResponse(f"/ui/prompts/{prompt_id}", status_code=303)


def _engine(request: Request) -> Any:
    store = state_of(request).traces
    return store.engine if store is not None else None


@router.get("/ui/evals")
def evals(request: Request) -> Response:
    """Experiments (newest first) and rollouts with their decisions."""
    from inferline.store.experiments import ExperimentStore
    from inferline.store.rollouts import RolloutStore

    session = require(request, "viewer")
    engine = _engine(request)
    experiments = ExperimentStore(engine).recent(50) if engine is not None else []
    rollouts = []
    if engine is not None:
        rollout_store = RolloutStore(engine)
        rollouts = [
            {**r, "events": rollout_store.events_of(r["name"])} for r in rollout_store.all()
        ]
    return page(request, "evals.html", session, experiments=experiments, rollouts=rollouts)


@router.get("/ui/evals/{experiment_id}")
def experiment(experiment_id: str, request: Request) -> Response:
    """One experiment's report: targets side by side, comparisons, disagreeing items."""
    from inferline.evals.report import disagreements, summarize
    from inferline.store.experiments import ExperimentStore

    session = require(request, "viewer")
    store = ExperimentStore(_engine(request))
    found = store.get(experiment_id)
    rows = store.rows(experiment_id)
    summary = summarize(found, rows)
    items = disagreements(rows, found["config"]["targets"], limit=30)
    return page(request, "experiment.html", session, summary=summary, items=items)


@router.get("/ui/keys")
def keys(request: Request) -> Response:
    """Keys, their limits, and their spend against their budget (admin)."""
    session = require(request, "admin")
    store = state_of(request).tenants.store
    rows = store.all() if store is not None else []
    month = time.time() - 30 * 86400
    views = (
        [{**row, "spent_30d": store.spent_since(row["id"], month)} for row in rows] if store else []
    )
    return page(request, "keys.html", session, keys=views)


@router.get("/ui/tasks/{task_id}")
def task(task_id: str, request: Request) -> Response:
    """A task's steps on one time axis: each request, and the tool waits between them."""
    from inferline.store.tasks import TaskStore

    session = require(request, "viewer")
    engine = _engine(request)
    found = TaskStore(engine).task(task_id) if engine is not None else None
    if found is None:
        raise NotFoundError(f"no task {task_id!r}", "task_id")
    return page(request, "task.html", session, task=found, bars=task_bars(found))


def task_bars(found: dict[str, Any]) -> list[dict[str, Any]]:
    """Each step's request and the tool wait before it, as % of the task's span."""
    start = found["steps"][0]["started_at"]
    span = max(1e-9, found["latency_s"])
    bars = []
    for step in found["steps"]:
        if step["tool_wait_s"]:
            wait_from = step["started_at"] - step["tool_wait_s"] - start
            bars.append({"label": "tool", "kind": "tool", "start_s": wait_from,
                         "length_s": step["tool_wait_s"]})  # fmt: skip
        bars.append({"label": f"{step['route']} ({step['status_code']})", "kind": "attempt",
                     "start_s": step["started_at"] - start,
                     "length_s": step["ended_at"] - step["started_at"],
                     "request_id": step["request_id"]})  # fmt: skip
    for bar in bars:
        bar["left_pct"] = round(100 * bar["start_s"] / span, 2)
        bar["width_pct"] = max(0.5, round(100 * bar["length_s"] / span, 2))
    return bars


def version_scores(engine: Any, prompt_id: str) -> dict[int, list[dict[str, Any]]]:
    """Per version of a prompt, its scores: the pass rate of each recent experiment target
    ``prompt:ID@N`` and of each rollout arm on it."""
    from inferline.evals.targets import parse_target
    from inferline.store.experiments import ExperimentStore
    from inferline.store.rollouts import RolloutStore

    out: dict[int, list[dict[str, Any]]] = {}
    experiments = ExperimentStore(engine)
    for experiment in experiments.recent(50):
        specs = [s for s in experiment["config"]["targets"] if s.startswith("prompt:")]
        targets = {s: parse_target(s) for s in specs}
        mine = {s: t for s, t in targets.items()
                if t.prompt_id == prompt_id and isinstance(t.prompt_version, int)}  # fmt: skip
        if not mine:
            continue
        rows = experiments.rows(experiment["id"])
        for spec, target in mine.items():
            passed = [bool(r["passed"]) for r in rows if r["target"] == spec]
            if passed:
                out.setdefault(int(target.prompt_version or 0), []).append(
                    {"source": f"experiment {experiment['id']}", "n": len(passed),
                     "pass_rate": sum(passed) / len(passed)})  # fmt: skip
    rollouts = RolloutStore(engine)
    for rollout in rollouts.all():
        if rollout["kind"] != "prompt" or rollout["subject"] != prompt_id:
            continue
        for arm, counts in rollouts.counts(rollout["name"]).items():
            scored = counts["passes"] + counts["fails"]
            if scored:
                out.setdefault(int(rollout[arm]), []).append(
                    {"source": f"rollout {rollout['name']} ({arm})", "n": scored,
                     "pass_rate": counts["passes"] / scored})  # fmt: skip
    return out
