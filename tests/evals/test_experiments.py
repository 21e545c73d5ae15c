"""Experiments with a scripted gateway: targets and their bodies, a run cancelled mid-way
and resumed (no item answered or scored twice), the report's figures, the HTML page."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from inferline.core.errors import InvalidParameterError
from inferline.evals import html
from inferline.evals.experiment import Plan, Runner, start
from inferline.evals.gateway import Reply
from inferline.evals.report import disagreements, failing_targets, summarize
from inferline.evals.scorers import Contains
from inferline.evals.targets import Target, parse_target
from inferline.store.datasets import DatasetItem, DatasetStore
from inferline.store.experiments import ExperimentStore

pytestmark = pytest.mark.anyio


def test_targets_and_their_requests() -> None:
    assert parse_target("bot") == Target("bot", "route", model="bot")
    assert parse_target("model:large") == Target("model:large", "model", model="large")
    prompt = parse_target("prompt:reply@3/large")
    assert (prompt.prompt_id, prompt.prompt_version, prompt.model) == ("reply", 3, "large")
    assert parse_target("prompt:reply@production").prompt_version == "production"
    with pytest.raises(InvalidParameterError):
        parse_target("prompt:")
    item = DatasetItem("k", {"question": "why?"})
    body = prompt.body(item, {"temperature": 0}, {"inferline_item": "k"})
    assert body == {"temperature": 0, "messages": [], "metadata": {"inferline_item": "k"},
                    "prompt": {"id": "reply", "version": 3, "variables": {"question": "why?"}},
                    "model": "large"}  # fmt: skip
    with pytest.raises(InvalidParameterError, match="must be a prompt"):
        parse_target("bot").body(item, {}, {})
    assert parse_target("bot").body(DatasetItem("k", "hi"), {}, {})["messages"] == [
        {"role": "user", "content": "hi"}
    ]


class Fleet:
    """Two models: ``good`` names the expected colour, ``bad`` does for even items only;
    ``slow`` waits, so a run can be cancelled mid-way."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s, self.calls = delay_s, []  # type: ignore[var-annotated]

    async def chat(self, body: dict[str, Any]) -> Reply:
        await asyncio.sleep(self.delay_s)
        key = body["metadata"]["inferline_item"]
        self.calls.append((body["model"], key))
        n = int(key[1:])
        if body["model"] == "broken":
            return Reply(503, error="no", latency_s=0.01)
        right = body["model"] == "good" or n % 2 == 0
        text = f"it is {'red' if right else 'blue'}"
        return Reply(200, text=text, latency_s=0.1 * (1 + n % 3), cost_usd=0.002,
                     prompt_tokens=5, completion_tokens=3, request_id=f"r{n}")  # fmt: skip


def _setup(database: Any, n: int, targets: tuple[str, ...]) -> tuple[Any, Any, dict[str, Any]]:
    datasets, experiments = DatasetStore(database), ExperimentStore(database)
    items = [DatasetItem(f"i{n}", f"colour {n}?", "red") for n in range(n)]
    datasets.write("colours", items, source="file")
    plan = Plan("colours", 1, targets, ("contains",), repetitions=1, params={"max_tokens": 8})
    return datasets, experiments, start(experiments, datasets, plan)


async def test_a_cancelled_run_resumes_without_scoring_an_item_twice(database) -> None:  # type: ignore[no-untyped-def]
    datasets, experiments, experiment = _setup(database, 20, ("good", "bad"))
    items = datasets.items("colours")
    slow = Fleet(delay_s=0.02)
    runner = Runner(experiments, slow, [Contains()], concurrency=3)
    task = asyncio.ensure_future(runner.run(experiment["id"], items))
    while len(experiments.rows(experiment["id"])) < 10:
        await asyncio.sleep(0.01)
    task.cancel()  # a crash mid-run: the rows written are kept
    with pytest.raises(asyncio.CancelledError):
        await task
    assert experiments.get(experiment["id"])["status"] == "failed"
    written = len(experiments.rows(experiment["id"]))
    assert 10 <= written < 40
    fleet = Fleet()
    progress = await Runner(experiments, fleet, [Contains()], concurrency=3).run(
        experiment["id"], items
    )
    assert (progress.total, progress.skipped, progress.done) == (40, written, 40 - written)
    assert len(fleet.calls) == 40 - written  # only the missing rows were asked again
    rows = experiments.rows(experiment["id"])
    keys = [(r["target"], r["item_key"], r["repetition"]) for r in rows]
    assert len(keys) == len(set(keys)) == 40
    assert experiments.get(experiment["id"])["status"] == "done"
    assert not experiments.add_result({**rows[0], "id": None})  # a second write is refused


async def test_a_cancelled_run_lands_the_row_it_was_writing(database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A cancellation during a row's write returns only once the row is stored: nothing of
    the cancelled run lands later, under a resume's count."""
    datasets, experiments, experiment = _setup(database, 4, ("good",))
    writing, original = threading.Event(), experiments.add_result

    def slow_add_result(row: dict[str, Any]) -> bool:
        writing.set()
        time.sleep(0.3)
        return original(row)

    monkeypatch.setattr(experiments, "add_result", slow_add_result)
    runner = Runner(experiments, Fleet(), [Contains()], concurrency=1)
    task = asyncio.ensure_future(runner.run(experiment["id"], datasets.items("colours")))
    while not writing.is_set():
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(experiments.rows(experiment["id"])) == 1
    assert experiments.get(experiment["id"])["status"] == "failed"


async def test_the_report_figures(database) -> None:  # type: ignore[no-untyped-def]
    datasets, experiments, experiment = _setup(database, 12, ("good", "bad", "broken"))
    await Runner(experiments, Fleet(), [Contains()]).run(
        experiment["id"], datasets.items("colours")
    )
    rows = experiments.rows(experiment["id"])
    summary = summarize(experiments.get(experiment["id"]), rows)
    good, bad, broken = (summary["targets"][t] for t in ("good", "bad", "broken"))
    assert (good["mean"], bad["mean"], broken["mean"]) == (1.0, 0.5, 0.0)
    assert good["ci95"] == [1.0, 1.0] and bad["ci95"][0] < 0.5 < bad["ci95"][1]
    assert (broken["errors"], broken["cost"]["per_success_usd"]) == (12, None)
    assert good["cost"]["per_item_usd"] == pytest.approx(0.002)
    assert bad["cost"]["per_success_usd"] == pytest.approx(0.004)  # 12 × 0.002 over 6 passed
    # latencies 0.1, 0.2, 0.3 (four of each): p50 0.2
    assert good["latency"]["p50_s"] == pytest.approx(0.2)
    first = next(
        c for c in summary["comparisons"] if c["target"] == "bad" and c["metric"] == "pass"
    )
    assert first["mean"] == pytest.approx(-0.5) and first["p_value"] < 0.05
    assert failing_targets(summary, 0.6) == ["bad", "broken"]
    odd = disagreements(rows, ["good", "bad", "broken"])
    assert {d["item"] for d in odd} == {f"i{n}" for n in range(12)}  # broken fails even ones


async def test_the_html_page_escapes_answers(database) -> None:  # type: ignore[no-untyped-def]
    datasets, experiments, experiment = _setup(database, 2, ("good", "bad"))

    class Evil(Fleet):
        async def chat(self, body: dict[str, Any]) -> Reply:
            reply = await super().chat(body)
            return Reply(200, text="<script>alert(1)</script> " + (reply.text or ""),
                         latency_s=0.1)  # fmt: skip

    await Runner(experiments, Evil(), [Contains()]).run(experiment["id"], datasets.items("colours"))
    rows = experiments.rows(experiment["id"])
    summary = summarize(experiments.get(experiment["id"]), rows)
    page = html.render(summary, rows, disagreements(rows, ["good", "bad"]))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<svg") == 2


async def test_pairwise_verdicts_are_stored_once_and_summarized(database) -> None:  # type: ignore[no-untyped-def]
    from inferline.evals.judges import JudgeSpec, PairwiseJudge
    from inferline.evals.pairwise import judge_pairs

    datasets, experiments, experiment = _setup(database, 6, ("good", "bad"))
    items = datasets.items("colours")
    await Runner(experiments, Fleet(), [Contains()]).run(experiment["id"], items)

    class RedLover:
        """Prefers the answer that says red, in either place."""

        async def chat(self, body: dict[str, Any]) -> Reply:
            data = body["messages"][-1]["content"]
            a = data.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
            b = data.split("Answer B:\n")[1].split("\n\nWhich")[0]
            winner = "tie" if ("red" in a) == ("red" in b) else ("A" if "red" in a else "B")
            return Reply(200, text=f'{{"winner": "{winner}"}}', cost_usd=0.001)

    judge = PairwiseJudge(JudgeSpec("cmp", 1), RedLover())
    assert await judge_pairs(experiments, experiment["id"], ("good", "bad"), items, judge) == 6
    assert await judge_pairs(experiments, experiment["id"], ("good", "bad"), items, judge) == 0
    summary = summarize(experiments.get(experiment["id"]), experiments.rows(experiment["id"]))
    (pair,) = summary["pairwise"]
    # bad says blue on odd items (3 losses), red on even ones (3 ties)
    assert (pair["wins"], pair["losses"], pair["ties"]) == (0, 3, 3)
    assert pair["win_rate"] == pytest.approx(0.25) and pair["consistent"] == 1.0
    assert pair["cost_usd"] == pytest.approx(0.012)
    assert set(summary["targets"]) == {"good", "bad"}  # verdicts are not a target
