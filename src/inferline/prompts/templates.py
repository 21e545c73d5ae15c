"""Prompt templates: Jinja in a sandbox, every variable required unless it has a default.

A template is untrusted text (anyone with an admin key writes one, and its variables come
from requests), so it runs in Jinja's immutable sandbox: no attribute access to internals,
no mutation, and an undefined variable is an error naming it, never an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferline.core.errors import InvalidParameterError

_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@lru_cache(maxsize=4096)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


def variables_of(sources: Sequence[str]) -> list[str]:
    """The variables ``sources`` use, sorted; a template that does not parse is a 400."""
    found: set[str] = set()
    for index, source in enumerate(sources):
        try:
            found |= meta.find_undeclared_variables(_ENV.parse(source))
        except TemplateError as exc:
            raise InvalidParameterError(
                f"messages[{index}].content is not a valid template: {exc}",
                f"messages[{index}].content",
            ) from None
    return sorted(found)


def render(source: str, values: Mapping[str, Any], where: str) -> str:
    """``source`` with ``values``; a missing variable or a sandbox violation is a 400."""
    try:
        return str(_compiled(source).render(**values))
    except TemplateError as exc:
        raise InvalidParameterError(f"{where}: {exc}", "prompt.variables") from None
