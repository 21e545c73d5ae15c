"""Running an experiment: every item of a dataset version through the gateway on each
target (and each repetition), scored, each result stored as soon as it is scored.

The plan (dataset version, targets, scorers, repetitions, parameters) is stored with the
experiment, so ``resume`` continues it exactly: rows already written are skipped, and
the store refuses a second write of one row, so no item is scored twice.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferline.core.errors import InferlineError
from inferline.evals.gateway import Gateway, Reply
from inferline.evals.scorers import Score, Scorer
from inferline.evals.targets import Target, parse_target
from inferline.store.datasets import DatasetItem, DatasetStore
from inferline.store.experiments import ExperimentStore


@dataclass(frozen=True)
class Plan:
    """What an experiment runs: stored with it as its config."""

    dataset: str
    dataset_version: int
    targets: tuple[str, ...]
    scorers: tuple[str, ...]
    repetitions: int = 1
    params: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    pairwise: str | None = None  # a pairwise judge: PROMPT[@VERSION][/MODEL]

    def config(self) -> dict[str, Any]:
        """The plan as stored."""
        return {"targets": list(self.targets), "scorers": list(self.scorers),
                "repetitions": self.repetitions, "params": self.params,
                "pairwise": self.pairwise}  # fmt: skip


def plan_of(experiment: dict[str, Any]) -> Plan:
    """The plan of a stored experiment."""
    config = experiment["config"]
    return Plan(experiment["dataset"], experiment["dataset_version"], tuple(config["targets"]),
                tuple(config["scorers"]), int(config["repetitions"]), dict(config["params"]),
                experiment["name"], config.get("pairwise"))  # fmt: skip


def start(experiments: ExperimentStore, datasets: DatasetStore, plan: Plan) -> dict[str, Any]:
    """Stores a new experiment for ``plan`` (its targets checked, its version fixed)."""
    for spec in plan.targets:
        parse_target(spec)
    datasets.version(plan.dataset, plan.dataset_version)
    row = {"id": f"exp_{secrets.token_hex(8)}", "name": plan.name, "dataset": plan.dataset,
           "dataset_version": plan.dataset_version, "config": plan.config()}  # fmt: skip
    return experiments.create(row)


@dataclass
class Progress:
    """Counts while a run goes; ``on_result`` is called after each stored row."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    on_result: Callable[[dict[str, Any]], None] | None = None


class Runner:
    """Runs (or resumes) one experiment."""

    def __init__(
        self,
        experiments: ExperimentStore,
        gateway: Gateway,
        scorers: Sequence[Scorer],
        *,
        concurrency: int = 4,
    ) -> None:
        self.experiments, self.gateway, self.scorers = experiments, gateway, list(scorers)
        self.concurrency = max(1, concurrency)

    async def run(
        self, experiment_id: str, items: Sequence[DatasetItem], progress: Progress | None = None
    ) -> Progress:
        """Answers and scores every missing (target, item, repetition); the experiment is
        ``done`` after, or ``failed`` if the run raised (rows written so far are kept)."""
        plan = plan_of(self.experiments.get(experiment_id))
        progress = progress or Progress()
        done = self.experiments.done(experiment_id)
        work = [(parse_target(spec), item, rep) for spec in plan.targets for item in items
                for rep in range(plan.repetitions)]  # fmt: skip
        todo = [w for w in work if (w[0].spec, w[1].key, w[2]) not in done]
        progress.total, progress.skipped = len(work), len(work) - len(todo)
        self.experiments.set_status(experiment_id, "running")
        queue: asyncio.Queue[tuple[Target, DatasetItem, int]] = asyncio.Queue()
        for entry in todo:
            queue.put_nowait(entry)
        workers = [asyncio.create_task(self._work(experiment_id, plan, queue, progress))
                   for _ in range(min(self.concurrency, len(todo)) or 1)]  # fmt: skip
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for worker in workers:
                worker.cancel()
            # a worker finishes the row it is writing before it stops: once this raises,
            # no row of the run lands late (a resume counts exactly what was written)
            await asyncio.gather(*workers, return_exceptions=True)
            self.experiments.set_status(experiment_id, "failed")
            raise
        self.experiments.set_status(experiment_id, "done")
        return progress

    async def _work(
        self, experiment_id: str, plan: Plan, queue: asyncio.Queue[tuple[Target, DatasetItem, int]],
        progress: Progress,
    ) -> None:  # fmt: skip
        while not queue.empty():
            target, item, repetition = queue.get_nowait()
            row = await self.answer(experiment_id, plan, target, item, repetition)
            if await self._write(row):
                progress.done += 1
                progress.failed += row["status_code"] != 200
                if progress.on_result is not None:
                    progress.on_result(row)

    async def _write(self, row: dict[str, Any]) -> bool:
        """Stores one result row off the event loop; a cancellation waits for the write
        (the thread would finish it anyway) and then goes on."""
        write = asyncio.ensure_future(asyncio.to_thread(self.experiments.add_result, row))
        try:
            return await asyncio.shield(write)
        except asyncio.CancelledError:
            await write
            raise

    async def answer(
        self, experiment_id: str, plan: Plan, target: Target, item: DatasetItem, repetition: int
    ) -> dict[str, Any]:
        """One item on one target, scored: the result row."""
        metadata = {"inferline_experiment": experiment_id, "inferline_item": item.key[:64]}
        try:
            reply = await self.gateway.chat(target.body(item, plan.params, metadata))
        except InferlineError as exc:  # the item cannot be sent to this target
            reply = Reply(400, error=str(exc))
        scores: dict[str, float | None] = {}
        passed: bool | None = None
        scoring_cost = 0.0
        if reply.ok:
            assert reply.text is not None
            verdicts = [await _scored(s, item, reply.text) for s in self.scorers]
            scores = {s.name: v.value for s, v in zip(self.scorers, verdicts, strict=True)}
            scoring_cost = sum(v.cost_usd for v in verdicts)
            passed = all(v.passed for v in verdicts)
        return {
            "experiment_id": experiment_id, "target": target.spec, "item_key": item.key,
            "repetition": repetition, "request_id": reply.request_id,
            "status_code": reply.status_code, "error": reply.error, "output": reply.text,
            "latency_s": reply.latency_s, "cost_usd": reply.cost_usd,
            "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "scores": scores, "scoring_cost_usd": scoring_cost, "passed": passed,
            "confidence": reply.confidence,
        }  # fmt: skip


async def _scored(scorer: Scorer, item: DatasetItem, output: str) -> Score:
    """A scorer's verdict; one that raises scores None (not passed), with the reason."""
    try:
        return await scorer.score(item, output)
    except InferlineError as exc:
        return Score(None, False, str(exc))
    except (ValueError, TypeError, KeyError) as exc:
        return Score(None, False, f"{type(exc).__name__}: {exc}")
