"""Running a route's checks: on the request before it is sent, and on the answer (and its
tool calls) before the client sees it. Each check gives a `CheckOutcome`."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from inferline.core.decisions import CheckOutcome
from inferline.core.errors import InvalidParameterError
from inferline.core.outputs import CompletionOutput, RouteReport
from inferline.core.protocols import GenerationRequest
from inferline.core.structured import json_answer_valid
from inferline.guard.config import GuardCheck
from inferline.guard.detectors import detect
from inferline.guard.opinions import Ask, agreement, judge

# text -> a score in [0, 1] (a class's probability, a similarity); built by the CLI from the
# server's one-pass models, one per classifier check (by the check's name)
Classify = Callable[[str], Awaitable[float]]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def user_texts(request: GenerationRequest) -> list[str]:
    """What the user wrote: every user message (or the prompt), oldest first."""
    if request.messages is None:
        return [request.prompt] if isinstance(request.prompt, str) else []
    return [_text(m.get("content")) for m in request.messages if m.get("role") == "user"]


async def input_outcomes(
    checks: Sequence[GuardCheck], request: GenerationRequest, classifiers: Mapping[str, Classify]
) -> list[CheckOutcome]:
    """Every input check on ``request``."""
    texts = user_texts(request)
    last = texts[-1] if texts else ""
    outcomes = []
    for check in checks:
        started = time.perf_counter()
        if check.kind == "missing_context":
            fired, score, detail = _missing(check, request.variables)
        elif check.kind == "pattern":
            fired, score, detail = _pattern(check, "\n".join(texts))
        else:
            fired, score, detail = await _on_text(check, last, classifiers)
        outcomes.append(_outcome(check, fired, score, detail, started))
    return outcomes


async def output_outcomes(
    checks: Sequence[GuardCheck],
    completion: CompletionOutput,
    request: GenerationRequest,
    classifiers: Mapping[str, Classify],
    ask: Ask | None = None,
    report: RouteReport | None = None,
) -> list[CheckOutcome]:
    """Every output and tool-call check on one completion of the answer (``ask`` serves the
    judge's and the samples' requests; their attempts join ``report``)."""
    outcomes = []
    for check in checks:
        started = time.perf_counter()
        if check.kind in ("judge", "agreement"):
            assert ask is not None
            if check.kind == "judge":
                question = (user_texts(request) or [""])[-1]
                verdict = await judge(check, request, question, completion.text, ask, report)
            else:
                verdict = await agreement(check, request, completion.text, ask, report)
            fired, score, detail = verdict
        elif check.on == "tool_call":
            fired, score, detail = _tool(check, completion)
        elif check.kind == "logprob":
            fired, score, detail = _logprob(check, completion)
        elif check.kind == "json_schema":
            valid = json_answer_valid(completion.text, request.params.structured)
            fired, score, detail = not valid, None, None if valid else "invalid JSON"
        else:
            fired, score, detail = await _on_text(check, completion.text, classifiers)
        outcomes.append(_outcome(check, fired, score, detail, started))
    return outcomes


def _outcome(
    check: GuardCheck, fired: bool, score: float | None, detail: str | None, started: float
) -> CheckOutcome:
    took = time.perf_counter() - started
    return CheckOutcome(check.name, check.on, check.kind, check.action, fired, score, detail, took)


async def _on_text(
    check: GuardCheck, text: str, classifiers: Mapping[str, Classify]
) -> tuple[bool, float | None, str | None]:
    if check.kind == "pattern":
        return _pattern(check, text)
    if check.kind == "length":
        assert check.max_chars is not None
        return len(text) > check.max_chars, float(len(text)), None
    try:
        score = await classifiers[check.name](text)
    except InvalidParameterError as exc:
        return True, None, f"could not score: {exc}"  # unscored is not vouched for
    assert check.above is not None
    return score > check.above, score, check.label or None


def _pattern(check: GuardCheck, text: str) -> tuple[bool, float | None, str | None]:
    found = detect(check.detectors, text)
    if found is None and check.pattern and re.search(check.pattern, text):
        found = "pattern"
    return found is not None, None, found


def _missing(
    check: GuardCheck, variables: Mapping[str, Any] | None
) -> tuple[bool, float | None, str | None]:
    given = variables or {}
    for name in check.variables:
        value = given.get(name)
        if value is None or (isinstance(value, str | list | dict) and not value):
            return True, None, name
        if isinstance(value, str) and not value.strip():
            return True, None, name
    return False, None, None


def _logprob(
    check: GuardCheck, completion: CompletionOutput
) -> tuple[bool, float | None, str | None]:
    logprobs = completion.logprobs or []
    if not logprobs:
        return True, None, "no logprobs"
    values = [lp.logprob for lp in logprobs]
    mean = sum(values) / len(values)
    if check.min_mean is not None and mean < check.min_mean:
        return True, mean, "mean"
    if check.min_token is not None and min(values) < check.min_token:
        return True, min(values), "min_token"
    if check.max_entropy is not None:
        entropy = mean_entropy(logprobs)
        if entropy is not None and entropy > check.max_entropy:
            return True, entropy, "entropy"
    return False, mean, None


def mean_entropy(logprobs: Sequence[Any]) -> float | None:
    """The mean, over tokens, of the entropy (nats) of each step's returned alternatives
    (renormalised: the tail beyond them is unknown); None without alternatives."""
    entropies = []
    for step in logprobs:
        if not step.top:
            continue
        probs = [math.exp(lp) for _, _, lp in step.top]
        total = sum(probs)
        entropies.append(-sum(p / total * math.log(p / total) for p in probs if p > 0))
    return sum(entropies) / len(entropies) if entropies else None


def _tool(check: GuardCheck, completion: CompletionOutput) -> tuple[bool, float | None, str | None]:
    for call in completion.tool_calls:
        if check.tools and call.name not in check.tools:
            continue
        if check.arguments_pattern and not re.search(check.arguments_pattern, call.arguments):
            continue
        return True, None, call.name
    return False, None, None


def call_dicts(completion: CompletionOutput) -> list[dict[str, Any]]:
    """A completion's tool calls as OpenAI message entries."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in completion.tool_calls
    ]
