"""Scorers: an answer (and its item) -> a score in [0, 1] and a pass.

Named on the command line as ``NAME[:ARG]``: ``exact``, ``contains``, ``regex[:PATTERN]``
(else the item's expected value is the pattern), ``json_schema:FILE``, ``json_field[:PATH]``
(the answer's JSON equals the expected object on PATH, or on every field of it),
``numeric[:TOL]`` (absolute, or ``2%`` relative), ``embedding[:THRESHOLD]`` (cosine of the
answer's and the expected text's MiniLM embeddings), ``judge:PROMPT[@VERSION]`` (see
`judges`) and ``python:MODULE:FUNCTION`` or ``python:ENTRY_POINT`` (group
``inferline.scorers``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inferline.core.errors import InvalidParameterError
from inferline.store.datasets import DatasetItem

_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```\s*$", re.DOTALL)

Embed = Callable[[Sequence[str]], Awaitable[list[list[float]]]]


@dataclass(frozen=True)
class Score:
    """A scorer's verdict: ``value`` in [0, 1] (None: could not score), ``passed``, why,
    and what scoring cost (a judge's requests)."""

    value: float | None
    passed: bool
    detail: str | None = None
    cost_usd: float = 0.0


class Scorer(Protocol):
    """Scores one answer."""

    name: str

    async def score(self, item: DatasetItem, output: str) -> Score:
        """The answer ``output`` to ``item``, scored."""
        ...


def _binary(ok: bool, detail: str | None = None) -> Score:
    return Score(1.0 if ok else 0.0, ok, detail)


def _expected_text(item: DatasetItem, scorer: str) -> list[str]:
    expected = item.expected
    if expected is None:
        raise InvalidParameterError(f"item {item.key!r} has no expected value for {scorer}")
    values = expected if isinstance(expected, list) else [expected]
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


class Exact:
    """The answer, stripped, equals the expected text (or one of a list of them)."""

    name = "exact"

    async def score(self, item: DatasetItem, output: str) -> Score:
        """1 when equal."""
        return _binary(output.strip() in {e.strip() for e in _expected_text(item, self.name)})


class Contains:
    """The share of expected strings the answer contains (case-insensitive); passes when
    it contains all of them."""

    name = "contains"

    async def score(self, item: DatasetItem, output: str) -> Score:
        """The share found."""
        wanted = _expected_text(item, self.name)
        folded = output.casefold()
        found = sum(1 for w in wanted if w.casefold() in folded)
        return Score(found / len(wanted), found == len(wanted))


class Regex:
    """The answer matches a pattern (the argument, else the item's expected value)."""

    name = "regex"

    def __init__(self, pattern: str | None = None) -> None:
        self.pattern = _compiled(pattern) if pattern else None

    async def score(self, item: DatasetItem, output: str) -> Score:
        """1 when it matches (``re.search``)."""
        pattern = self.pattern or _compiled(_expected_text(item, self.name)[0])
        return _binary(pattern.search(output) is not None)


def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidParameterError(f"bad regex {pattern!r}: {exc}", "scorer") from None


def parse_json_answer(output: str) -> Any:
    """The answer as JSON (a fenced ```json block is unwrapped); raises ValueError."""
    text = output.strip()
    fenced = _FENCE.match(text)
    return json.loads(fenced.group(1) if fenced else text)


class JsonSchema:
    """The answer is JSON valid against a schema."""

    name = "json_schema"

    def __init__(self, schema: dict[str, Any]) -> None:
        import jsonschema

        try:
            validator_class = jsonschema.validators.validator_for(schema)
            validator_class.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise InvalidParameterError(f"bad JSON schema: {exc.message}", "scorer") from None
        self.validator = validator_class(schema)

    async def score(self, item: DatasetItem, output: str) -> Score:
        """1 when it parses and validates."""
        try:
            answer = parse_json_answer(output)
        except ValueError:
            return _binary(False, "not JSON")
        error = next(iter(self.validator.iter_errors(answer)), None)
        if error is None:
            return _binary(True)
        where = "/".join(str(p) for p in error.absolute_path)
        return _binary(False, f"{where}: {error.message}"[:300])


class JsonField:
    """The answer's JSON equals the expected object at ``path`` (dotted), or on each of the
    expected object's fields (the share equal)."""

    name = "json_field"

    def __init__(self, path: str | None = None) -> None:
        self.path = path.split(".") if path else None

    async def score(self, item: DatasetItem, output: str) -> Score:
        """1 when every compared field is equal."""
        expected = item.expected
        if not isinstance(expected, dict):
            raise InvalidParameterError(f"item {item.key!r}: json_field needs an expected object")
        try:
            answer = parse_json_answer(output)
        except ValueError:
            return _binary(False, "not JSON")
        if self.path is not None:
            return _binary(_at(answer, self.path) == _at(expected, self.path))
        same = [k for k in expected if isinstance(answer, dict) and answer.get(k) == expected[k]]
        differ = [k for k in expected if k not in same]
        detail = f"differs: {', '.join(differ)}" if differ else None
        return Score(len(same) / max(1, len(expected)), not differ, detail)


def _at(value: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdecimal() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class Numeric:
    """The answer's last number is the expected number within a tolerance (absolute, or
    relative when written ``2%``)."""

    name = "numeric"

    def __init__(self, tolerance: str | None = None) -> None:
        text = tolerance or "0"
        self.relative = text.endswith("%")
        try:
            self.tolerance = float(text.rstrip("%")) / (100 if self.relative else 1)
        except ValueError:
            raise InvalidParameterError(f"numeric tolerance {text!r} is not a number") from None

    async def score(self, item: DatasetItem, output: str) -> Score:
        """1 within the tolerance."""
        try:
            expected = float(str(item.expected).replace(",", ""))
        except ValueError:
            raise InvalidParameterError(f"item {item.key!r}: expected is not a number") from None
        numbers = _NUMBER.findall(output)
        if not numbers:
            return _binary(False, "no number")
        got = float(numbers[-1].replace(",", ""))
        limit = self.tolerance * abs(expected) if self.relative else self.tolerance
        return _binary(math.isclose(got, expected, abs_tol=limit + 1e-12), f"got {got:g}")


class Embedding:
    """Cosine similarity of the answer's and the expected text's embeddings (clipped to
    [0, 1]); passes at ``threshold``."""

    name = "embedding"

    def __init__(self, embed: Embed, threshold: str | None = None) -> None:
        self.embed = embed
        self.threshold = float(threshold) if threshold else 0.8

    async def score(self, item: DatasetItem, output: str) -> Score:
        """The best cosine over the expected texts."""
        expected = _expected_text(item, self.name)
        vectors = await self.embed([output, *expected])
        best = max(sum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:])
        value = min(1.0, max(0.0, best))
        return Score(value, value >= self.threshold, f"cosine {best:.3f}")
