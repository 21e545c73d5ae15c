"""Acceptance checks of a cascade stage's answer (`CheckConfig`), with the failed one named.

The logprob checks read the answer's own token logprobs (a local engine computes them for
free; a remote upstream is asked for them); ``json_schema`` validates against the request's
own schema (``response_format``), or just parses when the request has none; ``similarity``
asks a `Scorer` (given by the CLI: a sentence-embeddings model of the same server) how
close the answer is to the question.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from inferline.core.errors import InvalidParameterError
from inferline.core.outputs import CompletionOutput
from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import SamplingParams
from inferline.core.structured import json_answer_valid
from inferline.router.config import CheckConfig

# (question, answer) -> a score; raises InvalidParameterError for text it cannot score
Scorer = Callable[[str, str], Awaitable[float]]


@dataclass(frozen=True)
class CheckResult:
    """Whether an answer passed; ``failed`` names the first failed check (and its value)."""

    passed: bool
    failed: str | None = None
    value: float | None = None


async def run_checks(
    checks: Sequence[CheckConfig],
    output: CompletionOutput,
    params: SamplingParams,
    question: str,
    scorers: Mapping[str, Scorer],
) -> CheckResult:
    """Every check on one completion; the first failure decides."""
    for check in checks:
        if check.kind == "similarity":
            passed, value = await _similar(check, output.text, question, scorers)
        else:
            passed, value = _run(check, output, params)
        if not passed:
            return CheckResult(False, check.kind, value)
    return CheckResult(True)


def question_of(request: GenerationRequest) -> str:
    """What an answer answers: the last user message, or the prompt."""
    if request.messages:
        users = [m for m in request.messages if m.get("role") == "user"]
        return str((users or request.messages)[-1].get("content") or "")
    return request.prompt if isinstance(request.prompt, str) else ""


async def _similar(
    check: CheckConfig, answer: str, question: str, scorers: Mapping[str, Scorer]
) -> tuple[bool, float | None]:
    try:
        score = await scorers[check.model](question, answer)
    except InvalidParameterError:
        return False, None  # too long to score: do not accept it unchecked
    return score >= check.threshold, score


def _run(
    check: CheckConfig, output: CompletionOutput, params: SamplingParams
) -> tuple[bool, float | None]:
    if check.kind in ("logprob_mean", "logprob_min"):
        values = [lp.logprob for lp in output.logprobs or []]
        if not values:
            return False, None  # nothing to judge the answer by: do not accept it
        value = sum(values) / len(values) if check.kind == "logprob_mean" else min(values)
        return value >= check.threshold, value
    if check.kind == "regex":
        return re.search(check.pattern, output.text) is not None, None
    return json_answer_valid(output.text, params.structured), None
