"""How far a judge can be trusted: its verdicts against people's on the same answers.

Raw agreement flatters (a judge that always says "good" agrees as often as good answers
are common), so the calibration reports Cohen's kappa, the agreement of the constant
baseline that always gives the more common human verdict, and the true-positive and
true-negative rates. A judge that gave no score counts as saying "bad" (it vouched for
nothing). The threshold that maximises kappa is reported beside the one used.

Labels come from a dataset whose items carry the judged answer (``metadata.draft`` or
``metadata.output``) and a human verdict (``metadata.human_label`` or ``metadata.label``,
1 = good, 0 = bad): the ``reviews/<route>`` datasets have both.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.evals.judges import Judge
from inferline.store.datasets import DatasetItem


@dataclass(frozen=True)
class Labelled:
    """One answer a person labelled: the item, the answer, the human verdict."""

    item: DatasetItem
    answer: str
    human: int  # 1 good, 0 bad


def labelled(items: Sequence[DatasetItem]) -> list[Labelled]:
    """The items that carry an answer and a human verdict (400 when none does)."""
    out = []
    for item in items:
        meta = item.metadata
        answer = meta.get("draft") if meta.get("draft") is not None else meta.get("output")
        label = meta.get("human_label", meta.get("label"))
        if answer is None or label not in (0, 1, True, False, "0", "1"):
            continue
        text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
        out.append(Labelled(item, text, int(label)))
    if not out:
        raise InvalidParameterError(
            "no item has an answer (metadata.draft or .output) and a human label "
            "(metadata.human_label or .label, 0 or 1)", "labels",
        )  # fmt: skip
    return out


def agreement_stats(
    scores: Sequence[float | None], humans: Sequence[int], threshold: float
) -> dict[str, Any]:
    """Agreement, kappa, the constant baseline, TPR and TNR at ``threshold``."""
    judged = [1 if s is not None and s >= threshold else 0 for s in scores]
    n = len(judged)
    tp = sum(1 for j, h in zip(judged, humans, strict=True) if j == 1 and h == 1)
    tn = sum(1 for j, h in zip(judged, humans, strict=True) if j == 0 and h == 0)
    fp = sum(1 for j, h in zip(judged, humans, strict=True) if j == 1 and h == 0)
    fn = n - tp - tn - fp
    agreement = (tp + tn) / n
    good_j, good_h = (tp + fp) / n, (tp + fn) / n
    chance = good_j * good_h + (1 - good_j) * (1 - good_h)
    kappa = None if chance >= 1 else (agreement - chance) / (1 - chance)
    positives, negatives = tp + fn, tn + fp
    return {
        "threshold": threshold, "n": n, "agreement": agreement, "kappa": kappa,
        "baseline_agreement": max(good_h, 1 - good_h),
        "tpr": tp / positives if positives else None,
        "tnr": tn / negatives if negatives else None,
        "confusion": {"tp": tp, "tn": tn, "fp": fp, "fn": fn},
    }  # fmt: skip


def best_threshold(scores: Sequence[float | None], humans: Sequence[int]) -> dict[str, Any]:
    """The threshold (among the scores seen) with the highest kappa."""
    candidates = sorted({s for s in scores if s is not None}) or [0.5]
    results = [agreement_stats(scores, humans, t) for t in candidates]
    return max(results, key=lambda r: -2.0 if r["kappa"] is None else r["kappa"])


async def calibrate(
    judge: Judge, cases: Sequence[Labelled], *, threshold: float = 0.5, concurrency: int = 4
) -> dict[str, Any]:
    """Runs the judge on every labelled answer; the statistics, the best threshold, every
    case's score and what judging cost."""
    limit = asyncio.Semaphore(max(1, concurrency))

    async def one(case: Labelled) -> Any:
        async with limit:
            return await judge.score(case.item, case.answer)

    verdicts = await asyncio.gather(*(one(c) for c in cases))
    scores = [v.value for v in verdicts]
    humans = [c.human for c in cases]
    return {
        **agreement_stats(scores, humans, threshold),
        "best": best_threshold(scores, humans),
        "no_score": sum(1 for s in scores if s is None),
        "cost_usd": sum(v.cost_usd for v in verdicts),
        "cases": [{"item": c.item.key, "human": c.human, "score": v.value, "detail": v.detail}
                  for c, v in zip(cases, verdicts, strict=True)],
    }  # fmt: skip
