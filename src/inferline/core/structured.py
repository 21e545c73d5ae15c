"""What a constrained request asks for: a JSON object, a JSON Schema, a regex, a choice,
or tool calls (`inferline.core.tool_calls`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from inferline.core.errors import InvalidParameterError

StructuredKind = Literal["json_object", "json_schema", "regex", "choice", "tool_calls"]
KINDS = ("json_object", "json_schema", "regex", "choice", "tool_calls")


@dataclass(frozen=True)
class StructuredOutput:
    """The constraint on a request's output.

    Attributes:
        kind: ``json_object`` (any JSON object), ``json_schema`` (``spec`` is the schema as
            JSON text), ``regex`` (``spec`` is the pattern) or ``choice`` (``spec`` is a JSON
            list of the allowed strings) or ``tool_calls`` (``spec`` is a `ToolCalling` as
            JSON: free text and/or calls in the Hermes format, each call's JSON valid).
        spec: the constraint's text (empty for ``json_object``); hashable, so compiled
            grammars can be cached by it.
        param: the request field it came from, for error messages.
    """

    kind: StructuredKind
    spec: str = ""
    param: str = "response_format"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidParameterError(f"unknown structured output kind {self.kind!r}", self.param)
        if self.kind == "choice":
            choices = json.loads(self.spec)
            if not choices or not all(isinstance(c, str) and c for c in choices):
                raise InvalidParameterError(
                    "the choices must be a non-empty list of non-empty strings", self.param
                )
        if self.kind in ("json_schema", "regex", "tool_calls") and not self.spec:
            raise InvalidParameterError(f"a {self.kind} constraint needs a value", self.param)


def json_answer_valid(text: str, structured: StructuredOutput | None) -> bool:
    """Whether ``text`` is JSON, valid against ``structured``'s schema when it is a
    ``json_schema`` (a schema the validator cannot read is not held against the answer: the
    engine accepted it)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if structured is None or structured.kind != "json_schema":
        return True
    import jsonschema

    try:
        jsonschema.validate(value, json.loads(structured.spec))
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        return True
    return True
