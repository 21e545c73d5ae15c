"""How a route's answers are cached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inferline.cache.guards import GUARDS, Guard
from inferline.core.errors import InvalidParameterError

CacheMode = Literal["off", "exact", "semantic"]
MODES = ("off", "exact", "semantic")
DEFAULT_THRESHOLD = 0.95


@dataclass(frozen=True)
class CachePolicy:
    """A route's response cache.

    Attributes:
        mode: ``exact`` (the same request, byte for byte after canonical ordering: the
            route, its models' revision, messages or prompt, tools, response format and every
            sampling parameter), ``semantic`` (also: everything identical but the last user
            message, that message's embedding within ``threshold`` cosine similarity of a
            cached one's, by ``embedding_model``, and the ``guard``'s word checks, see
            `inferline.cache.guards`), ``off``.
        ttl_s, max_entries: how long and how many answers are kept (least recently used go
            first).
        deterministic_only: cache only requests that ask for one answer (temperature 0,
            top_k 1, or a ``seed``) and never ``n > 1``.
        shared: answers cross keys (default: a key only ever gets its own cached answers).
        revision: identifies the route's models; a change of model gives new entries.
    """

    mode: CacheMode = "exact"
    ttl_s: float = 3600.0
    max_entries: int = 10_000
    threshold: float = DEFAULT_THRESHOLD
    embedding_model: str = ""
    deterministic_only: bool = True
    shared: bool = False
    guard: Guard = "strict"
    revision: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidParameterError(f"cache.mode must be one of {', '.join(MODES)}", "mode")
        if self.ttl_s <= 0 or self.max_entries < 1:
            raise InvalidParameterError("cache.ttl_s and max_entries must be positive", "ttl_s")
        if not 0.0 < self.threshold <= 1.0:
            raise InvalidParameterError("cache.threshold must be in (0, 1]", "threshold")
        if self.guard not in GUARDS:
            raise InvalidParameterError(f"cache.guard must be one of {', '.join(GUARDS)}", "guard")
        if self.mode == "semantic" and not self.embedding_model:
            raise InvalidParameterError(
                "a semantic cache needs an embedding_model (a sentence-embeddings model)",
                "embedding_model",
            )
