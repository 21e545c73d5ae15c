"""Per-request measurements: Prometheus metrics and the request log, fed by `RequestTrace`."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferline.batching import BatchReport
from inferline.core.outputs import RequestOutput
from inferline.core.protocols import Generator
from inferline.store.request_log import RequestLogWriter, RequestRecord

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_BATCH_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class _GeneratorCollector(Collector):
    """Reads gauges and cumulative engine counters at scrape time."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    def collect(self) -> Iterable[Metric]:
        stats = self.generator.stats()
        labels = ["model_name"]
        model = [self.generator.model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            metric = GaugeMetricFamily(f"inferline:{name}", doc, labels=labels)
            metric.add_metric(model, value)
            return metric

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            metric = CounterMetricFamily(f"inferline:{name}", doc, labels=labels)
            metric.add_metric(model, value)
            return metric

        total = max(stats.num_kv_blocks_total, 1)
        yield gauge("num_requests_running", "Requests in the running batch.", stats.num_running)
        yield gauge("num_requests_waiting", "Requests waiting for admission.", stats.num_waiting)
        yield gauge(
            "kv_cache_usage_perc", "Fraction of KV blocks in use.", stats.num_kv_blocks_used / total
        )
        yield gauge("num_kv_blocks_used", "KV cache blocks in use.", stats.num_kv_blocks_used)
        yield gauge(
            "num_kv_blocks_total", "KV cache blocks in the pool.", stats.num_kv_blocks_total
        )
        yield counter(
            "prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            stats.prefix_cache_queried_tokens,
        )
        yield counter(
            "prefix_cache_hits",
            "Prompt tokens served from the prefix cache.",
            stats.prefix_cache_hit_tokens,
        )
        yield counter(
            "num_preemptions", "Requests preempted for lack of KV blocks.", stats.num_preemptions
        )


class Metrics:
    """The Prometheus registry of one server (names follow vLLM's, ``inferline:`` prefix)."""

    def __init__(self, generator: Generator) -> None:
        self.registry = CollectorRegistry()
        self.model_name = generator.model_name
        labels = ["model_name"]
        r = self.registry

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"inferline:{name}", doc, labels, registry=r, buckets=buckets)

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
        self.prompt_tokens = Counter(
            "inferline:prompt_tokens", "Prompt tokens processed.", labels, registry=r
        )
        self.generation_tokens = Counter(
            "inferline:generation_tokens", "Tokens generated.", labels, registry=r
        )
        self.request_success = Counter(
            "inferline:request_success",
            "Finished requests by finish reason.",
            [*labels, "finished_reason"],
            registry=r,
        )
        self.http_requests = Counter(
            "inferline:http_requests",
            "HTTP responses by route and status code.",
            ["route", "status_code"],
            registry=r,
        )
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
        self.predicted_rows = Counter(
            "inferline:predicted_rows", "Rows answered by micro-batched models.", labels, registry=r
        )
        r.register(_GeneratorCollector(generator))

    def observe_batch(self, model: str, batch: BatchReport) -> None:
        """Records one model call of a micro-batched model."""
        self.batch_size.labels(model).observe(batch.num_rows)
        self.batch_queue_wait.labels(model).observe(batch.queue_wait_s)
        self.batch_compute.labels(model).observe(batch.compute_s)


@dataclass
class RequestTrace:
    """Timings and results of one HTTP request, reported to metrics and the log at the end."""

    request_id: str
    endpoint: str
    model: str
    prompt_text: str | None
    user: str | None
    start: float = field(default_factory=time.perf_counter)
    created_at: float = field(default_factory=time.time)
    first_token: float | None = None
    last_token: float | None = None
    num_tokens_seen: int = 0
    outputs: list[RequestOutput] = field(default_factory=list)

    def on_output(self, output: RequestOutput, metrics: Metrics) -> None:
        """Records token arrival times (TTFT, inter-token latency)."""
        now = time.perf_counter()
        num_new = sum(len(o.token_ids_delta) for o in output.outputs)
        if num_new == 0:
            return
        if self.first_token is None:
            self.first_token = now
            metrics.ttft.labels(metrics.model_name).observe(now - self.start)
        elif self.last_token is not None:
            gap = (now - self.last_token) / num_new
            for _ in range(num_new):
                metrics.itl.labels(metrics.model_name).observe(gap)
        self.last_token = now
        self.num_tokens_seen += num_new


@dataclass
class RowsTrace:
    """One request to a micro-batched model (embeddings, predict)."""

    request_id: str
    endpoint: str
    model: str
    user: str | None
    start: float
    created_at: float = field(default_factory=time.time)
    num_rows: int = 0
    num_tokens: int = 0
    batch_ids: list[int] = field(default_factory=list)
    input_text: str | None = None
    output_text: str | None = None


class Observer:
    """Reports finished requests to Prometheus and to the request log (if any)."""

    def __init__(self, metrics: Metrics, log_writer: RequestLogWriter | None, log_text: bool):
        self.metrics = metrics
        self.log_writer = log_writer
        self.log_text = log_text

    def finish(self, trace: RequestTrace, status_code: int, error: str | None = None) -> None:
        """Called once per request, success or not."""
        m, model = self.metrics, self.metrics.model_name
        end = time.perf_counter()
        outputs = trace.outputs
        prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
        completion_tokens = sum(o.num_generated_tokens for o in outputs)
        finish_reasons = [c.finish_reason for o in outputs for c in o.outputs if c.finish_reason]
        if status_code == 200:
            m.e2e.labels(model).observe(end - trace.start)
            m.prompt_tokens.labels(model).inc(prompt_tokens)
            m.generation_tokens.labels(model).inc(completion_tokens)
            for reason in finish_reasons:
                m.request_success.labels(model, reason).inc()
        queue_time = self._queue_time(outputs)
        if queue_time is not None:
            m.queue.labels(model).observe(queue_time)
        if self.log_writer is None:
            return
        text = "\x1e".join(c.text for o in outputs for c in o.outputs) if outputs else None
        self.log_writer.record(
            RequestRecord(
                request_id=trace.request_id,
                created_at=trace.created_at,
                model=trace.model,
                endpoint=trace.endpoint,
                status_code=status_code,
                finish_reason=finish_reasons[0] if finish_reasons else None,
                error=error,
                prompt=trace.prompt_text if self.log_text else None,
                output=text if self.log_text else None,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cached_tokens=sum(o.metrics.num_cached_prompt_tokens for o in outputs),
                queue_time_s=queue_time,
                ttft_s=None if trace.first_token is None else trace.first_token - trace.start,
                total_time_s=end - trace.start,
                user_id=trace.user,
            )
        )

    def finish_rows(self, trace: RowsTrace, status_code: int, error: str | None = None) -> None:
        """Called once per embeddings or predict request, success or not."""
        end = time.perf_counter()
        if status_code == 200:
            self.metrics.e2e.labels(trace.model).observe(end - trace.start)
            self.metrics.predicted_rows.labels(trace.model).inc(trace.num_rows)
            if trace.num_tokens:
                self.metrics.prompt_tokens.labels(trace.model).inc(trace.num_tokens)
        if self.log_writer is None:
            return
        self.log_writer.record(
            RequestRecord(
                request_id=trace.request_id,
                created_at=trace.created_at,
                model=trace.model,
                endpoint=trace.endpoint,
                status_code=status_code,
                error=error,
                prompt=trace.input_text if self.log_text else None,
                output=trace.output_text if self.log_text and status_code == 200 else None,
                prompt_tokens=trace.num_tokens,
                total_time_s=end - trace.start,
                user_id=trace.user,
                batch_ids=",".join(map(str, trace.batch_ids)) or None,
            )
        )

    def reject(self, endpoint: str, model: str, status_code: int, error: str) -> None:
        """Logs a request refused before generation (validation, unknown model)."""
        trace = RequestTrace(f"rejected-{uuid.uuid4().hex}", endpoint, model, None, None)
        self.finish(trace, status_code, error)

    @staticmethod
    def _queue_time(outputs: list[RequestOutput]) -> float | None:
        times = [
            o.metrics.first_scheduled_s - o.metrics.arrival_s
            for o in outputs
            if o.metrics.first_scheduled_s is not None
        ]
        return max(times) if times else None
