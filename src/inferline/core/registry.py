"""A tiny name -> object registry, used for built-ins and extensions alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (model architectures, short model names, ...).

    Invariant: a name is registered at most once; lookups of unknown names raise KeyError
    listing what is known.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@registry.register("llama")``."""

        def add(obj: T) -> T:
            self.add(name, obj)
            return obj

        return add

    def add(self, name: str, obj: T) -> None:
        """Registers ``obj`` under ``name``; a second registration of a name is an error."""
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """Returns the object registered as ``name``."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)
