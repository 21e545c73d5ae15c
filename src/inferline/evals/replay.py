"""Replay of logged traffic: each logged request sent again, with its recorded arrival
time (scaled by ``speed``), to a candidate server, and what came back compared with what
was logged: outputs (exact, and by similarity), latency and time to first token
distributions, cost, errors, and how closely the send times kept the recorded ones.

Only requests logged with their body (text logging on, after migration m013) can be
replayed; a streamed original is replayed streamed, so its time to first token compares.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from inferline.evals.stats import percentile


@dataclass(frozen=True)
class Logged:
    """One logged request: when it came, its body, what it got."""

    request_id: str
    created_at: float
    body: dict[str, Any]
    output: str | None
    status_code: int
    total_s: float | None
    ttft_s: float | None
    cost_usd: float


def logged_of(trace: dict[str, Any]) -> Logged | None:
    """A trace as a replayable request (None without its body, or not a chat request)."""
    body = trace.get("request")
    if not body or trace.get("endpoint") != "/v1/chat/completions":
        return None
    timings = trace["timings"]
    return Logged(trace["id"], trace["created_at"], body, trace.get("output"),
                  trace["status_code"], timings["total_s"], timings["ttft_s"],
                  trace.get("cost_usd") or 0.0)  # fmt: skip


@dataclass
class Replayed:
    """What the candidate did with one request."""

    logged: Logged
    scheduled_s: float  # offset from the replay's start it was due at
    sent_s: float = 0.0  # offset it was sent at
    status_code: int = 0
    output: str | None = None
    total_s: float | None = None
    ttft_s: float | None = None
    cost_usd: float = 0.0
    error: str | None = None
    request_id: str | None = None


@dataclass(frozen=True)
class ReplayOptions:
    """``speed``: 2.0 sends twice as fast as recorded; ``model``: send every request to this
    route or model instead of the logged one; ``prompt_version``: pin stored prompts."""

    speed: float = 1.0
    model: str | None = None
    prompt_version: str | int | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def request_body(logged: Logged, options: ReplayOptions) -> dict[str, Any]:
    """The body sent again, with the candidate's overrides."""
    body = json.loads(json.dumps(logged.body))
    if options.model is not None:
        body["model"] = options.model
    if options.prompt_version is not None and isinstance(body.get("prompt"), dict):
        body["prompt"]["version"] = options.prompt_version
    body["metadata"] = {**(body.get("metadata") or {}), **options.metadata,
                        "inferline_replay_of": logged.request_id}  # fmt: skip
    if body.get("stream"):
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


async def replay(
    client: httpx.AsyncClient, requests: Sequence[Logged], options: ReplayOptions
) -> list[Replayed]:
    """Sends every request at its scaled offset (each on its own task, so a slow answer
    delays no later send); returns them in arrival order once all are answered."""
    ordered = sorted(requests, key=lambda r: r.created_at)
    if not ordered:
        return []
    first = ordered[0].created_at
    plan = [Replayed(r, (r.created_at - first) / options.speed) for r in ordered]
    start = time.perf_counter()
    tasks = []
    for entry in plan:
        delay = entry.scheduled_s - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        entry.sent_s = time.perf_counter() - start
        tasks.append(asyncio.create_task(_send(client, entry, request_body(entry.logged, options))))
    await asyncio.gather(*tasks)
    await _stream_costs(client, [e for e in plan if e.logged.body.get("stream")])
    return plan


async def _stream_costs(
    client: httpx.AsyncClient, streamed: list[Replayed], wait_s: float = 3.0
) -> None:
    """A stream's headers go out before its cost is known: read it from the candidate's
    trace (written within about a second of the end), when the candidate lets us."""
    deadline = time.monotonic() + wait_s
    pending = [e for e in streamed if e.request_id is not None and e.status_code == 200]
    while pending:
        left = []
        for entry in pending:
            response = await client.get(f"/v1/traces/{entry.request_id}")
            if response.status_code == 200:
                entry.cost_usd = float(response.json().get("cost_usd") or 0.0)
            elif response.status_code == 404:
                left.append(entry)
        pending = left
        if not pending or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


async def _send(client: httpx.AsyncClient, entry: Replayed, body: dict[str, Any]) -> None:
    start = time.perf_counter()
    try:
        if body.get("stream"):
            await _streamed(client, entry, body, start)
        else:
            response = await client.post("/v1/chat/completions", json=body)
            entry.status_code = response.status_code
            entry.request_id = response.headers.get("x-request-id")
            entry.cost_usd = float(response.headers.get("x-inferline-cost-usd") or 0.0)
            data = response.json()
            if response.status_code == 200:
                entry.output = "\x1e".join(
                    c["message"].get("content") or "" for c in data["choices"]
                )
            else:
                entry.error = str(data.get("error", {}).get("message", data))[:500]
    except (httpx.HTTPError, ValueError) as exc:
        entry.error = f"{type(exc).__name__}: {exc}"
    entry.total_s = time.perf_counter() - start


async def _streamed(
    client: httpx.AsyncClient, entry: Replayed, body: dict[str, Any], start: float
) -> None:
    parts: dict[int, list[str]] = {}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        entry.status_code = response.status_code
        entry.request_id = response.headers.get("x-request-id")
        if response.status_code != 200:
            entry.error = (await response.aread()).decode(errors="replace")[:500]
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                entry.error = str(chunk["error"].get("message"))[:500]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta", {}).get("content")
                if delta:
                    if entry.ttft_s is None:
                        entry.ttft_s = time.perf_counter() - start
                    parts.setdefault(choice["index"], []).append(delta)
    entry.output = "\x1e".join("".join(parts[i]) for i in sorted(parts)) if parts else ""


def similarity(a: str | None, b: str | None) -> float | None:
    """How alike two outputs are: difflib's ratio over words, 1.0 for equal texts."""
    if a is None or b is None:
        return None
    return difflib.SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def compare(results: Sequence[Replayed]) -> dict[str, Any]:
    """The replay's report: counts, outputs, latency, cost, and arrival fidelity."""
    both = [r for r in results if r.status_code == 200 and r.logged.status_code == 200]
    sims = [s for s in (similarity(r.logged.output, r.output) for r in both) if s is not None]
    gaps = _gap_errors(results)
    return {
        "requests": len(results),
        "errors": {"logged": sum(1 for r in results if r.logged.status_code != 200),
                   "replayed": sum(1 for r in results if r.status_code != 200)},
        "outputs": {"compared": len(both),
                    "exact": sum(1 for r in both if r.output == r.logged.output),
                    "similarity_mean": sum(sims) / len(sims) if sims else None,
                    "similarity_p10": percentile(sims, 10)},
        "latency_s": _paired_percentiles(both, "total_s"),
        "ttft_s": _paired_percentiles(both, "ttft_s"),
        "cost_usd": {"logged": sum(r.logged.cost_usd for r in results),
                     "replayed": sum(r.cost_usd for r in results)},
        "arrival": {"span_s": results[-1].sent_s if results else 0.0,
                    "gap_error_p50": percentile(gaps, 50), "gap_error_p95": percentile(gaps, 95),
                    "late_s_max": max((r.sent_s - r.scheduled_s for r in results), default=0.0)},
    }  # fmt: skip


def _paired_percentiles(results: Sequence[Replayed], name: str) -> dict[str, Any]:
    """p50 and p95 of one timing, as logged and as replayed."""
    a = [v for v in (getattr(r.logged, name) for r in results) if v is not None]
    b = [v for v in (getattr(r, name) for r in results) if v is not None]
    return {"logged": {"p50": percentile(a, 50), "p95": percentile(a, 95)},
            "replayed": {"p50": percentile(b, 50), "p95": percentile(b, 95)}}  # fmt: skip


def _gap_errors(results: Sequence[Replayed]) -> list[float]:
    """Per inter-arrival gap of at least 10 ms: |sent gap - scheduled gap| / scheduled gap."""
    out = []
    for before, after in zip(results, results[1:], strict=False):
        scheduled = after.scheduled_s - before.scheduled_s
        if scheduled >= 0.01:
            out.append(abs((after.sent_s - before.sent_s) - scheduled) / scheduled)
    return out
