"""Per-request measurements: Prometheus metrics and the request log, fed by `RequestTrace`."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from inferline.core.outputs import RequestOutput, RouteReport
from inferline.server.metrics import Metrics
from inferline.server.trace_fields import decision_fields, engine_timings, tool_calls_json
from inferline.server.tracing import TraceContext
from inferline.store.request_log import AttemptRecord, RequestLogWriter, RequestRecord


@dataclass
class RequestTrace:
    """Timings and results of one HTTP request, reported to metrics and the log at the end.

    ``model`` is the name the client sent (a route or a model); ``route`` is the router's
    report of the targets it tried, when a router served the request.
    """

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
    route: RouteReport | None = None
    admission: Any = None  # the key's `tenants.Admission`, settled when the request ends
    headers: dict[str, str] = field(default_factory=dict)  # sent with the response
    context: TraceContext | None = None  # W3C trace and span ids
    task_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    tool_results: str | None = None  # JSON: the tool_call_ids the request answers
    latency_s: float | None = None  # set when it finishes (for a rollout's sample)
    prompt: tuple[str, int, str | None] | None = None  # a stored prompt: id, version, label
    body: Any = None  # the request as the client sent it (a pydantic model), for the log
    rollout: tuple[str, str] | None = None  # (rollout, arm) when a rollout chose its arm
    _itl: Any = field(default=None, repr=False)

    def on_output(self, output: RequestOutput, metrics: Metrics) -> None:
        """Records token arrival times (TTFT, inter-token latency)."""
        if output.route is not None:
            self.route = output.route
        num_new = sum(o.num_tokens_delta for o in output.outputs)
        if num_new == 0:
            return
        now = time.perf_counter()
        if self.first_token is None:
            self.first_token = now
            metrics.ttft.labels(self.model).observe(now - self.start)
            metrics.observe_gen_ai(self.endpoint, self.model, ttft_s=now - self.start)
        elif self.last_token is not None:
            if self._itl is None:
                self._itl = metrics.itl.labels(self.model)  # looked up once per request
            gap = (now - self.last_token) / num_new
            for _ in range(num_new):
                self._itl.observe(gap)
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


def _attempt_records(request_id: str, route: RouteReport | None) -> tuple[AttemptRecord, ...]:
    if route is None:
        return ()
    return tuple(
        AttemptRecord(
            request_id=request_id,
            attempt=a.number,
            target=a.target,
            reason=a.reason,
            started_at=a.started_s,
            status=a.status,
            ttft_s=a.first_token_s,
            duration_s=a.duration_s,
            error_type=a.error_type,
            error=a.error,
            prompt_tokens=a.num_prompt_tokens,
            completion_tokens=a.num_output_tokens,
            cost_usd=a.cost_usd,
            cached_tokens=a.num_cached_tokens,
            engine_s=round(a.engine_s, 6) if a.engine_s else None,
        )
        for a in route.attempts
    )


_HITS = ("hit", "semantic-hit")


def _time_per_output_token(trace: RequestTrace) -> float | None:
    """First to last token over the tokens after the first, of the longest choice (the
    choices decode together); None for a cache hit (replayed, not decoded) or one token."""
    if trace.first_token is None or trace.last_token is None:
        return None
    if trace.route is not None and trace.route.cache in _HITS:
        return None
    tokens = max((c.num_tokens for o in trace.outputs for c in o.outputs), default=0)
    return (trace.last_token - trace.first_token) / (tokens - 1) if tokens > 1 else None


_KEY_PATTERN = r"sk-inf-[A-Za-z0-9_\-]{8,}"


class Redactor:
    """Removes API keys from text before it is logged: inferline's own key format, and the
    server's admin keys, wherever a client pasted them (a prompt, an answer)."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        parts = [_KEY_PATTERN, *(re.escape(s) for s in sorted(secrets, key=len, reverse=True))]
        self._pattern = re.compile("|".join(parts))

    def __call__(self, text: str | None) -> str | None:
        """``text`` with every key replaced by ``[redacted key]``."""
        return None if text is None else self._pattern.sub("[redacted key]", text)


class RecordExporter(Protocol):
    """Where finished requests go besides the log (`server.otel.OtelExporter`)."""

    def export(self, record: RequestRecord, attempts: Sequence[AttemptRecord] = ()) -> None:
        """Takes one finished request; must not block or raise."""


class Observer:
    """Reports finished requests to Prometheus, to the request log and to the exporter
    (if any)."""

    def __init__(
        self,
        metrics: Metrics,
        log_writer: RequestLogWriter | None,
        log_text: bool,
        redact: Redactor | None = None,
        exporter: RecordExporter | None = None,
    ):
        self.metrics = metrics
        self.log_writer = log_writer
        self.log_text = log_text
        self.redact = redact or Redactor()
        self.exporter = exporter
        # a finished request of a rollout goes here (the rollouts' worker queue)
        self.rollout_sink: Callable[[RequestTrace, int, str | None], None] | None = None

    def finish(self, trace: RequestTrace, status_code: int, error: str | None = None) -> None:
        """Called once per request, success or not (its key's spend is settled here)."""
        end = time.perf_counter()
        outputs = trace.outputs
        if trace.admission is not None:
            tokens = (
                sum(o.num_prompt_tokens for o in outputs),
                sum(o.metrics.num_cached_prompt_tokens for o in outputs),
                sum(o.num_generated_tokens for o in outputs),
            )
            spend = trace.admission.tenants.finish(trace.admission, trace.route, tokens)
            label = self.metrics.key_label(trace.admission.key.id)
            self.metrics.key_requests.labels(label, str(status_code)).inc()
            self.metrics.key_spend.labels(label).inc(spend)
        finish_reasons = [c.finish_reason for o in outputs for c in o.outputs if c.finish_reason]
        if status_code == 200:
            self._count_success(trace, end, finish_reasons)
        self._count_route(trace.route)
        queue_time = self._queue_time(outputs)
        if queue_time is not None:
            self.metrics.queue.labels(trace.model).observe(queue_time)
        text = "\x1e".join(c.text for o in outputs for c in o.outputs) if outputs else None
        if self.rollout_sink is not None and trace.rollout is not None:
            trace.latency_s = end - trace.start
            self.rollout_sink(trace, status_code, text)
        if self.log_writer is None and self.exporter is None:
            return
        route = trace.route
        record = RequestRecord(
            request_id=trace.request_id,
            created_at=trace.created_at,
            model=trace.model,
            endpoint=trace.endpoint,
            status_code=status_code,
            finish_reason=finish_reasons[0] if finish_reasons else None,
            error=self.redact(error),
            prompt=self.redact(trace.prompt_text) if self.log_text else None,
            output=self.redact(text) if self.log_text else None,
            prompt_tokens=sum(o.num_prompt_tokens for o in outputs),
            completion_tokens=sum(o.num_generated_tokens for o in outputs),
            cached_tokens=sum(o.metrics.num_cached_prompt_tokens for o in outputs),
            queue_time_s=queue_time,
            ttft_s=None if trace.first_token is None else trace.first_token - trace.start,
            total_time_s=end - trace.start,
            user_id=trace.user,
            route=route.route if route else None,
            target=(route.model or route.target or None) if route else None,
            num_attempts=len(route.attempts) if route else 0,
            fallback_reason=route.fallback_reason if route else None,
            cost_usd=route.cost_usd if route else 0.0,
            key_id=trace.admission.key.id if trace.admission is not None else None,
            **self._trace_fields(trace),
        )
        attempts = _attempt_records(trace.request_id, route)
        if self.log_writer is not None:
            self.log_writer.record(record, attempts)
        if self.exporter is not None:
            self.exporter.export(record, attempts)

    def _trace_fields(self, trace: RequestTrace) -> dict[str, Any]:
        """What the trace adds to the log row: ids, task, team, cache, engine timings, tools."""
        context, route, key = trace.context, trace.route, None
        if trace.admission is not None:
            key = trace.admission.key
        team = key.metadata.get("team") if key is not None else None
        return {
            "trace_id": context.trace_id if context else None,
            "span_id": context.span_id if context else None,
            "parent_span_id": context.parent_span_id if context else None,
            "task_id": trace.task_id,
            "team": str(team) if team is not None else None,
            "cache": route.cache if route else None,
            "stopped_by": route.stopped_by if route else None,
            "tool_calls": self.redact(tool_calls_json(trace.outputs, self.log_text)),
            "tool_results": trace.tool_results,
            # client-written text: a key pasted into it is redacted like one in a prompt
            "metadata": self.redact(json.dumps(trace.metadata)) if trace.metadata else None,
            "prompt_id": trace.prompt[0] if trace.prompt else None,
            "prompt_version": trace.prompt[1] if trace.prompt else None,
            "prompt_label": trace.prompt[2] if trace.prompt else None,
            "request_body": self._request_body(trace),
            **decision_fields(route, self.log_text, self.redact),
            # a cache hit ran no engine: the replayed outputs carry the original's times
            **engine_timings(() if route and route.cache in _HITS else trace.outputs),
        }

    def _request_body(self, trace: RequestTrace) -> str | None:
        """The client's request as JSON (what a dataset item or a replay is made of), only
        when text is logged, redacted like the prompt."""
        if not self.log_text or trace.body is None:
            return None
        return self.redact(trace.body.model_dump_json(exclude_unset=True))

    def _count_success(
        self, trace: RequestTrace, end: float, finish_reasons: Sequence[str]
    ) -> None:
        m, model = self.metrics, trace.model
        m.e2e.labels(model).observe(end - trace.start)
        m.prompt_tokens.labels(model).inc(sum(o.num_prompt_tokens for o in trace.outputs))
        m.generation_tokens.labels(model).inc(sum(o.num_generated_tokens for o in trace.outputs))
        for reason in finish_reasons:
            m.request_success.labels(model, reason).inc()
        tpot = _time_per_output_token(trace)
        if tpot is not None:
            m.observe_gen_ai(trace.endpoint, model, tpot_s=tpot)

    def _count_route(self, route: RouteReport | None) -> None:
        if route is None:
            return
        if route.cache is not None:
            self.metrics.cache.labels(route.route, route.cache).inc()
        for attempt in route.attempts:
            self.metrics.attempts.labels(route.route, attempt.target, attempt.status).inc()
            if attempt.cost_usd:
                self.metrics.cost.labels(attempt.target).inc(attempt.cost_usd)
        if route.fallback_reason:
            self.metrics.fallbacks.labels(route.route, route.fallback_reason).inc()
        if route.decision is not None:
            decision = route.decision
            self.metrics.decisions.labels(
                route.route, decision.check or "", decision.decision
            ).inc()
            for check in decision.checks:
                self.metrics.check_seconds.labels(check.kind).observe(check.duration_s)

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
                prompt=self.redact(trace.input_text) if self.log_text else None,
                output=self.redact(trace.output_text)
                if self.log_text and status_code == 200
                else None,
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
