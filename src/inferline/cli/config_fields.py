"""Typed reading of config-file values, with errors that name the place in the file
(``routes[0].retry.attempts: expected an integer, got 'two'``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from inferline.core.errors import InvalidParameterError

T = TypeVar("T")
# the YAML types a field may take: bool is never a number
_TYPES: dict[type, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
    list: (list,),
    dict: (dict,),
}
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def fail(place: str, message: str) -> InvalidParameterError:
    """An error naming ``place`` (e.g. ``models[1].timeouts.idle_s``)."""
    return InvalidParameterError(f"{place}: {message}", place)


def mapping(raw: Any, place: str, allowed: set[str] | None = None) -> dict[str, Any]:
    """``raw`` as a mapping with only ``allowed`` keys (if given)."""
    if not isinstance(raw, dict):
        raise fail(place, "expected a mapping")
    if allowed is not None:
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise fail(f"{place}.{unknown[0]}", f"unknown key {unknown[0]!r}")
    return raw


def value(raw: Mapping[str, Any], key: str, kind: type[T], place: str, default: Any = ...) -> T:
    """``raw[key]`` checked to be of ``kind`` (``...`` as default: the key is required)."""
    if key not in raw or raw[key] is None:
        if default is ...:
            raise fail(f"{place}.{key}", "is required")
        return default
    checked: T = _checked(raw[key], kind, f"{place}.{key}")
    return checked


def _checked(item: Any, kind: type, where: str) -> Any:
    wanted = _NAMES.get(kind, kind.__name__)
    if (isinstance(item, bool) and kind is not bool) or not isinstance(
        item, _TYPES.get(kind, (kind,))
    ):
        raise fail(where, f"expected {wanted}, got {item!r}")
    if kind is str and not item:
        raise fail(where, "must not be empty")
    return float(str(item)) if kind is float else item


def build(cls: type[T], fields: dict[str, Any], place: str) -> T:
    """``cls(**fields)``, its validation errors named by the place."""
    try:
        return cls(**fields)
    except InvalidParameterError as error:
        param = error.param.rsplit(".", 1)[-1] if error.param else None
        where = f"{place}.{param}" if param and param in fields else place
        raise fail(where, error.message) from error


def section(
    raw: Mapping[str, Any], key: str, place: str, cls: type[T], types: dict[str, type]
) -> T:
    """The nested mapping ``raw[key]`` (optional) as a ``cls`` whose fields have ``types``."""
    where = f"{place}.{key}"
    nested = mapping(raw.get(key) or {}, where, set(types))
    fields: dict[str, Any] = {
        name: value(nested, name, kind, where) for name, kind in types.items() if name in nested
    }
    return build(cls, fields, where)
