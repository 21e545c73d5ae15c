"""A response cache in front of the routes: exact and semantic (see `CachedGenerator`)."""

from inferline.cache.generator import CachedGenerator, Embed
from inferline.cache.policy import DEFAULT_THRESHOLD, CachePolicy

__all__ = ["DEFAULT_THRESHOLD", "CachePolicy", "CachedGenerator", "Embed"]
