"""Checks that ask a model again — an LLM judge and the agreement of more samples — with a
scripted inner generator: their requests, their verdicts, and their cost joined to the
request's route report."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from inferline.core import CompletionOutput, GenerationRequest, RequestMetrics, RequestOutput
from inferline.core.outputs import Attempt, RouteReport
from inferline.core.sampling_params import SamplingParams
from inferline.guard import GuardCheck, GuardedGenerator, GuardPolicy
from inferline.guard.opinions import short_answer

pytestmark = pytest.mark.anyio


class Panel:
    """Answers the question with ``answer``; a judge with ``score``; samples with ``samples``
    (cycled). Each answer is one attempt costing ``cost``."""

    def __init__(self, answer: str, score: Any = 0.9, samples: tuple[str, ...] = ()) -> None:
        self.answer, self.score, self.samples = answer, score, samples
        self.requests: list[GenerationRequest] = []

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        self.requests.append(request)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        if request.request_id.endswith("-judge"):
            texts = [json.dumps({"score": self.score}) if self.score is not None else "meh"]
        elif request.request_id.endswith("-agreement"):
            texts = [self.samples[i % len(self.samples)] for i in range(request.params.n)]
        else:
            texts = [self.answer]
        report = RouteReport(request.model)
        attempt = Attempt(1, request.model, "first", time.time())
        attempt.cost_usd = 0.01
        report.attempts.append(attempt)
        outs = [CompletionOutput(i, text=t, text_delta=t, num_tokens=3, num_tokens_delta=3,
                                 finish_reason="stop") for i, t in enumerate(texts)]  # fmt: skip
        yield RequestOutput(request.request_id, None, [], outs, True, RequestMetrics(time.time()),
                            num_prompt_tokens=5, model=request.model, route=report)  # fmt: skip


def guarded(panel: Panel, check: GuardCheck) -> GuardedGenerator:
    return GuardedGenerator(panel, {"bot": GuardPolicy("bot", (check,), abstain_text="No.")})


def ask(text: str = "What is the capital of France?") -> GenerationRequest:
    params = SamplingParams(temperature=0.0, max_tokens=8)
    return GenerationRequest("r1", messages=[{"role": "user", "content": text}], model="bot",
                             params=params, key_id="key_1")  # fmt: skip


JUDGE = GuardCheck("judge", "output", "judge", "abstain", route="judge-route",
                   rubric="Is the answer correct?", below=0.5)  # fmt: skip


async def test_a_judge_scores_the_answer_and_its_cost_joins_the_request() -> None:
    panel = Panel("Paris.", score=0.9)
    outs = [o async for o in await guarded(panel, JUDGE).submit(ask())]
    final = outs[-1]
    assert final.outputs[0].text == "Paris." and final.route is not None
    judge_request = panel.requests[1]
    assert judge_request.model == "judge-route" and judge_request.key_id == "key_1"
    assert judge_request.cache == "no-store" and judge_request.params.temperature == 0.0
    assert judge_request.params.structured is not None  # the score comes as JSON
    assert "Paris." in judge_request.messages[-1]["content"]  # type: ignore[index]
    assert [a.reason for a in final.route.attempts] == ["first", "judge"]
    assert final.route.cost_usd == pytest.approx(0.02)
    assert final.route.decision.checks[0].score == 0.9  # type: ignore[union-attr]


@pytest.mark.parametrize("score", [0.2, None])
async def test_a_low_or_missing_judge_score_abstains(score: float | None) -> None:
    (out,) = [o async for o in await guarded(Panel("Lyon.", score=score), JUDGE).submit(ask())]
    assert out.outputs[0].text == "No." and out.route.decision.decision == "abstain"  # type: ignore[union-attr]


async def test_agreement_of_more_samples() -> None:
    check = GuardCheck("agree", "output", "agreement", "abstain", samples=4, below=0.75)
    panel = Panel("Paris.", samples=("paris", "Paris!", " PARIS.", "Lyon"))
    outs = [o async for o in await guarded(panel, check).submit(ask())]
    assert outs[-1].outputs[0].text == "Paris."  # 3 of 4 agree: 0.75 is not below 0.75
    sampled = panel.requests[1]
    assert sampled.params.n == 4 and sampled.params.temperature == 0.8
    assert sampled.model == "bot" and sampled.params.seed is None
    split = Panel("Paris.", samples=("Paris", "Lyon"))
    (out,) = [o async for o in await guarded(split, check).submit(ask())]
    assert out.route.decision.score == 0.5 and out.outputs[0].text == "No."  # type: ignore[union-attr]


def test_short_answers_fold_case_punctuation_and_later_lines() -> None:
    assert short_answer("  Paris!\nIt is the capital.") == short_answer("paris")
    assert short_answer("New  York.") == "new york" != short_answer("York")
