"""A check as written (a config file's route entry, a prompt version's ``checks``) ->
`GuardCheck`; errors name the field (the caller adds where the entry is)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.guard.config import GuardCheck

_SCALARS: dict[str, type] = {
    "name": str, "model": str, "label": str, "above": float, "pattern": str,
    "max_chars": int, "min_mean": float, "min_token": float, "max_entropy": float,
    "arguments_pattern": str, "deadline_s": float, "route": str, "rubric": str,
    "below": float, "samples": int,
}  # fmt: skip
_LISTS = ("examples", "detectors", "variables", "tools")
CHECK_KEYS = frozenset({"on", "kind", "action", *_SCALARS, *_LISTS})


def with_on(entry: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads a bare ``on:`` key as the boolean true: it means ``on``."""
    if True in entry and "on" not in entry:
        entry = {("on" if k is True else k): v for k, v in entry.items()}
    return entry


def is_guard_entry(entry: dict[str, Any]) -> bool:
    """Whether an entry is in the ``on``/``action`` form (else: a cascade check as before)."""
    return "on" in entry or "action" in entry


def _typed(value: Any, kind: type, key: str) -> Any:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise InvalidParameterError(f"{key}: expected {kind.__name__}, got {value!r}", key)
    return float(value) if kind is float else value


def check_from_dict(raw: Any, index: int) -> GuardCheck:
    """One check entry (``index``: its position, for the default name ``<kind>-<index>``);
    ``escalate`` is kept as ``abstain`` for the caller to hand to the router."""
    if not isinstance(raw, dict):
        raise InvalidParameterError("a check is a mapping", "checks")
    entry = with_on(raw)
    unknown = sorted(str(k) for k in set(entry) - CHECK_KEYS)
    if unknown:
        raise InvalidParameterError(f"{unknown[0]}: unknown key", str(unknown[0]))
    for key in ("on", "action"):
        if not isinstance(entry.get(key), str):
            raise InvalidParameterError(f"{key}: is required", key)
    on = entry["on"]
    kind = entry.get("kind", "tool" if on == "tool_call" else None)
    if not isinstance(kind, str):
        raise InvalidParameterError("kind: is required", "kind")
    fields: dict[str, Any] = {"on": on, "kind": kind, "action": entry["action"],
                              "name": f"{kind}-{index}"}  # fmt: skip
    for key, kind_of in _SCALARS.items():
        if entry.get(key) is not None:
            fields[key] = _typed(entry[key], kind_of, key)
    for key in _LISTS:
        if key in entry:
            items = entry[key]
            if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
                raise InvalidParameterError(f"{key}: expected a list of non-empty strings", key)
            fields[key] = tuple(items)
    if fields["action"] == "escalate":
        fields["action"] = "abstain"  # checked here as an output check; the router's
    return GuardCheck(**fields)


def prompt_checks(entries: Sequence[Any]) -> tuple[GuardCheck, ...]:
    """A prompt version's checks, named ``prompt:<name>``; a version cannot escalate (the
    cascade is the route's) nor use a classifier (those are built with the route's)."""
    checks = []
    for index, raw in enumerate(entries):
        entry = with_on(raw) if isinstance(raw, dict) else raw
        if isinstance(entry, dict) and entry.get("action") == "escalate":
            raise InvalidParameterError(
                f"checks[{index}]: escalate is the route's (a cascade); a prompt's checks "
                "abstain, review or block", "checks")  # fmt: skip
        try:
            check = check_from_dict(entry, index)
        except InvalidParameterError as error:
            raise InvalidParameterError(f"checks[{index}]: {error.message}", "checks") from None
        if check.kind == "classifier":
            raise InvalidParameterError(
                f"checks[{index}]: classifier checks are declared on the route", "checks"
            )
        checks.append(dataclasses.replace(check, name=f"prompt:{check.name}"))
    return tuple(checks)
