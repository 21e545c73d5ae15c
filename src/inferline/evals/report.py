"""An experiment's summary: per target, the pass rate and each scorer's mean with 95%
bootstrap intervals, latency percentiles, cost per item and per successful item; paired
differences of every target against the first (a sign-flip permutation test); and the
items on which the targets disagree.

A failed request counts as a failure (pass 0, scores 0): a target that errors is not
flattered by dropping its errors. Repetitions of an item are averaged before pairing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from inferline.evals.pairwise import pairwise_summary
from inferline.evals.stats import Interval, bootstrap_mean, paired_difference, percentile

PASS = "pass"  # the metric of passing every scorer


def summarize(experiment: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The JSON result of ``--json``."""
    config = experiment["config"]
    targets: list[str] = config["targets"]
    per_item = _per_item(rows, config["scorers"])
    summary: dict[str, Any] = {
        "experiment": experiment["id"], "name": experiment["name"],
        "dataset": experiment["dataset"], "dataset_version": experiment["dataset_version"],
        "status": experiment["status"], "scorers": config["scorers"],
        "repetitions": config["repetitions"],
        "targets": {t: _target(t, [r for r in rows if r["target"] == t], per_item.get(t, {}),
                               config["scorers"]) for t in targets},
        "comparisons": _comparisons(targets, per_item, [PASS, *config["scorers"]]),
        "pairwise": pairwise_summary(rows, targets),
    }  # fmt: skip
    return summary


def _interval(interval: Interval) -> dict[str, Any]:
    return {"mean": interval.mean, "ci95": [interval.low, interval.high], "n": interval.n}


def _target(
    target: str, rows: list[dict[str, Any]], items: dict[str, dict[str, float]],
    scorers: list[str],
) -> dict[str, Any]:  # fmt: skip
    ok = [r for r in rows if r["status_code"] == 200]
    passed = sum(1 for r in rows if r["passed"])
    cost = sum(r["cost_usd"] for r in rows)
    latencies = [r["latency_s"] for r in ok if r["latency_s"] is not None]
    pass_rate = bootstrap_mean([v[PASS] for v in items.values()])
    return {
        **_interval(pass_rate),
        "rows": len(rows),
        "errors": len(rows) - len(ok),
        "passed": passed,
        "scores": {s: _interval(bootstrap_mean([v[s] for v in items.values()])) for s in scorers},
        "cost": {"total_usd": cost, "per_item_usd": cost / len(rows) if rows else None,
                 "per_success_usd": cost / passed if passed else None,
                 "scoring_usd": sum(r["scoring_cost_usd"] for r in rows)},
        "latency": {"p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
                    "mean_s": sum(latencies) / len(latencies) if latencies else None},
        "tokens": {"prompt": sum(r["prompt_tokens"] or 0 for r in rows),
                   "completion": sum(r["completion_tokens"] or 0 for r in rows)},
    }  # fmt: skip


def _per_item(
    rows: Sequence[dict[str, Any]], scorers: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """target -> item -> metric -> mean over the item's repetitions (failures count 0)."""
    sums: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        metrics = sums[(row["target"], row["item_key"])]
        metrics[PASS].append(1.0 if row["passed"] else 0.0)
        for name in scorers:
            value = row["scores"].get(name)
            metrics[name].append(float(value) if value is not None else 0.0)
    out: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (target, key), metrics in sums.items():
        out[target][key] = {m: sum(v) / len(v) for m, v in metrics.items()}
    return out


def _comparisons(
    targets: list[str], per_item: dict[str, dict[str, dict[str, float]]], metrics: list[str]
) -> list[dict[str, Any]]:
    """Every target against the first, on the items both answered, per metric."""
    out = []
    baseline = targets[0]
    for other in targets[1:]:
        keys = sorted(set(per_item.get(baseline, {})) & set(per_item.get(other, {})))
        for metric in metrics:
            a = [per_item[baseline][k][metric] for k in keys]
            b = [per_item[other][k][metric] for k in keys]
            if not keys:
                continue
            result = paired_difference(a, b)
            out.append({"baseline": baseline, "target": other, "metric": metric,
                        **_interval(result.diff), "p_value": result.p_value})  # fmt: skip
    return out


def disagreements(
    rows: Sequence[dict[str, Any]], targets: list[str], limit: int = 50
) -> list[dict[str, Any]]:
    """Items the targets did not all pass or all fail (first repetition): what to read."""
    by_item: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if row["repetition"] == 0:
            by_item[row["item_key"]][row["target"]] = row
    out = []
    for key, answers in by_item.items():
        verdicts = {bool(answers[t]["passed"]) for t in targets if t in answers}
        if len(verdicts) > 1:
            out.append({"item": key, "answers": {t: answers[t] for t in targets if t in answers}})
        if len(out) >= limit:
            break
    return out


def failing_targets(summary: dict[str, Any], fail_under: float) -> list[str]:
    """Targets whose pass rate is below ``fail_under`` (``--fail-under``)."""
    return [t for t, s in summary["targets"].items() if not s["mean"] >= fail_under]
