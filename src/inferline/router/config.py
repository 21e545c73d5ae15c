"""Route and target settings: frozen, validated on construction (errors name the field).

The CLI builds these from the config file (``routes:`` and the ``models:`` entries that
generate text); the router never reads files or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from inferline.core.errors import InvalidParameterError

Strategy = Literal["fallback", "weighted", "least_loaded", "cascade"]
STRATEGIES = ("fallback", "weighted", "least_loaded", "cascade")
CheckKind = Literal["logprob_mean", "logprob_min", "json_schema", "regex", "similarity"]
CHECK_KINDS = ("logprob_mean", "logprob_min", "json_schema", "regex", "similarity")


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise InvalidParameterError(f"{name} must be positive, got {value}", name)


@dataclass(frozen=True)
class Price:
    """What a target charges (USD); a local model costs 0 by default.

    ``*_per_mtok``: per million tokens; ``cached_input_per_mtok``: prompt tokens served from
    a prefix cache (default: the input price). ``machine_per_hour``: a local engine's
    machine price, charged for the engine time each request used (each step's time split
    among its requests by their tokens in it); it adds to the token prices.
    """

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float | None = None
    machine_per_hour: float = 0.0

    def __post_init__(self) -> None:
        cached = self.cached_input_per_mtok or 0.0
        values = (self.input_per_mtok, self.output_per_mtok, cached, self.machine_per_hour)
        if min(values) < 0:
            raise InvalidParameterError("prices must not be negative", "price")

    @property
    def cached_per_mtok(self) -> float:
        """The price of a cached prompt token."""
        if self.cached_input_per_mtok is None:
            return self.input_per_mtok
        return self.cached_input_per_mtok

    def cost_usd(
        self,
        num_prompt_tokens: int,
        num_output_tokens: int,
        num_cached_tokens: int = 0,
        engine_s: float = 0.0,
    ) -> float:
        """The cost of one attempt (``num_cached_tokens`` of the prompt at the cached price,
        ``engine_s`` of engine time at the machine price)."""
        cached = min(num_cached_tokens, num_prompt_tokens)
        tokens = (
            (num_prompt_tokens - cached) * self.input_per_mtok
            + cached * self.cached_per_mtok
            + num_output_tokens * self.output_per_mtok
        ) / 1e6
        return tokens + engine_s * self.machine_per_hour / 3600


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one target within a request (a route's setting).

    Attributes:
        attempts: tries per target (1 = no retry), each only for a retryable error.
        backoff_ms, max_backoff_ms: exponential backoff with full jitter: the k-th retry
            waits a uniform random time in [0, min(max, backoff * 2^k)]. A ``Retry-After``
            from the target replaces it when it fits the deadline.
    """

    attempts: int = 2
    backoff_ms: float = 200.0
    max_backoff_ms: float = 5000.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise InvalidParameterError("retry.attempts must be at least 1", "retry.attempts")
        if self.backoff_ms < 0 or self.max_backoff_ms < self.backoff_ms:
            raise InvalidParameterError(
                "retry: 0 <= backoff_ms <= max_backoff_ms is required", "retry.backoff_ms"
            )


@dataclass(frozen=True)
class RetryBudget:
    """A target's retry budget (shared by every route that lists it): retries may be at
    most ``ratio`` of its requests over ``window_s``, and at least ``min_retries``, so a
    failing upstream is not hammered by every request's retries at once."""

    ratio: float = 0.2
    window_s: float = 10.0
    min_retries: int = 3

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise InvalidParameterError("retry_budget.ratio must be in [0, 1]", "retry_budget")
        _positive("retry_budget.window_s", self.window_s)
        if self.min_retries < 0:
            raise InvalidParameterError("retry_budget.min_retries must be >= 0", "retry_budget")


@dataclass(frozen=True)
class BreakerConfig:
    """A target's circuit breaker: ``failures`` failed requests within ``window_s`` open
    it; after ``cooldown_s`` one probe request may pass (half-open): success closes it,
    failure opens it again."""

    failures: int = 5
    window_s: float = 30.0
    cooldown_s: float = 15.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise InvalidParameterError("breaker.failures must be at least 1", "breaker")
        _positive("breaker.window_s", self.window_s)
        _positive("breaker.cooldown_s", self.cooldown_s)


@dataclass(frozen=True)
class CheckConfig:
    """One acceptance check of a cascade stage's answer.

    ``logprob_mean`` / ``logprob_min``: the answer's mean / lowest token logprob must be at
    least ``threshold``; ``json_schema``: the answer must be JSON valid against the
    request's own schema (any JSON when it has none); ``regex``: ``pattern`` must match
    (search) the answer; ``similarity``: a one-pass model's score, the cosine similarity of
    the question's and the answer's embeddings by ``model`` (a sentence-embeddings model of
    the same server), must be at least ``threshold`` (an off-topic answer is escalated).
    """

    kind: CheckKind
    threshold: float = 0.0
    pattern: str = ""
    model: str = ""

    def __post_init__(self) -> None:
        if self.kind not in CHECK_KINDS:
            raise InvalidParameterError(
                f"check kind must be one of {', '.join(CHECK_KINDS)}, got {self.kind!r}", "kind"
            )
        if self.kind == "regex" and not self.pattern:
            raise InvalidParameterError("a regex check needs a pattern", "pattern")
        if self.kind == "similarity" and not self.model:
            raise InvalidParameterError("a similarity check needs a model", "model")

    @property
    def needs_logprobs(self) -> bool:
        """Whether the stage must be asked for token logprobs."""
        return self.kind in ("logprob_mean", "logprob_min")


@dataclass(frozen=True)
class TargetRef:
    """A route's use of a model entry (``weight`` for the weighted strategy)."""

    name: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.weight < 0:
            raise InvalidParameterError("weights must not be negative", "weight")


@dataclass(frozen=True)
class RouteConfig:
    """What clients put in ``model``, and how it is served.

    Attributes:
        strategy: ``fallback`` (targets in order), ``weighted`` (one picked by weight,
            sticky by ``user`` or session when ``sticky``; the others follow as fallbacks),
            ``least_loaded`` (live queue and KV of local engines, in-flight and latency of
            remote ones), ``cascade`` (in order; an answer is accepted only if ``checks``
            pass, otherwise the next target answers).
        deadline_s: one deadline for the whole request, every retry, fallback and cascade
            stage (a client's ``x-inferline-timeout-ms`` may shorten it); None: none.
    """

    name: str
    targets: tuple[TargetRef, ...]
    strategy: Strategy = "fallback"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    deadline_s: float | None = None
    checks: tuple[CheckConfig, ...] = ()
    sticky: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise InvalidParameterError(
                f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}",
                "strategy",
            )
        if not self.targets:
            raise InvalidParameterError("a route needs at least one target", "targets")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise InvalidParameterError("a route lists a target twice", "targets")
        _positive("deadline_s", self.deadline_s)
        if self.strategy == "cascade" and (len(self.targets) < 2 or not self.checks):
            raise InvalidParameterError(
                "a cascade needs at least two targets and at least one check", "checks"
            )
        if self.strategy == "weighted" and not any(t.weight > 0 for t in self.targets):
            raise InvalidParameterError("a weighted route needs a positive weight", "targets")


@dataclass(frozen=True)
class TargetConfig:
    """A model entry as a route target: its kind, price, breaker and capabilities.

    Attributes:
        kind: ``llm`` (a local engine in this process) or ``openai`` (a remote server).
        can_continue: the target can continue a partial assistant message (local engines
            and inferline/vLLM upstreams can), so a stream cut elsewhere finishes here.
        max_in_flight: requests sent at once at most (None: no limit); beyond, the target
            is skipped as if overloaded.
    """

    name: str
    kind: Literal["llm", "openai"] = "llm"
    price: Price = field(default_factory=Price)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry_budget: RetryBudget = field(default_factory=RetryBudget)
    can_continue: bool = True
    max_in_flight: int | None = None

    def __post_init__(self) -> None:
        _positive("max_in_flight", self.max_in_flight)
        if self.kind != "llm" and self.price.machine_per_hour:
            raise InvalidParameterError(
                f"{self.name}: price.machine_per_hour needs a local engine (kind: llm); "
                "a remote target is priced per token",
                "price",
            )
