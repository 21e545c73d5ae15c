"""What a virtual key may do: routes, rates, parallel requests, budget, expiry."""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from inferline.core.errors import InvalidParameterError

BudgetPeriod = Literal["day", "month", "total"]
BudgetPolicy = Literal["refuse", "lower_max_tokens"]
PERIODS = ("day", "month", "total")
POLICIES = ("refuse", "lower_max_tokens")
ROLES = ("user", "reviewer")


def _positive(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or value <= 0):
        raise InvalidParameterError(f"{name} must be positive, got {value!r}", name)


@dataclass(frozen=True)
class KeyPolicy:
    """One virtual key, as the server enforces it (never holds the secret).

    Attributes:
        routes: the routes and models it may name (None: all).
        rpm, tpm: requests and tokens per minute (token buckets; None: no limit).
        max_parallel: requests in flight at once.
        budget_usd, budget_period: spend allowed per ``day`` / ``month`` (UTC) or in
            ``total``; ``budget_policy``: when what is left cannot pay for ``max_tokens`` on
            a remote target, ``refuse`` (429 ``insufficient_quota``) or
            ``lower_max_tokens`` (to what it can pay for).
        role: ``user`` (calls the routes) or ``reviewer`` (also works the review queue:
            ``/v1/reviews``; never the admin API).
    """

    id: str
    name: str
    routes: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_usd: float | None = None
    budget_period: BudgetPeriod = "month"
    budget_policy: BudgetPolicy = "refuse"
    expires_at: float | None = None
    revoked_at: float | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    role: str = "user"

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "max_parallel", "budget_usd"):
            _positive(name, getattr(self, name))
        if self.budget_period not in PERIODS:
            raise InvalidParameterError(
                f"budget.period must be one of {', '.join(PERIODS)}", "budget.period"
            )
        if self.budget_policy not in POLICIES:
            raise InvalidParameterError(
                f"budget.policy must be one of {', '.join(POLICIES)}", "budget.policy"
            )
        if self.role not in ROLES:
            raise InvalidParameterError(f"role must be one of {', '.join(ROLES)}", "role")
        if self.routes is not None and not all(isinstance(r, str) and r for r in self.routes):
            raise InvalidParameterError("routes must be a list of route names", "routes")

    def refusal(self, now: float | None = None) -> str | None:
        """Why the key cannot be used now (revoked, expired), or None."""
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "this API key has been revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "this API key has expired"
        return None

    def may_use(self, model: str) -> bool:
        """Whether the key may name ``model`` (a route or a model)."""
        return self.routes is None or model in self.routes

    def period_start(self, now: float | None = None) -> float:
        """When the current budget period began (UTC), epoch seconds."""
        now = time.time() if now is None else now
        if self.budget_period == "total":
            return 0.0
        moment = time.gmtime(now)
        day = 1 if self.budget_period == "month" else moment.tm_mday
        return float(calendar.timegm((moment.tm_year, moment.tm_mon, day, 0, 0, 0)))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> KeyPolicy:
        """The policy of a stored key row."""
        routes = row.get("routes")
        return cls(
            id=row["id"],
            name=row["name"],
            routes=tuple(routes) if routes is not None else None,
            rpm=row.get("rpm"),
            tpm=row.get("tpm"),
            max_parallel=row.get("max_parallel"),
            budget_usd=row.get("budget_usd"),
            budget_period=row.get("budget_period") or "month",
            budget_policy=row.get("budget_policy") or "refuse",
            expires_at=row.get("expires_at"),
            revoked_at=row.get("revoked_at"),
            metadata=row.get("metadata") or {},
            role=row.get("role") or "user",
        )
