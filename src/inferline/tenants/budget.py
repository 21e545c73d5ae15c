"""Budgets that hold under concurrency, for streams too.

Each key has the spend of its finished requests in the current period (from the store)
and its live requests, each with what it reserved at admission and what it has been
charged so far. A live request counts for the larger of the two. Admission reserves the
request's expected cost only if it fits what is left; while it runs, every output is
charged, and a charge past its reservation must fit what is left too, or the request is
stopped (the router ends it with ``finish_reason: length``): so the spend of a key never
passes its budget, whatever runs at once.

`BudgetLedger` keeps this in one process; `redis_budget.RedisLedger` keeps it in Redis for
every gateway process (the same methods: `Ledger`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from inferline.tenants.policy import KeyPolicy


@dataclass
class _Live:
    reserved: float
    charged: float = 0.0

    @property
    def holds(self) -> float:
        return max(self.reserved, self.charged)


@dataclass
class _KeyBudget:
    budget: float
    period_start: float
    settled: float
    live: dict[str, _Live] = field(default_factory=dict)

    def used(self, without: str | None = None) -> float:
        return self.settled + sum(v.holds for k, v in self.live.items() if k != without)


class Ledger(Protocol):
    """A key's settled spend and its live requests' holds (`BudgetLedger`: this process;
    `redis_budget.RedisLedger`: every gateway process).

    Invariant: settled spend + every live hold <= the budget, whatever runs at once; a hold
    is the larger of a request's reservation and its charges. ``is_shared``: the calls do
    network I/O (callers run the admission's off the event loop).
    """

    is_shared: bool

    def available(self, policy: KeyPolicy) -> float | None:
        """What the key may still spend now (None: no budget)."""
        ...

    def reserve(self, policy: KeyPolicy, request_id: str, amount: float) -> bool:
        """Holds ``amount`` for a new request if it fits what is left."""
        ...

    def charge(self, policy: KeyPolicy, request_id: str, amount: float) -> bool:
        """Adds to a live request's charge; False (nothing charged) past the budget."""
        ...

    def settle(self, policy: KeyPolicy, request_id: str, spend: float) -> None:
        """The request ended: its hold goes, its real spend counts."""
        ...

    def reserved(self, policy: KeyPolicy) -> float:
        """What the key's live requests hold now."""
        ...

    def renew(self) -> None:
        """Keeps this process's holds alive (a no-op in one process)."""
        ...

    def alive(self, request_ids: Collection[str]) -> set[str]:
        """Which of these requests are held by a living process (at start-up, the rows
        of the others were cut by a crash)."""
        ...


class BudgetLedger:
    """Implements `Ledger` in this process: per-key spend in the current period, and the
    live requests' holds.

    ``spent_since(key_id, since)`` reads a key's settled spend from the store (once per key
    and period).
    """

    is_shared = False

    def __init__(
        self, spent_since: Callable[[str, float], float], clock: Callable[[], float] = time.time
    ) -> None:
        self._spent_since = spent_since
        self.clock = clock
        self._keys: dict[str, _KeyBudget] = {}

    def _budget(self, policy: KeyPolicy) -> _KeyBudget:
        assert policy.budget_usd is not None
        start = policy.period_start(self.clock())
        state = self._keys.get(policy.id)
        if state is None or state.period_start != start:
            live = state.live if state is not None else {}
            state = _KeyBudget(policy.budget_usd, start, self._spent_since(policy.id, start), live)
            self._keys[policy.id] = state
        state.budget = policy.budget_usd
        return state

    def available(self, policy: KeyPolicy) -> float | None:
        """What the key may still spend now (None: no budget)."""
        if policy.budget_usd is None:
            return None
        state = self._budget(policy)
        return max(0.0, state.budget - state.used())

    def reserve(self, policy: KeyPolicy, request_id: str, amount: float) -> bool:
        """Holds ``amount`` for a new request if it fits what is left."""
        if policy.budget_usd is None:
            return True
        state = self._budget(policy)
        if state.used() + amount > state.budget + 1e-12:
            return False
        state.live[request_id] = _Live(amount)
        return True

    def charge(self, policy: KeyPolicy, request_id: str, amount: float) -> bool:
        """Adds ``amount`` to a live request's charge; False (nothing charged) when that
        would take the key past its budget."""
        if policy.budget_usd is None:
            return True
        state = self._budget(policy)
        live = state.live.setdefault(request_id, _Live(0.0))
        after = max(live.reserved, live.charged + amount)
        if state.used(without=request_id) + after > state.budget + 1e-12:
            return False
        live.charged += amount
        return True

    def settle(self, policy: KeyPolicy, request_id: str, spend: float) -> None:
        """The request ended: its hold goes, its real spend counts."""
        if policy.budget_usd is None:
            return
        state = self._budget(policy)
        state.live.pop(request_id, None)
        state.settled += spend

    def reserved(self, policy: KeyPolicy) -> float:
        """What the key's live requests hold now."""
        if policy.budget_usd is None:
            return 0.0
        return sum(v.holds for v in self._budget(policy).live.values())

    def renew(self) -> None:
        """Nothing to renew in one process."""

    def alive(self, request_ids: Collection[str]) -> set[str]:
        """None: this process holds nothing of an earlier one."""
        return set()
