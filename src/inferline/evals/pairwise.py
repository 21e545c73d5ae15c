"""Pairwise judging of an experiment: each target's answer against the first target's
(the baseline), item by item, by a pairwise judge asked in both orders (`judges`). Each
verdict is a result row of the pseudo-target ``pairwise:BASELINE|TARGET`` (so a resumed
run judges no pair twice); the report gives win rates with intervals and how often the
judge kept its verdict when the answers swapped places."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from inferline.evals.judges import PairwiseJudge
from inferline.evals.stats import bootstrap_mean
from inferline.store.datasets import DatasetItem
from inferline.store.experiments import ExperimentStore

PREFIX = "pairwise:"
_WIN = {"second": 1.0, "tie": 0.5, "first": 0.0}  # for the challenger


def pair_name(baseline: str, target: str) -> str:
    """The pseudo-target a pair's verdicts are stored under."""
    return f"{PREFIX}{baseline}|{target}"


async def judge_pairs(
    store: ExperimentStore, experiment_id: str, targets: Sequence[str],
    items: Sequence[DatasetItem], judge: PairwiseJudge, concurrency: int = 4,
) -> int:  # fmt: skip
    """Judges every (baseline, target, item) not judged yet whose two answers both came
    back; how many verdicts were written."""
    rows = store.rows(experiment_id)
    answers = {(r["target"], r["item_key"]): r["output"] for r in rows
               if r["repetition"] == 0 and r["status_code"] == 200}  # fmt: skip
    done = store.done(experiment_id)
    by_key = {item.key: item for item in items}
    todo = [(t, key) for t in targets[1:] for key in by_key
            if (targets[0], key) in answers and (t, key) in answers
            and (pair_name(targets[0], t), key, 0) not in done]  # fmt: skip
    limit, written = asyncio.Semaphore(max(1, concurrency)), 0

    async def one(target: str, key: str) -> None:
        nonlocal written
        async with limit:
            verdict = await judge.compare(by_key[key], answers[(targets[0], key)],
                                          answers[(target, key)])  # fmt: skip
        row = {"experiment_id": experiment_id, "target": pair_name(targets[0], target),
               "item_key": key, "repetition": 0, "request_id": None, "status_code": 200,
               "error": None, "output": verdict.winner, "latency_s": None, "cost_usd": 0.0,
               "prompt_tokens": None, "completion_tokens": None,
               "scores": {"win": _WIN[verdict.winner], "consistent": float(verdict.consistent),
                          "orders": list(verdict.orders)},
               "scoring_cost_usd": verdict.cost_usd, "passed": verdict.winner == "second",
               "confidence": None}  # fmt: skip
        if await asyncio.to_thread(store.add_result, row):
            written += 1

    await asyncio.gather(*(one(t, k) for t, k in todo))
    return written


def pairwise_summary(
    rows: Sequence[dict[str, Any]], targets: Sequence[str]
) -> list[dict[str, Any]]:
    """Per challenger: wins, losses and ties against the baseline, its win rate (a tie is
    half a win) with a 95% interval, and the judge's consistency under the swap."""
    out = []
    for target in targets[1:]:
        name = pair_name(targets[0], target)
        verdicts = [r for r in rows if r["target"] == name]
        if not verdicts:
            continue
        wins = [r["scores"]["win"] for r in verdicts]
        rate = bootstrap_mean(wins)
        out.append({
            "baseline": targets[0], "target": target, "n": len(verdicts),
            "wins": sum(1 for w in wins if w == 1.0), "losses": sum(1 for w in wins if w == 0.0),
            "ties": sum(1 for w in wins if w == 0.5), "win_rate": rate.mean,
            "ci95": [rate.low, rate.high],
            "consistent": sum(r["scores"]["consistent"] for r in verdicts) / len(verdicts),
            "cost_usd": sum(r["scoring_cost_usd"] for r in verdicts),
        })  # fmt: skip
    return out
