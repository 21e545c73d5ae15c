"""The ``routes:`` section: what clients put in ``model`` and how it is served.

```yaml
routes:
  - name: support-bot
    strategy: fallback            # fallback | weighted | least_loaded | cascade
    targets: [partner, small]     # or [{name: a, weight: 3}, {name: b, weight: 1}]
    retry: {attempts: 2, backoff_ms: 200, max_backoff_ms: 5000}
    deadline_s: 30
    checks:                       # cascade only: when a cheap answer is good enough
      - {kind: logprob_mean, threshold: -0.8}
      - {kind: similarity, model: all-minilm-l6-v2, threshold: 0.3}   # on topic?
                                  # and checks that abstain, review, block: see config_checks
    sticky: true                  # weighted: the same user/session keeps its target
    cache: {mode: semantic, embedding_model: all-minilm-l6-v2, threshold: 0.95, ttl_s: 3600}
```
"""

from __future__ import annotations

from typing import Any

from inferline.cache import CachePolicy
from inferline.cli.config_checks import ROUTE_KEYS, cascade_checks
from inferline.cli.config_fields import build, fail, mapping, section, value
from inferline.router.config import RetryPolicy, RouteConfig, TargetRef

_ROUTE_KEYS = {
    "name", "strategy", "targets", "retry", "deadline_s", "checks", "sticky", "cache",
    *ROUTE_KEYS,
}  # fmt: skip
_CACHE_TYPES: dict[str, type] = {
    "mode": str,
    "ttl_s": float,
    "max_entries": int,
    "threshold": float,
    "embedding_model": str,
    "deterministic_only": bool,
    "shared": bool,
    "guard": str,
}


def parse_route(raw: Any, place: str, generators: set[str]) -> RouteConfig:
    """One route; its targets must name ``generators`` (``kind: llm`` or ``openai``)."""
    entry = mapping(raw, place, _ROUTE_KEYS)
    targets = value(entry, "targets", list, place)
    refs = tuple(
        _target_ref(item, f"{place}.targets[{i}]", generators) for i, item in enumerate(targets)
    )
    checks = value(entry, "checks", list, place, [])
    fields = {
        "name": value(entry, "name", str, place),
        "strategy": value(entry, "strategy", str, place, "fallback"),
        "targets": refs,
        "retry": section(
            entry,
            "retry",
            place,
            RetryPolicy,
            {"attempts": int, "backoff_ms": float, "max_backoff_ms": float},
        ),  # fmt: skip
        "deadline_s": value(entry, "deadline_s", float, place, None),
        "checks": cascade_checks(checks, f"{place}.checks"),
        "sticky": value(entry, "sticky", bool, place, True),
    }
    return build(RouteConfig, fields, place)


def _target_ref(raw: Any, place: str, generators: set[str]) -> TargetRef:
    if isinstance(raw, str):
        name, weight = raw, 1.0
    else:
        entry = mapping(raw, place, {"name", "weight"})
        name, weight = value(entry, "name", str, place), value(entry, "weight", float, place, 1.0)
    if name not in generators:
        known = ", ".join(sorted(generators)) or "none"
        raise fail(place, f"unknown model {name!r} (models that generate text: {known})")
    return build(TargetRef, {"name": name, "weight": weight}, place)


def parse_cache(raw: Any, place: str) -> CachePolicy | None:
    """A route's ``cache:`` (None when it has none)."""
    entry = mapping(raw, place)
    if "cache" not in entry or entry["cache"] is None:
        return None
    return section(entry, "cache", place, CachePolicy, _CACHE_TYPES)
