"""Structured output through the real openai SDK: `parse()` with a pydantic model, errors."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.e2e


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)


def test_parse_with_a_pydantic_model(client) -> None:  # type: ignore[no-untyped-def]
    completion = client.chat.completions.parse(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Give me a person as JSON with name and age."}],
        response_format=Person,
        temperature=0,
        max_tokens=60,
    )
    person = completion.choices[0].message.parsed
    assert isinstance(person, Person) and 0 <= person.age <= 120


def test_json_object_and_guided_choice(client) -> None:  # type: ignore[no-untyped-def]
    reply = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Give me a person as JSON with name and age."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=80,
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    choice = client.chat.completions.create(
        model="smollm2-135m",
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        extra_body={"guided_choice": ["yes", "no"]},
        max_tokens=5,
    )
    assert choice.choices[0].message.content in ("yes", "no")


def test_unsupported_schema_features_are_a_400_naming_them(client) -> None:  # type: ignore[no-untyped-def]
    schema = {"type": "object", "if": {"required": ["a"]}}
    with pytest.raises(openai.BadRequestError, match='"if"'):
        client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
        )
    with pytest.raises(openai.BadRequestError, match="response_format.type"):
        client.chat.completions.create(
            model="smollm2-135m",
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "xml"},  # type: ignore[typeddict-item]
        )
