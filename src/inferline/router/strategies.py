"""The order in which a route tries its targets, per strategy.

Every strategy returns all of the route's targets, the preferred first: the rest are the
fallbacks of that request.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from inferline.core.protocols import GenerationRequest
from inferline.router.config import RouteConfig
from inferline.router.target import Target


def plan(
    route: RouteConfig,
    targets: Sequence[Target],
    request: GenerationRequest,
    rng: random.Random,
) -> list[Target]:
    """The targets of ``route`` in the order this request tries them."""
    if route.strategy == "weighted":
        return _weighted(route, targets, request, rng)
    if route.strategy == "least_loaded":
        return sorted(targets, key=lambda t: (t.breaker.state != "closed", t.load()))
    return list(targets)  # fallback and cascade: as written


def _weighted(
    route: RouteConfig, targets: Sequence[Target], request: GenerationRequest, rng: random.Random
) -> list[Target]:
    """One target picked by weight (by a hash of the user or session when sticky, so the
    same caller keeps the same variant), then the others by weight, heaviest first."""
    weights = [ref.weight for ref in route.targets]
    key = (request.session or request.user) if route.sticky else None
    point = _stable_fraction(f"{route.name}\x00{key}") if key else rng.random()
    chosen = _pick(weights, point)
    rest = sorted((i for i in range(len(targets)) if i != chosen), key=lambda i: -weights[i])
    return [targets[chosen], *(targets[i] for i in rest)]


def _stable_fraction(text: str) -> float:
    """A number in [0, 1) that depends only on ``text`` (not on the process's hash seed)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _pick(weights: Sequence[float], point: float) -> int:
    total = sum(weights)
    edge = 0.0
    for index, weight in enumerate(weights):
        edge += weight / total
        if point < edge and weight > 0:
            return index
    return max(range(len(weights)), key=lambda i: weights[i])
