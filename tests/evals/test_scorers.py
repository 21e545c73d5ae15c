"""Every scorer on fixed cases with hand-checked scores; a judge and its position swap
against a scripted gateway."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inferline.core.errors import InvalidParameterError
from inferline.evals.gateway import Reply
from inferline.evals.judges import Judge, JudgeSpec, PairwiseJudge, judge_spec
from inferline.evals.scorer_specs import ScorerContext, as_score, build_scorer
from inferline.evals.scorers import Score
from inferline.store.datasets import DatasetItem

pytestmark = pytest.mark.anyio


def _item(expected: Any, value: Any = "Q?") -> DatasetItem:
    return DatasetItem(key="k", input=value, expected=expected)


async def _score(spec: str, expected: Any, output: str, **context: Any) -> Score:
    return await build_scorer(spec, ScorerContext(**context)).score(_item(expected), output)


async def test_text_scorers() -> None:
    assert (await _score("exact", "Paris", "  Paris\n")).value == 1.0
    assert (await _score("exact", "Paris", "paris")).value == 0.0
    assert (await _score("exact", ["Paris", "paris"], "paris")).passed
    half = await _score("contains", ["red", "blue"], "It is RED.")
    assert (half.value, half.passed) == (0.5, False)
    assert (await _score("contains", "blue", "blue-green")).passed
    assert (await _score("regex:^\\d{3}$", None, "123")).passed
    assert not (await _score("regex", "^a+$", "ab")).passed  # the expected value as pattern
    with pytest.raises(InvalidParameterError, match="bad regex"):
        build_scorer("regex:(", ScorerContext())
    with pytest.raises(InvalidParameterError, match="no expected"):
        await _score("exact", None, "x")


async def test_json_scorers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    schema = {"type": "object", "required": ["name", "age"],
              "properties": {"age": {"type": "integer"}}}  # fmt: skip
    (tmp_path / "s.json").write_text(json.dumps(schema))
    spec = "json_schema:s.json"
    ok = await _score(spec, None, '```json\n{"name": "A", "age": 3}\n```', base_dir=tmp_path)
    assert ok.passed
    wrong = await _score(spec, None, '{"name": "A", "age": "3"}', base_dir=tmp_path)
    assert (wrong.value, wrong.detail) == (0.0, "age: '3' is not of type 'integer'")
    missing = await _score(spec, None, '{"name": "A"}', base_dir=tmp_path)
    assert "'age' is a required property" in (missing.detail or "")
    assert (await _score(spec, None, "not json", base_dir=tmp_path)).detail == "not JSON"
    expected = {"name": "A", "age": 3, "city": "Oslo"}
    two_of_three = await _score("json_field", expected, '{"name": "A", "age": 3, "city": "Rome"}')
    assert (two_of_three.value, two_of_three.passed) == (pytest.approx(2 / 3), False)
    assert two_of_three.detail == "differs: city"
    nested = {"user": {"id": 7}}
    assert (await _score("json_field:user.id", nested, '{"user": {"id": 7, "x": 1}}')).passed
    assert not (await _score("json_field:user.id", nested, '{"user": {"id": 8}}')).passed


async def test_numeric_scorer() -> None:
    assert (await _score("numeric", "42", "The answer is 42.")).passed
    assert (await _score("numeric", 1234.5, "Total: 1,234.50")).passed
    assert not (await _score("numeric", "10", "about 10.2")).passed
    assert (await _score("numeric:0.25", "10", "about 10.2")).passed
    assert (await _score("numeric:2%", "200", "it is 203")).passed  # 1.5% off
    assert not (await _score("numeric:1%", "200", "it is 203")).passed
    assert (await _score("numeric", "3", "from 1 to 3")).passed  # the last number counts
    assert (await _score("numeric", "3", "none")).detail == "no number"


async def test_embedding_scorer() -> None:
    vectors = {"cat": [1.0, 0.0], "feline": [0.8, 0.6], "car": [0.0, 1.0]}

    async def embed(texts: list[str]) -> list[list[float]]:
        return [vectors[t] for t in texts]

    near = await _score("embedding:0.75", "feline", "cat", make_embed=lambda: embed)
    assert (near.value, near.passed) == (pytest.approx(0.8), True)
    far = await _score("embedding", ["car", "feline"], "cat", make_embed=lambda: embed)
    assert (far.value, far.passed) == (pytest.approx(0.8), True)  # the best expected text
    with pytest.raises(InvalidParameterError, match="no embedding model"):
        build_scorer("embedding", ScorerContext())


def always_long(item: dict[str, Any], output: str) -> dict[str, Any]:
    """A python scorer for the test: passes answers of at least 5 characters."""
    return {"score": min(1.0, len(output) / 10), "passed": len(output) >= 5}


async def test_python_scorers() -> None:
    result = await _score(f"python:{__name__}:always_long", None, "abcdef")
    assert (result.value, result.passed) == (0.6, True)
    assert as_score(True, "x") == Score(1.0, True)
    assert as_score(0.25, "x") == Score(0.25, False)
    with pytest.raises(InvalidParameterError, match="returned"):
        as_score("yes", "x")
    with pytest.raises(InvalidParameterError, match="entry point"):
        build_scorer("python:no-such-scorer", ScorerContext())
    with pytest.raises(InvalidParameterError, match="unknown scorer"):
        build_scorer("bleu", ScorerContext())


class ScriptedGateway:
    """Answers a judge from a function of the request's user message."""

    def __init__(self, answer: Any) -> None:
        self.answer, self.bodies = answer, []  # type: ignore[var-annotated]

    async def chat(self, body: dict[str, Any]) -> Reply:
        self.bodies.append(body)
        text = self.answer(body["messages"][-1]["content"])
        if text is None:
            return Reply(503, error="upstream down", cost_usd=0.0)
        return Reply(200, text=text, cost_usd=0.001)


async def test_a_judge_scores_through_the_gateway_and_records_its_cost() -> None:
    gateway = ScriptedGateway(
        lambda data: '{"score": 0.9}' if "Paris" in data else '{"score": 0.2}'
    )
    judge = Judge(JudgeSpec("rubric", 3, "large"), gateway)
    item = DatasetItem("k", [{"role": "user", "content": "Capital of France?"}], "Paris")
    good = await judge.score(item, "Paris.")
    assert (good.value, good.passed, good.cost_usd) == (0.9, True, 0.001)
    body = gateway.bodies[0]
    assert body["prompt"] == {"id": "rubric", "version": 3, "variables": {
        "input": "user: Capital of France?", "output": "Paris.", "expected": "Paris"}}  # fmt: skip
    assert body["model"] == "large" and body["temperature"] == 0.0
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["score"]
    failed = await Judge(JudgeSpec("rubric", 3), ScriptedGateway(lambda d: None)).score(item, "x")
    assert failed.value is None and not failed.passed and "503" in (failed.detail or "")
    assert judge_spec("rubric@prod/large", lambda p, v: 7) == JudgeSpec("rubric", 7, "large")


async def test_a_pairwise_judge_counts_a_win_only_when_it_survives_the_swap() -> None:
    item = DatasetItem("k", "Q?", None)

    def prefers_first_shown(data: str) -> str:  # position bias: always "A"
        return '{"winner": "A"}'

    biased = await PairwiseJudge(JudgeSpec("cmp", 1), ScriptedGateway(prefers_first_shown)).compare(
        item, "short", "a much longer answer"
    )
    assert (biased.winner, biased.consistent, biased.orders) == ("tie", False, ("A", "A"))
    assert biased.cost_usd == pytest.approx(0.002)

    def prefers_longer(data: str) -> str:
        a = data.split("Answer A:\n")[1].split("\n\nAnswer B:")[0]
        b = data.split("Answer B:\n")[1].split("\n\nWhich")[0]
        return '{"winner": "A"}' if len(a) > len(b) else '{"winner": "B"}'

    fair = PairwiseJudge(JudgeSpec("cmp", 1), ScriptedGateway(prefers_longer))
    verdict = await fair.compare(item, "short", "a much longer answer")
    assert (verdict.winner, verdict.consistent, verdict.orders) == ("second", True, ("B", "A"))
    assert (await fair.compare(item, "a much longer answer", "short")).winner == "first"
