"""The cascade's escalation threshold from data: an experiment ran the same items on the
small target (with ``logprobs``) and the large one; each threshold t on the small
answer's mean token logprob (what the gateway's ``logprob`` check reads) keeps the small
answers at or above t and escalates the rest, which then cost both requests. The curve
gives, per threshold, the share escalated, the error rate and the cost per item; the
chosen threshold is the cheapest within ``max_error`` (or the most accurate within
``max_cost``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inferline.core.errors import InvalidParameterError


@dataclass(frozen=True)
class Pair:
    """One item as both targets answered it (first repetition)."""

    item: str
    confidence: float | None  # None: the small answer had no logprobs (always escalated)
    small_ok: bool
    small_cost: float
    large_ok: bool
    large_cost: float


def pairs_of(rows: Sequence[dict[str, Any]], small: str, large: str) -> list[Pair]:
    """The items both targets answered (400 when the small one returned no logprobs)."""
    by_target: dict[str, dict[str, dict[str, Any]]] = {small: {}, large: {}}
    for row in rows:
        if row["target"] in by_target and row["repetition"] == 0:
            by_target[row["target"]][row["item_key"]] = row
    keys = sorted(set(by_target[small]) & set(by_target[large]))
    pairs = [Pair(k, by_target[small][k]["confidence"], bool(by_target[small][k]["passed"]),
                  by_target[small][k]["cost_usd"], bool(by_target[large][k]["passed"]),
                  by_target[large][k]["cost_usd"]) for k in keys]  # fmt: skip
    if not any(p.confidence is not None for p in pairs):
        raise InvalidParameterError(
            f"no answer of {small!r} has logprobs: run the experiment with --param logprobs=true",
            "small",
        )
    return pairs


def curve(pairs: Sequence[Pair]) -> list[dict[str, float]]:
    """Per candidate threshold (each small answer's confidence, plus keep-all and
    escalate-all): share escalated, error rate, cost per item."""
    values = sorted({p.confidence for p in pairs if p.confidence is not None})
    thresholds = [float("-inf"), *values, float("inf")]
    n = len(pairs)
    out = []
    for t in thresholds:
        kept = [p for p in pairs if p.confidence is not None and p.confidence >= t]
        escalated = [p for p in pairs if p not in kept]
        errors = sum(not p.small_ok for p in kept) + sum(not p.large_ok for p in escalated)
        cost = sum(p.small_cost for p in pairs) + sum(p.large_cost for p in escalated)
        out.append({"threshold": t, "escalated": len(escalated) / n, "error": errors / n,
                    "cost_per_item": cost / n})  # fmt: skip
    return out


def choose(
    points: Sequence[dict[str, float]], *, max_error: float | None = None,
    max_cost: float | None = None,
) -> dict[str, float] | None:  # fmt: skip
    """The cheapest point within ``max_error``, or the most accurate within ``max_cost``
    (None when no point meets the target)."""
    if (max_error is None) == (max_cost is None):
        raise InvalidParameterError("give one target: --max-error or --max-cost", "target")
    if max_error is not None:
        fitting = [p for p in points if p["error"] <= max_error]
        return min(fitting, key=lambda p: (p["cost_per_item"], p["error"]), default=None)
    fitting = [p for p in points if p["cost_per_item"] <= (max_cost or 0.0)]
    return min(fitting, key=lambda p: (p["error"], p["cost_per_item"]), default=None)
