"""Scorers by name (``--scorer contains``, ``--scorer json_schema:schema.json``,
``--scorer judge:rubric@2``), and scorers written in Python (``python:MODULE:FUNCTION``
or an entry point of the group ``inferline.scorers``): ``f(item, output)`` returning a
bool, a number in [0, 1], a `Score` or ``{"score": s, "passed": p}``, or awaiting one."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.evals.gateway import Gateway
from inferline.evals.judges import Judge, judge_spec
from inferline.evals.scorers import (
    Contains,
    Embed,
    Embedding,
    Exact,
    JsonField,
    JsonSchema,
    Numeric,
    Regex,
    Score,
    Scorer,
)
from inferline.store.datasets import DatasetItem

ENTRY_POINT_GROUP = "inferline.scorers"
KINDS = ("exact", "contains", "regex", "json_schema", "json_field", "numeric", "embedding",
         "judge", "python")  # fmt: skip


@dataclass
class ScorerContext:
    """What scorers may need: the gateway and prompt versions (judges), an embedding
    function (made on first use: it loads a model), the directory files are named from."""

    gateway: Gateway | None = None
    resolve_prompt: Callable[[str, str | int | None], int] | None = None
    make_embed: Callable[[], Embed] | None = None
    base_dir: Path = Path(".")
    _embed: Embed | None = None

    def embed(self) -> Embed:
        """The embedding function (400 when there is none)."""
        if self._embed is None:
            if self.make_embed is None:
                raise InvalidParameterError("no embedding model for the embedding scorer")
            self._embed = self.make_embed()
        return self._embed


def build_scorer(spec: str, context: ScorerContext) -> Scorer:
    """The scorer ``spec`` names (400 for an unknown one or a bad argument)."""
    kind, _, arg = spec.partition(":")
    if kind == "exact":
        return Exact()
    if kind == "contains":
        return Contains()
    if kind == "regex":
        return Regex(arg or None)
    if kind == "json_schema":
        return JsonSchema(_schema(arg, context.base_dir))
    if kind == "json_field":
        return JsonField(arg or None)
    if kind == "numeric":
        return Numeric(arg or None)
    if kind == "embedding":
        return Embedding(context.embed(), arg or None)
    if kind == "judge":
        if context.gateway is None or context.resolve_prompt is None or not arg:
            raise InvalidParameterError("judge:PROMPT needs a server and the prompt registry")
        return Judge(judge_spec(arg, context.resolve_prompt), context.gateway)
    if kind == "python" and arg:
        return PythonScorer(arg)
    raise InvalidParameterError(f"unknown scorer {spec!r}; kinds: {', '.join(KINDS)}", "scorer")


def _schema(arg: str, base_dir: Path) -> dict[str, Any]:
    if not arg:
        raise InvalidParameterError("json_schema:FILE names the schema's file", "scorer")
    path = Path(arg) if Path(arg).is_absolute() else base_dir / arg
    try:
        schema = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidParameterError(f"json_schema: {path}: {exc}", "scorer") from None
    if not isinstance(schema, dict):
        raise InvalidParameterError(f"json_schema: {path} is not a JSON object", "scorer")
    return schema


class PythonScorer:
    """A function named ``MODULE:FUNCTION`` or by entry point."""

    def __init__(self, reference: str) -> None:
        self.name = f"python:{reference}"
        self.function = _load(reference)

    async def score(self, item: DatasetItem, output: str) -> Score:
        """Whatever the function says, as a `Score`."""
        result = self.function(item.as_dict(), output)
        if inspect.isawaitable(result):
            result = await result
        return as_score(result, self.name)


def _load(reference: str) -> Callable[..., Any]:
    module_name, _, attribute = reference.partition(":")
    if attribute:
        try:
            function = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise InvalidParameterError(f"python:{reference}: {exc}", "scorer") from None
    else:
        found = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == reference]
        if not found:
            raise InvalidParameterError(
                f"no {ENTRY_POINT_GROUP} entry point {reference!r} (or write MODULE:FUNCTION)",
                "scorer",
            )
        function = found[0].load()
    if not callable(function):
        raise InvalidParameterError(f"python:{reference} is not callable", "scorer")
    return function


def as_score(result: Any, name: str) -> Score:
    """A Python scorer's result as a `Score` (400 for anything else)."""
    if isinstance(result, Score):
        return result
    if isinstance(result, bool):
        return Score(1.0 if result else 0.0, result)
    if isinstance(result, (int, float)) and 0 <= result <= 1:
        return Score(float(result), result >= 0.5)
    if isinstance(result, dict) and "score" in result:
        value = float(result["score"])
        return Score(value, bool(result.get("passed", value >= 0.5)), result.get("detail"))
    raise InvalidParameterError(f"{name} returned {result!r}: want a bool, a number in [0, 1], "
                                "or {'score': s, 'passed': p}", "scorer")  # fmt: skip
