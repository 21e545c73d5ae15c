"""Constrained decoding on the real model: outputs always match; free rows are unaffected."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from inferline.core import InvalidParameterError, SamplingParams
from inferline.core.structured import StructuredOutput
from tests.conftest import run_each

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer",
     "minimum": 0, "maximum": 120}}, "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
     "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}, "required": ["colour", "hex"]},
    {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "number"},
     "minItems": 1, "maxItems": 3}}, "required": ["items"]},
    {"type": "object", "properties": {"city": {"type": "object", "properties": {
     "name": {"type": "string", "maxLength": 20}, "population": {"type": "integer"}},
     "required": ["name"]}, "ok": {"type": "boolean"}}, "required": ["city", "ok"]},
]  # fmt: skip


def prompt(engine, text: str) -> str:  # type: ignore[no-untyped-def]
    return str(engine.tokenizer.apply_chat_template([{"role": "user", "content": text}]))


def run(engine, requests: list[tuple[str, SamplingParams]]) -> list[Any]:  # type: ignore[no-untyped-def]
    outputs = run_each(engine, [(prompt(engine, p), params) for p, params in requests])
    return [o.outputs[0] for o in outputs]


def constrained(kind: str, spec: Any = "", max_tokens: int = 80) -> SamplingParams:
    text = spec if isinstance(spec, str) else json.dumps(spec)
    return SamplingParams(
        max_tokens=max_tokens, temperature=0, structured=StructuredOutput(kind, text)
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engine(make_engine):  # type: ignore[no-untyped-def]
    return make_engine()


def test_json_schemas_always_validate(engine) -> None:  # type: ignore[no-untyped-def]
    outputs = run(engine, [("Describe something as JSON.", constrained("json_schema", s))
                           for s in SCHEMAS])  # fmt: skip
    for schema, output in zip(SCHEMAS, outputs, strict=True):
        assert output.finish_reason == "stop", output.text
        jsonschema.validate(json.loads(output.text), schema)


def test_json_object_regex_and_choice(engine) -> None:  # type: ignore[no-untyped-def]
    obj, date, choice = run(
        engine,
        [
            ("Give me a person as JSON with name and age.", constrained("json_object")),
            ("When is new year?", constrained("regex", r"\d{4}-\d{2}-\d{2}")),
            ("Is the sky blue?", constrained("choice", ["yes", "no", "maybe"])),
        ],
    )
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date.text)
    assert choice.text in ("yes", "no", "maybe")


def test_free_rows_are_the_same_beside_constrained_ones(engine) -> None:  # type: ignore[no-untyped-def]
    free = SamplingParams(max_tokens=24, temperature=0)
    questions = ["What is the capital of France?", "Name three fruits."]
    alone = run(engine, [(q, free) for q in questions])
    mixed = run(engine, [(questions[0], free), ("JSON please", constrained("json_schema",
                SCHEMAS[0])), (questions[1], free)])  # fmt: skip
    assert [o.text for o in alone] == [mixed[0].text, mixed[2].text]


def test_unsupported_schema_keys_are_named(engine) -> None:  # type: ignore[no-untyped-def]
    schema = {"type": "object", "if": {"properties": {"a": {"type": "string"}}}}
    with pytest.raises(InvalidParameterError, match='"if"'):
        engine.add_request("x", constrained("json_schema", schema))


@pytest.mark.parametrize("max_tokens", [12, 20, 40])
def test_outputs_are_closed_in_time_at_the_max_tokens_cut(engine, max_tokens: int) -> None:  # type: ignore[no-untyped-def]
    rambling = 'Return {"answer": 42} as JSON.'  # unconstrained, this nests without end
    cases = [(rambling, "json_object", {"type": "object"}), (rambling, "json_schema", SCHEMAS[0])]
    if max_tokens >= 20:
        cases.append(("Describe something as JSON.", "json_schema", SCHEMAS[3]))
    outputs = run(
        engine,
        [(q, constrained(kind, "" if kind == "json_object" else schema, max_tokens))
         for q, kind, schema in cases],
    )  # fmt: skip
    for output, (_, _, schema) in zip(outputs, cases, strict=True):
        assert len(output.token_ids) <= max_tokens
        jsonschema.validate(json.loads(output.text), schema)


def test_max_tokens_too_small_for_the_schema_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameterError, match="shortest one found takes") as error:
        engine.add_request("x", constrained("json_schema", SCHEMAS[3], max_tokens=8))
    assert error.value.param == "max_tokens"
