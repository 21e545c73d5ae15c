"""Per-target bookkeeping: circuit breaker, retry budget and recent outcomes/latencies.

Every class takes a ``clock`` (``time.monotonic`` by default) so tests can drive time.
"""

from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable
from typing import Literal

from inferline.router.config import BreakerConfig, RetryBudget

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Closed -> open after ``failures`` failures within ``window_s``; open -> half-open
    after ``cooldown_s``, letting one probe through; the probe's success closes it, its
    failure opens it again for another cool-down.

    Invariant: while half-open, at most one request is in flight as the probe.
    """

    def __init__(self, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._failures: collections.deque[float] = collections.deque()
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker turns half-open once its cool-down passed)."""
        if self._opened_at is None:
            return "closed"
        if self.clock() - self._opened_at >= self.config.cooldown_s:
            return "half_open"
        return "open"

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self.config.cooldown_s - self.clock())

    def allow(self) -> bool:
        """Whether a request may go to the target now (takes the probe slot if half-open)."""
        state = self.state
        if state == "closed":
            return True
        if state == "open" or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        """A request succeeded: a half-open breaker closes."""
        if self._opened_at is not None and self.state == "half_open":
            self._opened_at = None
            self._failures.clear()
        self._probing = False

    def record_failure(self) -> None:
        """A request failed (for the target's sake, not the client's)."""
        now = self.clock()
        if self._opened_at is not None:
            if self.state == "half_open":
                self._opened_at = now  # the probe failed: another cool-down
            self._probing = False
            return
        self._failures.append(now)
        while self._failures and self._failures[0] < now - self.config.window_s:
            self._failures.popleft()
        if len(self._failures) >= self.config.failures:
            self._opened_at = now

    def release_probe(self) -> None:
        """The probe ended without a verdict (the client left): let another one through."""
        self._probing = False


class RetryAllowance:
    """Retries allowed per target: at most ``ratio`` of its requests over the window, and
    never fewer than ``min_retries`` (so a quiet target can retry)."""

    def __init__(self, policy: RetryBudget, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self._requests: collections.deque[float] = collections.deque()
        self._retries: collections.deque[float] = collections.deque()

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.window_s
        for events in (self._requests, self._retries):
            while events and events[0] < horizon:
                events.popleft()

    def record_request(self) -> None:
        """A first attempt went to the target."""
        self._requests.append(self.clock())

    def try_retry(self) -> bool:
        """Spends one retry if the budget allows it."""
        now = self.clock()
        self._trim(now)
        allowed = max(self.policy.min_retries, int(len(self._requests) * self.policy.ratio))
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True


class TargetWindow:
    """Recent outcomes and latencies of a target (for error rate, p50s, least-loaded)."""

    def __init__(self, window_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._events: collections.deque[tuple[float, bool, float | None, float | None]] = (
            collections.deque(maxlen=4096)
        )
        self._p50_cache: tuple[float, float | None] = (-1.0, None)  # (computed at, value)

    def record(self, ok: bool, ttft_s: float | None, duration_s: float | None) -> None:
        """One finished attempt."""
        now = self.clock()
        self._events.append((now, ok, ttft_s, duration_s))
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        if self._p50_cache[1] is None and ok and ttft_s is not None:
            self._p50_cache = (-1.0, None)  # the first sample: compute on the next read

    def _recent(self) -> list[tuple[float, bool, float | None, float | None]]:
        horizon = self.clock() - self.window_s
        return [e for e in self._events if e[0] >= horizon]

    @property
    def num_requests(self) -> int:
        """Attempts in the window."""
        return len(self._recent())

    @property
    def error_rate(self) -> float:
        """Failed share of the attempts in the window (0 with none)."""
        events = self._recent()
        return sum(1 for e in events if not e[1]) / len(events) if events else 0.0

    def p50_ttft_s(self) -> float | None:
        """Median time to first token of the successful attempts in the window (computed
        at most once a second: it is read for every request)."""
        now = self.clock()
        if now - self._p50_cache[0] < 1.0:
            return self._p50_cache[1]
        values = [e[2] for e in self._recent() if e[1] and e[2] is not None]
        value = statistics.median(values) if values else None
        self._p50_cache = (now, value)
        return value

    def p50_duration_s(self) -> float | None:
        """Median duration of the successful attempts in the window."""
        values = [e[3] for e in self._recent() if e[1] and e[3] is not None]
        return statistics.median(values) if values else None
