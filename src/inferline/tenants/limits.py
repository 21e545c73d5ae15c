"""Rate limits per key: token buckets for requests and tokens per minute, and a count of
requests in flight. `LocalLimits` keeps them in memory (a restart refills the buckets);
`redis_limits.RedisLimits` keeps them in Redis for every gateway process."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from inferline.tenants.policy import KeyPolicy

Clock = Callable[[], float]


class TokenBucket:
    """``capacity`` units refilled at ``capacity / 60`` per second (a per-minute limit).

    The level may go below zero when a request's tokens are corrected upwards at its end;
    later requests then wait until it refills.
    """

    def __init__(self, capacity: int, clock: Clock = time.monotonic) -> None:
        self.capacity = float(capacity)
        self.rate_per_s = capacity / 60.0
        self.clock = clock
        self.level = float(capacity)
        self._updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def take(self, amount: float) -> float:
        """Takes ``amount`` if it is there (returns 0), else the seconds until it will be.

        A request larger than the whole bucket is let through when the bucket is full
        (it could never fit otherwise); the level then goes negative.
        """
        self._refill()
        if amount <= self.level or (amount > self.capacity and self.level >= self.capacity):
            self.level -= amount
            return 0.0
        return (min(amount, self.capacity) - self.level) / self.rate_per_s

    def give_back(self, amount: float) -> None:
        """Corrects an estimate: positive returns units, negative takes more."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)

    def remaining(self) -> int:
        """Whole units available now."""
        self._refill()
        return max(0, int(self.level))

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        self._refill()
        return max(0.0, (self.capacity - self.level) / self.rate_per_s)


@dataclass(frozen=True)
class LimitState:
    """One limit as the ``x-ratelimit-*`` headers show it."""

    limit: int
    remaining: int
    reset_s: float


def reset_text(seconds: float) -> str:
    """OpenAI's duration format for ``x-ratelimit-reset-*``: ``1s``, ``6m0s``, ``20ms``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    if minutes >= 1:
        return f"{int(minutes)}m{rest:.0f}s"
    return f"{rest:.3g}s"


class KeyLimits:
    """The buckets and the in-flight count of one key."""

    def __init__(
        self, rpm: int | None, tpm: int | None, max_parallel: int | None, clock: Clock
    ) -> None:
        self.settings = (rpm, tpm, max_parallel)
        self.requests = TokenBucket(rpm, clock) if rpm else None
        self.tokens = TokenBucket(tpm, clock) if tpm else None
        self.max_parallel = max_parallel
        self.in_flight = 0

    def admit(self, estimated_tokens: int) -> tuple[str, float] | None:
        """Takes one request and ``estimated_tokens``; on refusal, (which limit, seconds
        to wait). Nothing is taken from any bucket when one refuses."""
        if self.max_parallel is not None and self.in_flight >= self.max_parallel:
            return "parallel", 1.0
        if self.requests is not None:
            wait = self.requests.take(1)
            if wait:
                return "requests", wait
        if self.tokens is not None:
            wait = self.tokens.take(estimated_tokens)
            if wait:
                if self.requests is not None:
                    self.requests.give_back(1)
                return "tokens", wait
        self.in_flight += 1
        return None

    def finish(self, estimated_tokens: int, actual_tokens: int) -> None:
        """The request ended: its slot is free and its token estimate corrected."""
        self.in_flight = max(0, self.in_flight - 1)
        if self.tokens is not None:
            self.tokens.give_back(estimated_tokens - actual_tokens)

    def states(self) -> dict[str, LimitState]:
        """What the ``x-ratelimit-*`` headers say (``requests``, ``tokens``)."""
        out = {}
        for name, bucket in (("requests", self.requests), ("tokens", self.tokens)):
            if bucket is not None:
                out[name] = LimitState(int(bucket.capacity), bucket.remaining(), bucket.reset_s())
        return out


@dataclass(frozen=True)
class Refusal:
    """Which limit refused a request (``parallel``, ``requests``, ``tokens``) and the
    seconds until it may pass."""

    which: str
    wait_s: float


class Limits(Protocol):
    """The rate limits of every key: in this process (`LocalLimits`) or shared by every
    gateway process (`inferline.tenants.redis_limits.RedisLimits`).

    Invariants: ``admit`` takes all of a request's units or none (a refusal takes nothing);
    each admitted request is ``finish``ed once; ``states`` is what the ``x-ratelimit-*``
    headers say. ``is_shared``: the calls do network I/O (callers run them off the event
    loop).
    """

    is_shared: bool

    def admit(self, key: KeyPolicy, request_id: str, tokens: int) -> Refusal | None:
        """Takes one request, ``tokens`` and a parallel slot; or says which limit refused."""
        ...

    def finish(self, key: KeyPolicy, request_id: str, estimated: int, actual: int) -> None:
        """Frees the request's slot and corrects its token estimate."""
        ...

    def states(self, key: KeyPolicy) -> dict[str, LimitState]:
        """The key's ``requests`` and ``tokens`` limits now."""
        ...

    def renew(self) -> None:
        """Keeps this process's in-flight requests counted (a no-op in one process)."""
        ...


class LocalLimits:
    """Implements `Limits` in this process: one `KeyLimits` per key (a restart refills)."""

    is_shared = False

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._keys: dict[str, KeyLimits] = {}

    def of(self, key: KeyPolicy) -> KeyLimits:
        """The key's state (made on first use; rebuilt when its limits change)."""
        limits = self._keys.get(key.id)
        wanted = (key.rpm, key.tpm, key.max_parallel)
        if limits is None or limits.settings != wanted:
            limits = KeyLimits(key.rpm, key.tpm, key.max_parallel, self.clock)
            self._keys[key.id] = limits
        return limits

    def admit(self, key: KeyPolicy, request_id: str, tokens: int) -> Refusal | None:
        """See `Limits.admit`."""
        refused = self.of(key).admit(tokens)
        return None if refused is None else Refusal(*refused)

    def finish(self, key: KeyPolicy, request_id: str, estimated: int, actual: int) -> None:
        """See `Limits.finish`."""
        self.of(key).finish(estimated, actual)

    def states(self, key: KeyPolicy) -> dict[str, LimitState]:
        """See `Limits.states`."""
        return self.of(key).states()

    def renew(self) -> None:
        """Nothing to renew in one process."""
