"""What an experiment runs its items on, and the chat request it sends for an item.

A target is written as on the command line: ``support-bot`` or ``route:support-bot`` (a
route), ``model:large`` (a model by name), ``prompt:support-reply@3`` (a stored prompt at
a version or label, on its own route; ``prompt:support-reply@3/large`` on another).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.evals.items import split_input
from inferline.store.datasets import DatasetItem

_PROMPT = re.compile(r"^(?P<id>[^@/]+)(?:@(?P<version>[^/]+))?(?:/(?P<model>.+))?$")


@dataclass(frozen=True)
class Target:
    """A parsed target: ``kind`` is route, model or prompt."""

    spec: str
    kind: str
    model: str | None = None
    prompt_id: str | None = None
    prompt_version: str | int | None = None

    def body(
        self, item: DatasetItem, params: dict[str, Any], metadata: dict[str, str]
    ) -> dict[str, Any]:
        """The ``/v1/chat/completions`` body for ``item`` (400 when the item's input has
        variables and this target has no prompt to put them in)."""
        messages, variables = split_input(item.input)
        body: dict[str, Any] = {**params, "messages": messages, "metadata": metadata}
        if self.kind == "prompt":
            body["prompt"] = {"id": self.prompt_id, "variables": variables or {}}
            if self.prompt_version is not None:
                body["prompt"]["version"] = self.prompt_version
        elif variables is not None:
            raise InvalidParameterError(
                f"item {item.key!r} has variables: target {self.spec!r} must be a prompt",
                "target",
            )
        if self.model is not None:
            body["model"] = self.model
        return body


def parse_target(spec: str) -> Target:
    """``spec`` as a `Target` (400 when it is malformed)."""
    kind, colon, rest = spec.partition(":")
    if not colon:
        kind, rest = "route", spec
    if kind in ("route", "model") and rest:
        return Target(spec, kind, model=rest)
    if kind == "prompt":
        found = _PROMPT.match(rest)
        if found is not None:
            version: str | int | None = found["version"]
            if isinstance(version, str) and version.isdecimal():
                version = int(version)
            return Target(spec, "prompt", model=found["model"], prompt_id=found["id"],
                          prompt_version=version)  # fmt: skip
    raise InvalidParameterError(
        f"target {spec!r}: write ROUTE, route:NAME, model:NAME or prompt:ID[@VERSION][/MODEL]",
        "target",
    )
