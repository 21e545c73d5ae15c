"""The Prometheus registry of one server (names follow vLLM's, ``inferline:`` prefix).

Request metrics are labelled by the model or route the client named; engine gauges and
counters are read from `Generator.stats()` per model at scrape time; route targets' breaker
state and in-flight requests from `Generator.models()`. Beside them, the GenAI semantic
conventions' server histograms (``gen_ai_server_*``: time to first token, time per output
token), labelled by operation and requested model.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferline.batching import BatchReport
from inferline.core.protocols import Generator, GeneratorStats

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_BATCH_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
_BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
MAX_KEY_LABELS = 256
# the GenAI semantic conventions' server metrics, with the bucket boundaries they advise
_GEN_AI_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
_GEN_AI_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_GEN_AI_LABELS = ["gen_ai_operation_name", "gen_ai_request_model"]
GEN_AI_OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion"}
"""``gen_ai.operation.name`` of the endpoints that generate text."""


def _engine_families(stats: dict[str, GeneratorStats]) -> Iterable[Metric]:
    def family(kind: type, name: str, doc: str, value_of: object) -> Metric:
        metric = kind(f"inferline:{name}", doc, labels=["model_name"])
        for model, s in stats.items():
            metric.add_metric([model], value_of(s))  # type: ignore[operator]
        return metric

    gauge, counter = GaugeMetricFamily, CounterMetricFamily
    yield family(gauge, "num_requests_running", "Requests running.", lambda s: s.num_running)
    yield family(gauge, "num_requests_waiting", "Requests waiting.", lambda s: s.num_waiting)
    yield family(
        gauge,
        "kv_cache_usage_perc",
        "Fraction of KV blocks in use.",
        lambda s: s.num_kv_blocks_used / max(s.num_kv_blocks_total, 1),
    )
    yield family(gauge, "num_kv_blocks_used", "KV blocks in use.", lambda s: s.num_kv_blocks_used)
    yield family(
        gauge, "num_kv_blocks_total", "KV blocks in the pool.", lambda s: s.num_kv_blocks_total
    )
    yield family(
        counter,
        "prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache.",
        lambda s: s.prefix_cache_queried_tokens,
    )
    yield family(
        counter,
        "prefix_cache_hits",
        "Prompt tokens served from the prefix cache.",
        lambda s: s.prefix_cache_hit_tokens,
    )
    yield family(
        counter,
        "num_preemptions",
        "Requests preempted for lack of KV blocks.",
        lambda s: s.num_preemptions,
    )
    yield family(
        counter,
        "spec_decode_num_draft_tokens",
        "Speculative (n-gram) draft tokens verified.",
        lambda s: s.spec_draft_tokens,
    )
    yield family(
        counter,
        "spec_decode_num_accepted_tokens",
        "Speculative draft tokens the model accepted.",
        lambda s: s.spec_accepted_tokens,
    )


class _GeneratorCollector(Collector):
    """Reads gauges and cumulative engine counters, and route targets, at scrape time."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    def collect(self) -> Iterable[Metric]:
        yield from _engine_families(self.generator.stats())
        breaker = GaugeMetricFamily(
            "inferline:target_breaker_state",
            "Circuit breaker of a route target: 0 closed, 1 half-open, 2 open.",
            labels=["target"],
        )
        in_flight = GaugeMetricFamily(
            "inferline:target_in_flight", "Requests in flight on a target.", labels=["target"]
        )
        seen: set[str] = set()
        for info in self.generator.models():
            for target in info.targets:
                if target.name in seen:
                    continue
                seen.add(target.name)
                breaker.add_metric([target.name], _BREAKER_STATES.get(target.breaker, 0))
                in_flight.add_metric([target.name], target.in_flight)
        yield breaker
        yield in_flight


class Metrics:
    """Histograms and counters the server updates per request."""

    def __init__(self, generator: Generator) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"inferline:{name}", doc, labels, registry=r, buckets=buckets)

        def counter(name: str, doc: str, names: list[str]) -> Counter:
            return Counter(f"inferline:{name}", doc, names, registry=r)

        self.ttft = histogram(
            "time_to_first_token_seconds", "Arrival to first token.", _LATENCY_BUCKETS
        )
        self.itl = histogram(
            "inter_token_latency_seconds", "Time between output tokens.", _ITL_BUCKETS
        )
        self.e2e = histogram(
            "e2e_request_latency_seconds", "Arrival to last token.", _LATENCY_BUCKETS
        )
        self.queue = histogram(
            "request_queue_time_seconds", "Arrival to first scheduling.", _LATENCY_BUCKETS
        )
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens processed.", labels)
        self.generation_tokens = counter("generation_tokens", "Tokens generated.", labels)
        self.request_success = counter(
            "request_success", "Finished requests by finish reason.", [*labels, "finished_reason"]
        )
        self.http_requests = counter(
            "http_requests", "HTTP responses by route and status code.", ["route", "status_code"]
        )
        self.attempts = counter(
            "route_attempts",
            "Attempts of routed requests by route, target and outcome.",
            ["route", "target", "status"],
        )
        self.fallbacks = counter(
            "route_fallbacks",
            "Routed requests answered by another target than the first, by reason.",
            ["route", "reason"],
        )
        self.cost = counter("cost_usd", "Cost of every attempt, by target.", ["target"])
        self.cache = counter(
            "response_cache", "Requests by response-cache outcome.", ["route", "outcome"]
        )
        self.decisions = counter(
            "check_decisions",
            "Requests of routes with checks, by the decision and the check that made it.",
            ["route", "check", "decision"],
        )
        self.check_seconds = Histogram(
            "inferline:check_duration_seconds",
            "Time one check took, by kind.",
            ["kind"],
            buckets=(0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.key_requests = counter(
            "key_requests", "Requests of virtual keys by HTTP status.", ["key", "status_code"]
        )
        self.key_spend = counter("key_spend_usd", "Spend of virtual keys.", ["key"])
        self._key_labels: set[str] = set()
        self.batch_size = histogram(
            "batch_size_rows", "Rows per model call of a micro-batched model.", _BATCH_SIZE_BUCKETS
        )
        self.batch_queue_wait = histogram(
            "batch_queue_wait_seconds",
            "Longest wait in the queue of the requests in a batch.",
            _BATCH_TIME_BUCKETS,
        )
        self.batch_compute = histogram(
            "batch_compute_seconds",
            "Time of one model call of a micro-batched model.",
            _BATCH_TIME_BUCKETS,
        )
        self.predicted_rows = counter(
            "predicted_rows", "Rows answered by micro-batched models.", labels
        )
        self.gen_ai_ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token: time to generate the first token.",
            _GEN_AI_LABELS,
            registry=r,
            buckets=_GEN_AI_TTFT_BUCKETS,
        )
        self.gen_ai_tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "gen_ai.server.time_per_output_token: time per output token after the first.",
            _GEN_AI_LABELS,
            registry=r,
            buckets=_GEN_AI_TPOT_BUCKETS,
        )
        r.register(_GeneratorCollector(generator))

    def key_label(self, key_id: str) -> str:
        """A key's label: its id for the first 256 keys seen, ``other`` beyond (bounded)."""
        if key_id in self._key_labels or len(self._key_labels) < MAX_KEY_LABELS:
            self._key_labels.add(key_id)
            return key_id
        return "other"

    def observe_gen_ai(
        self, endpoint: str, model: str, ttft_s: float | None = None, tpot_s: float | None = None
    ) -> None:
        """Records a chat or text completion's GenAI server metrics (other endpoints: none)."""
        operation = GEN_AI_OPERATIONS.get(endpoint)
        if operation is None:
            return
        if ttft_s is not None:
            self.gen_ai_ttft.labels(operation, model).observe(ttft_s)
        if tpot_s is not None:
            self.gen_ai_tpot.labels(operation, model).observe(tpot_s)

    def observe_batch(self, model: str, batch: BatchReport) -> None:
        """Records one model call of a micro-batched model."""
        self.batch_size.labels(model).observe(batch.num_rows)
        self.batch_queue_wait.labels(model).observe(batch.queue_wait_s)
        self.batch_compute.labels(model).observe(batch.compute_s)
