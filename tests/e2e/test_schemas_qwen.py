"""20 varied JSON schemas on Qwen2.5-Coder-0.5B through the real openai SDK: every output
parses and validates (formats included), also when ``max_tokens`` cuts it; ``parse()`` works.

Features covered: required and optional fields, nested objects, arrays with item bounds,
arrays of objects, top-level arrays, nested arrays, enums (strings and integers), const,
numbers with inclusive and exclusive bounds, multipleOf, string length bounds, patterns,
formats (date, email), nullable unions, anyOf, oneOf, $defs/$ref, additionalProperties maps.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QWEN = "qwen2.5-coder-0.5b"
DATA = Path(__file__).parent / "data" / "schemas.json"
CASES: list[tuple[str, dict[str, Any]]] = [
    (case["prompt"], case["schema"]) for case in json.loads(DATA.read_text(encoding="utf-8"))
]


def ask(client: openai.OpenAI, prompt: str, schema: dict[str, Any], max_tokens: int) -> Any:
    return client.chat.completions.create(
        model=QWEN,
        messages=[{"role": "user", "content": prompt}],
        response_format={"type": "json_schema", "json_schema": {"name": "out", "schema": schema}},
        temperature=0,
        max_tokens=max_tokens,
    ).choices[0]


def check(choice: Any, schema: dict[str, Any]) -> None:
    value = json.loads(choice.message.content)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


def test_twenty_schemas_all_validate(qwen) -> None:  # type: ignore[no-untyped-def]
    assert len(CASES) == 20
    with ThreadPoolExecutor(max_workers=10) as pool:
        choices = list(pool.map(lambda case: ask(qwen, case[0], case[1], 200), CASES))
    for (prompt, schema), choice in zip(CASES, choices, strict=True):
        assert choice.finish_reason in ("stop", "length"), prompt
        check(choice, schema)
    assert sum(c.finish_reason == "stop" for c in choices) >= 18


def test_outputs_cut_by_max_tokens_still_validate(qwen) -> None:  # type: ignore[no-untyped-def]
    # invoice, cities, review: 60, 40 and 23 tokens when free to finish (2026-12-03 kernels)
    cut = [(CASES[6], 40), (CASES[13], 32), (CASES[17], 16)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        choices = list(pool.map(lambda c: ask(qwen, c[0][0], c[0][1], c[1]), cut))
        free = list(pool.map(lambda c: ask(qwen, c[0][0], c[0][1], 200), cut))
    for ((_, schema), limit), choice, whole in zip(cut, choices, free, strict=True):
        check(choice, schema)
        # each answer was really cut: it hit the limit, or it is shorter than its free
        # answer (the JSON is closed early to fit, then may end on EOS and read "stop")
        shorter = len(choice.message.content) < len(whole.message.content)
        assert choice.finish_reason == "length" or shorter, limit


class Line(BaseModel):
    item: str = Field(max_length=30)
    quantity: int = Field(ge=1, le=100)
    unit_price: float = Field(ge=0)


class Invoice(BaseModel):
    lines: list[Line] = Field(min_length=1, max_length=3)
    total: float = Field(ge=0)


def test_parse_with_a_nested_pydantic_model(qwen) -> None:  # type: ignore[no-untyped-def]
    completion = qwen.chat.completions.parse(
        model=QWEN,
        messages=[{"role": "user", "content": CASES[6][0]}],
        response_format=Invoice,
        temperature=0,
        max_tokens=150,
    )
    invoice = completion.choices[0].message.parsed
    assert isinstance(invoice, Invoice) and invoice.lines
