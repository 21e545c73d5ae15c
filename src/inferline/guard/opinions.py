"""Checks that ask a model again: an LLM ``judge`` (any route scores the answer against the
check's rubric, with structured output) and ``agreement`` (n more samples of the same
question; the share that agree with the answer). Their requests go to the wrapped
generator under the request's key and deadline; their attempts join the request's route
report (reason ``judge`` / ``agreement``), so the trace and the key's spend include them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

from inferline.core.errors import InferlineError
from inferline.core.outputs import RequestOutput, RouteReport
from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import SamplingParams
from inferline.core.structured import StructuredOutput
from inferline.guard.config import GuardCheck

Ask = Callable[[GenerationRequest], Awaitable[RequestOutput]]
Verdict = tuple[bool, float | None, str | None]
_SCORE_SCHEMA = json.dumps({
    "type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}},
    "required": ["score"], "additionalProperties": False,
})  # fmt: skip
_JUDGE_TOKENS = 24
_REPLY = 'Reply with JSON {"score": s}, s from 0 (fails the rubric) to 1 (meets it).'
AGREEMENT_TEMPERATURE = 0.8


def judge_request(
    check: GuardCheck, request: GenerationRequest, question: str, answer: str
) -> GenerationRequest:
    """The judge's request: the rubric, then the question and the answer as data."""
    user = f"Question:\n{question}\n\nAnswer:\n{answer}\n\n{_REPLY}"
    params = SamplingParams(temperature=0.0, max_tokens=_JUDGE_TOKENS,
                            structured=StructuredOutput("json_schema", _SCORE_SCHEMA))  # fmt: skip
    messages = [{"role": "system", "content": check.rubric}, {"role": "user", "content": user}]
    return _derived(request, "judge", check.route, params, messages)


async def judge(
    check: GuardCheck, request: GenerationRequest, question: str, answer: str, ask: Ask,
    report: RouteReport | None,
) -> Verdict:  # fmt: skip
    """Fires when the judge's score is below ``check.below`` (or it gave none)."""
    try:
        output = await ask(judge_request(check, request, question, answer))
    except InferlineError as exc:
        return True, None, f"judge failed: {exc}"  # an unjudged answer is not vouched for
    _join(report, output, "judge")
    try:
        score = float(json.loads(output.outputs[0].text)["score"])
    except (ValueError, KeyError, TypeError, IndexError):
        return True, None, "judge gave no score"
    assert check.below is not None
    return score < check.below, score, None


async def agreement(
    check: GuardCheck, request: GenerationRequest, answer: str, ask: Ask,
    report: RouteReport | None,
) -> Verdict:  # fmt: skip
    """Fires when under ``check.below`` of ``check.samples`` more samples agree with the
    answer (compared as short answers: first line, case, spaces and punctuation ignored)."""
    params = dataclasses.replace(
        request.params, n=check.samples, logprobs=None, seed=None,
        temperature=max(request.params.temperature, AGREEMENT_TEMPERATURE),
    )  # fmt: skip
    try:
        output = await ask(_derived(request, "agreement", request.model, params, request.messages))
    except InferlineError as exc:
        return True, None, f"samples failed: {exc}"
    _join(report, output, "agreement")
    mine = short_answer(answer)
    same = sum(1 for c in output.outputs if short_answer(c.text) == mine)
    score = same / max(1, len(output.outputs))
    assert check.below is not None
    return score < check.below, score, None


def short_answer(text: str) -> str:
    """An answer's first non-empty line, folded: lower case, no punctuation, single spaces."""
    line = next((part for part in text.strip().splitlines() if part.strip()), "")
    folded = unicodedata.normalize("NFKC", line).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", folded).split())


def _derived(
    request: GenerationRequest, kind: str, model: str, params: SamplingParams,
    messages: list[dict[str, Any]] | None,
) -> GenerationRequest:  # fmt: skip
    """A request made for a check: same key, budget, deadline and trace; never cached."""
    return dataclasses.replace(
        request, request_id=f"{request.request_id}-{kind}", model=model, params=params,
        messages=messages if messages is not None else request.messages,
        prompt=None if messages is not None else request.prompt, tools=None,
        cache="no-store", assistant_prefix=None, variables=None,
    )  # fmt: skip


def _join(report: RouteReport | None, output: RequestOutput, reason: str) -> None:
    """The check's attempts added to the request's report (charged, traced)."""
    if report is None or output.route is None:
        return
    for attempt in output.route.attempts:
        attempt.reason = reason
        attempt.number = len(report.attempts) + 1
        report.attempts.append(attempt)
