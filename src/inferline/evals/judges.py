"""LLM judges, run through the gateway like any request (their cost recorded): a rubric
prompt from the registry, pinned to one version for a whole run, on its own route or the
one named (``judge:PROMPT[@VERSION][/MODEL]``).

The rubric's messages come first (rendered with the variables ``input``, ``output`` and
``expected``); then a user message that carries the question and the answer as data, and
the reply format, which structured output enforces: ``{"score": s}``, s in [0, 1], for a
pointwise judge; ``{"winner": "A" | "B" | "tie"}`` for a pairwise one, which is asked
twice with the answers swapped: a win counts only when both orders agree (MT-Bench's
judge kept its verdict under a swap only 65% of the time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inferline.evals.gateway import Gateway, Reply
from inferline.evals.items import split_input
from inferline.evals.scorers import Score
from inferline.evals.targets import parse_target
from inferline.store.datasets import DatasetItem

_SCORE = {"type": "object", "additionalProperties": False, "required": ["score"],
          "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}}}  # fmt: skip
_WINNER = {"type": "object", "additionalProperties": False, "required": ["winner"],
           "properties": {"winner": {"enum": ["A", "B", "tie"]}}}  # fmt: skip
PASS_AT = 0.5
_SCORE_REPLY = 'Reply with JSON {"score": s}, s from 0 (fails the rubric) to 1 (meets it).'


@dataclass(frozen=True)
class JudgeSpec:
    """A rubric prompt pinned to a version, and the model it runs on (None: its route)."""

    prompt_id: str
    version: int
    model: str | None = None

    @property
    def label(self) -> str:
        """``PROMPT@VERSION[/MODEL]``."""
        return f"{self.prompt_id}@{self.version}" + (f"/{self.model}" if self.model else "")


def judge_spec(text: str, resolve: Any) -> JudgeSpec:
    """``PROMPT[@VERSION][/MODEL]`` with the version (or label) resolved to a number by
    ``resolve(prompt_id, version) -> int``, so every item of a run meets the same judge."""
    target = parse_target(f"prompt:{text}")
    assert target.prompt_id is not None
    return JudgeSpec(target.prompt_id, int(resolve(target.prompt_id, target.prompt_version)),
                     target.model)  # fmt: skip


def question_of(item: DatasetItem) -> str:
    """The item's question as text: its messages, or its variables as JSON."""
    messages, variables = split_input(item.input)
    parts = [f"{m['role']}: {m.get('content')}" for m in messages]
    if variables:
        parts.append(json.dumps(variables, ensure_ascii=False))
    return "\n".join(parts)


def _body(
    spec: JudgeSpec, variables: dict[str, str], data: str, schema: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": {"id": spec.prompt_id, "version": spec.version, "variables": variables},
        "messages": [{"role": "user", "content": data}],
        "temperature": 0.0, "max_tokens": 32,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "verdict", "schema": schema, "strict": True}},
        "metadata": {"inferline_eval": "judge", "judge": spec.label},
    }  # fmt: skip
    if spec.model is not None:
        body["model"] = spec.model
    return body


def _field(reply: Reply, name: str) -> Any:
    if not reply.ok:
        raise ValueError(f"judge failed ({reply.status_code}): {reply.error}")
    assert reply.text is not None
    return json.loads(reply.text)[name]


class Judge:
    """A pointwise judge: scores one answer against the rubric."""

    def __init__(self, spec: JudgeSpec, gateway: Gateway, pass_at: float = PASS_AT) -> None:
        self.spec, self.gateway, self.pass_at = spec, gateway, pass_at
        self.name = f"judge:{spec.label}"

    async def score(self, item: DatasetItem, output: str) -> Score:
        """The judge's score (None when it gave none: the reason is in ``detail``)."""
        expected = "" if item.expected is None else _text(item.expected)
        question = question_of(item)
        data = (f"Question:\n{question}\n\nAnswer:\n{output}\n\n"
                + (f"Reference answer:\n{expected}\n\n" if expected else "")
                + _SCORE_REPLY)  # fmt: skip
        variables = {"input": question, "output": output, "expected": expected}
        reply = await self.gateway.chat(_body(self.spec, variables, data, _SCORE))
        try:
            value = float(_field(reply, "score"))
        except (ValueError, KeyError, TypeError) as exc:
            return Score(None, False, str(exc)[:300], reply.cost_usd)
        value = min(1.0, max(0.0, value))
        return Score(value, value >= self.pass_at, None, reply.cost_usd)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class PairVerdict:
    """Which of two answers the judge preferred in both orders (``first``, ``second`` or
    ``tie``; a verdict that flips with the order is a tie), and whether the two orders
    agreed."""

    winner: str
    consistent: bool
    orders: tuple[str | None, str | None]  # the raw verdicts: (first shown as A, as B)
    cost_usd: float


class PairwiseJudge:
    """Compares two answers to one item, asking twice with their places swapped."""

    def __init__(self, spec: JudgeSpec, gateway: Gateway) -> None:
        self.spec, self.gateway = spec, gateway
        self.name = f"pairwise:{spec.label}"

    async def compare(self, item: DatasetItem, first: str, second: str) -> PairVerdict:
        """The verdict on ``first`` against ``second``."""
        straight, cost_a = await self._ask(item, first, second)
        swapped, cost_b = await self._ask(item, second, first)
        mapped = {"A": "second", "B": "first", "tie": "tie"}.get(swapped or "")
        direct = {"A": "first", "B": "second", "tie": "tie"}.get(straight or "")
        consistent = direct is not None and direct == mapped
        winner = direct if consistent and direct is not None else "tie"
        return PairVerdict(winner, consistent, (straight, swapped), cost_a + cost_b)

    async def _ask(self, item: DatasetItem, a: str, b: str) -> tuple[str | None, float]:
        question = question_of(item)
        data = (f"Question:\n{question}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n"
                'Which answer meets the rubric better? Reply with JSON {"winner": "A"}, '
                '{"winner": "B"} or {"winner": "tie"}.')  # fmt: skip
        variables = {"input": question, "output": a, "output_b": b, "expected": ""}
        reply = await self.gateway.chat(_body(self.spec, variables, data, _WINNER))
        try:
            return str(_field(reply, "winner")), reply.cost_usd
        except (ValueError, KeyError, TypeError):
            return None, reply.cost_usd
