"""A trace as bars on one time axis (seconds from the request's start): the engine's
queue, prefill and decode, each attempt, each check (input checks before the answer,
output checks after it), as percentages of the request's total time for the page."""

from __future__ import annotations

from typing import Any


def timeline(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The bars: label, kind, start and length in seconds, and as % of the total."""
    timings = trace["timings"]
    total = timings["total_s"] or 0.0
    bars: list[dict[str, Any]] = []
    if trace.get("cache"):  # the lookup's own time is not recorded: a marker at the start
        bars.append(_bar(f"cache lookup: {trace['cache']}", "cache", 0.0, 0.0))
    at = 0.0
    for label, key in (("queue", "queue_s"), ("prefill", "prefill_s"), ("decode", "decode_s")):
        if timings.get(key):
            bars.append(_bar(label, "engine", at, timings[key]))
            at += timings[key]
    for attempt in trace.get("attempts") or []:
        label = f"attempt {attempt['attempt']}: {attempt['target']} ({attempt['status']})"
        bars.append(
            _bar(label, "attempt", attempt["started_at"] or 0.0, attempt["duration_s"] or 0.0)
        )
    decision = trace.get("decision") or {}
    checks = decision.get("checks") or []
    start_in, start_out = (
        0.0,
        max(0.0, total - sum(c["duration_s"] for c in checks if c["on"] != "input")),
    )
    for check in checks:
        first = check["on"] == "input"
        at = start_in if first else start_out
        label = f"check {check['check']} ({'fired' if check['fired'] else 'passed'})"
        bars.append(_bar(label, "check", at, check["duration_s"]))
        if first:
            start_in += check["duration_s"]
        else:
            start_out += check["duration_s"]
    span = max([total, *(b["start_s"] + b["length_s"] for b in bars)]) or 1.0
    for bar in bars:
        bar["left_pct"] = round(100 * bar["start_s"] / span, 2)
        bar["width_pct"] = max(0.5, round(100 * bar["length_s"] / span, 2))
    return bars


def _bar(label: str, kind: str, start: float, length: float) -> dict[str, Any]:
    return {"label": label, "kind": kind, "start_s": start, "length_s": length}
