"""A route target: a `Generator` (local engine or remote upstream) with its bookkeeping."""

from __future__ import annotations

import time

from inferline.core.protocols import Generator, GeneratorStats, TargetStatus
from inferline.router.config import TargetConfig
from inferline.router.health import CircuitBreaker, Clock, RetryAllowance, TargetWindow

# engine seconds per output token assumed before a local target has answered (one stream
# of a 0.5B model on two cores decodes about 20 tokens/s); only sizes budget reservations
PRIOR_ENGINE_S_PER_TOKEN = 0.05
_EWMA_WEIGHT = 0.2


class Target:
    """One model entry the router can send requests to.

    The breaker, retry budget and window are per target (shared by every route that lists
    it), so a failing upstream is seen as failing by all of them at once.
    """

    def __init__(
        self,
        config: TargetConfig,
        generator: Generator,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.generator = generator
        self.breaker = CircuitBreaker(config.breaker, clock)
        self.budget = RetryAllowance(config.retry_budget, clock)
        self.window = TargetWindow(clock=clock)
        self.in_flight = 0
        self.engine_s_per_token = PRIOR_ENGINE_S_PER_TOKEN  # moving average, local only
        infos = generator.models()
        self.max_model_len = infos[0].max_model_len if infos else None
        # the name the generator answers to (a local engine's own model name)
        self.model_name = infos[0].name if infos else config.name

    @property
    def name(self) -> str:
        """The model entry's name (what routes list, headers and logs show)."""
        return self.config.name

    @property
    def is_local(self) -> bool:
        """A local engine in this process (its load is read from its scheduler)."""
        return self.config.kind == "llm"

    def note_engine_time(self, engine_s: float, num_output_tokens: int) -> None:
        """Updates the average engine time per output token (prompt time included)."""
        if engine_s > 0 and num_output_tokens > 0:
            rate = engine_s / num_output_tokens
            self.engine_s_per_token += _EWMA_WEIGHT * (rate - self.engine_s_per_token)

    def reserve_output_per_mtok(self) -> float:
        """What an output token is expected to cost (USD per million), machine time
        included: what a budget reservation holds for it."""
        price = self.config.price
        machine = price.machine_per_hour / 3600 * self.engine_s_per_token * 1e6
        return price.output_per_mtok + machine

    def is_full(self) -> bool:
        """At its ``max_in_flight``: skip it as if overloaded."""
        limit = self.config.max_in_flight
        return limit is not None and self.in_flight >= limit

    def stats(self) -> GeneratorStats:
        """The generator's own stats, with the router's in-flight count for remote ones."""
        stats = self.generator.stats().get(self.model_name, GeneratorStats())
        if not self.is_local:
            return GeneratorStats(num_running=self.in_flight)
        return stats

    def load(self) -> float:
        """Lower is less loaded: a local engine's queue, running share and KV use; a remote
        one's in-flight share, scaled by its recent latency."""
        if self.is_local:
            s = self.stats()
            seats = max(s.max_num_seqs, 1)
            kv = s.num_kv_blocks_used / max(s.num_kv_blocks_total, 1)
            return (s.num_waiting * 2 + s.num_running) / seats + kv
        capacity = self.config.max_in_flight or 64
        ttft = self.window.p50_ttft_s() or 0.0
        return self.in_flight / capacity + ttft

    def status(self, weight: float | None = None) -> TargetStatus:
        """What ``GET /v1/routes`` shows."""
        ttft = self.window.p50_ttft_s()
        duration = self.window.p50_duration_s()
        return TargetStatus(
            name=self.name,
            kind=self.config.kind,
            breaker=self.breaker.state,
            in_flight=self.in_flight,
            num_requests=self.window.num_requests,
            error_rate=round(self.window.error_rate, 4),
            latency_ms_p50=None if duration is None else round(duration * 1000, 1),
            ttft_ms_p50=None if ttft is None else round(ttft * 1000, 1),
            weight=weight,
        )
