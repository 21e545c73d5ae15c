"""The cached answers: an LRU with a time to live, and per semantic context the embedded
last user messages of its entries."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from inferline.core.outputs import RequestOutput


@dataclass(frozen=True)
class Entry:
    """One cached answer: the outputs as they were streamed, and who answered."""

    outputs: tuple[RequestOutput, ...]
    model: str
    created_s: float
    context: str | None = None  # its semantic context, when it has one
    vector: tuple[float, ...] | None = None  # its last user message's unit embedding
    message: str = ""  # its last user message


class AnswerStore:
    """Entries by exact key, least recently used evicted first, expired after ``ttl_s``."""

    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._contexts: dict[str, dict[str, Entry]] = {}  # semantic context -> key -> entry

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        """The entry of ``key`` if it is still fresh."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry.created_s > self.ttl_s:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: Entry) -> None:
        """Stores ``entry`` (evicting the least recently used beyond ``max_entries``)."""
        if key in self._entries:
            self._drop(key)
        self._entries[key] = entry
        if entry.context is not None and entry.vector is not None:
            self._contexts.setdefault(entry.context, {})[key] = entry
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def nearest(
        self, context: str, vector: Sequence[float], accept: Callable[[Entry], bool]
    ) -> tuple[str, float] | None:
        """The fresh entry of ``context`` that ``accept``s and whose message is most similar
        to ``vector``: (its key, the cosine similarity), or None."""
        best: tuple[str, float] | None = None
        for key, entry in list(self._contexts.get(context, {}).items()):
            if self.get(key) is None or entry.vector is None or not accept(entry):
                continue
            similarity = _dot(entry.vector, vector)
            if best is None or similarity > best[1]:
                best = (key, similarity)
        return best

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and entry.context is not None:
            members = self._contexts.get(entry.context, {})
            members.pop(key, None)
            if not members:
                self._contexts.pop(entry.context, None)


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    value = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return max(-1.0, min(1.0, value))
