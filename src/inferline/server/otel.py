"""OpenTelemetry export of finished requests, after the GenAI semantic conventions.

Each chat or text completion becomes a SERVER span named ``{gen_ai.operation.name}
{gen_ai.request.model}`` whose trace and span ids are the request's own (the span the
``traceparent`` returned to the client names; its parent is the client's span), with one
CLIENT child span per attempt on a route target. The spans are made from the request log's
records once the request has ended (finished spans, `ReadableSpan`, with the record's ids
and times: nothing is open while the request runs) and handed to a `BatchSpanProcessor`: the
request path only enqueues, the SDK's thread exports over OTLP/HTTP protobuf, and the queue
is flushed when the app stops. Every request is exported (no sampler). Message content is
recorded only when asked (``capture_content``), and only when the server logs text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from inferline.core.protocols import Generator
from inferline.server.metrics import GEN_AI_OPERATIONS
from inferline.store.request_log import AttemptRecord, RequestRecord

logger = logging.getLogger(__name__)

PROVIDER = "inferline"  # gen_ai.provider.name of this server's spans and local engines
_REMOTE_PROVIDER = "openai"  # a remote target speaks the OpenAI API
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_IDS = RandomIdGenerator()
_UNSET = Status(StatusCode.UNSET)

AttributeValue = str | int | float | bool | Sequence[str]


class TargetProviders:
    """``gen_ai.provider.name`` of a route target: ``inferline`` for a local engine,
    ``openai`` for a remote OpenAI-compatible upstream (read from `Generator.models()`,
    again when a target is not known yet, as after a reload)."""

    def __init__(self, generator: Generator | None = None) -> None:
        self.generator = generator
        self._kinds: dict[str, str] = {}

    def __call__(self, target: str) -> str:
        """The provider of ``target`` (``inferline`` when no generator names it)."""
        if target not in self._kinds and self.generator is not None:
            infos = self.generator.models()
            self._kinds = {t.name: t.kind for info in infos for t in info.targets}
        kind = self._kinds.get(target, "llm")
        return PROVIDER if kind == "llm" else _REMOTE_PROVIDER


class OtelExporter:
    """Turns finished requests into spans and exports them in batches on a background
    thread. ``export`` never raises and never waits for the network."""

    def __init__(
        self,
        span_exporter: SpanExporter,
        *,
        capture_content: bool = False,
        resource: Resource | None = None,
    ) -> None:
        self.capture_content = capture_content
        self.providers = TargetProviders()
        self._resource = resource or _resource()
        self._scope = InstrumentationScope("inferline.server", _version())
        self._processor = BatchSpanProcessor(span_exporter)
        self._is_shut_down = False

    @classmethod
    def otlp(cls, endpoint: str, *, capture_content: bool = False) -> OtelExporter:
        """An exporter posting OTLP/HTTP protobuf to ``endpoint`` (the full traces URL);
        headers, timeout and TLS come from the standard ``OTEL_EXPORTER_OTLP_*`` variables,
        the batching from ``OTEL_BSP_*``."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return cls(OTLPSpanExporter(endpoint=endpoint), capture_content=capture_content)

    def bind(self, generator: Generator) -> None:
        """Reads attempts' providers from ``generator``'s route targets."""
        self.providers = TargetProviders(generator)

    def export(self, record: RequestRecord, attempts: Sequence[AttemptRecord] = ()) -> None:
        """Queues the spans of one finished chat or text completion (other endpoints are
        skipped); a failure is logged, never raised."""
        operation = GEN_AI_OPERATIONS.get(record.endpoint)
        if operation is None or self._is_shut_down:
            return
        try:
            self._export(operation, record, attempts)
        except Exception:  # an exporter must never fail a request
            logger.exception("could not export the spans of %s", record.request_id)

    def _export(
        self, operation: str, record: RequestRecord, attempts: Sequence[AttemptRecord]
    ) -> None:
        trace_id = _int(record.trace_id) or _IDS.generate_trace_id()  # None: a refused request
        span_id = _int(record.span_id) or _IDS.generate_span_id()
        context = SpanContext(trace_id, span_id, False, _SAMPLED)
        parent_id = _int(record.parent_span_id)
        parent = None if parent_id is None else SpanContext(trace_id, parent_id, True, _SAMPLED)
        for attempt in attempts:
            self._processor.on_end(self._attempt_span(operation, attempt, context))
        start = _ns(record.created_at)
        failed = record.status_code >= 500  # a 4xx leaves a server span's status unset
        span = ReadableSpan(
            f"{operation} {record.model}" if record.model else operation,
            context,
            parent,
            self._resource,
            request_attributes(record, operation, self.capture_content),
            kind=SpanKind.SERVER,
            status=Status(StatusCode.ERROR, record.error) if failed else _UNSET,
            start_time=start,
            end_time=start + _ns(record.total_time_s or 0.0),
            instrumentation_scope=self._scope,
        )
        self._processor.on_end(span)

    def _attempt_span(
        self, operation: str, attempt: AttemptRecord, parent: SpanContext
    ) -> ReadableSpan:
        start = _ns(attempt.started_at)
        context = SpanContext(parent.trace_id, _IDS.generate_span_id(), False, _SAMPLED)
        failed = attempt.status == "error"
        return ReadableSpan(
            f"{operation} {attempt.target}",
            context,
            parent,
            self._resource,
            attempt_attributes(attempt, operation, self.providers(attempt.target)),
            kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR, attempt.error_type) if failed else _UNSET,
            start_time=start,
            end_time=start + _ns(attempt.duration_s or 0.0),
            instrumentation_scope=self._scope,
        )

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Exports every queued span now; False if that took longer than ``timeout_s``."""
        return self._processor.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flushes the queue and stops the export thread (once; later exports are dropped)."""
        if not self._is_shut_down:
            self._is_shut_down = True
            self._processor.shutdown()


def request_attributes(
    record: RequestRecord, operation: str, capture_content: bool = False
) -> dict[str, AttributeValue]:
    """The request span's attributes: GenAI conventions, then inferline's own."""
    error = str(record.status_code) if record.status_code >= 400 else None
    prompt_version = None if record.prompt_version is None else str(record.prompt_version)
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": record.model,
        "gen_ai.response.model": record.target,
        "gen_ai.response.id": record.request_id,
        "gen_ai.response.finish_reasons": [record.finish_reason] if record.finish_reason else None,
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "gen_ai.usage.cache_read.input_tokens": record.cached_tokens,
        "gen_ai.prompt.name": record.prompt_id,
        "gen_ai.prompt.version": prompt_version if record.prompt_id else None,
        "http.response.status_code": record.status_code,
        "error.type": error,
        **_inferline_attributes(record),
    }
    if capture_content:
        attributes.update(_content(record))
    return _compact(attributes)


def _inferline_attributes(record: RequestRecord) -> dict[str, Any]:
    return {
        "inferline.route": record.route,
        "inferline.cache": record.cache,
        "inferline.cost_usd": record.cost_usd,
        "inferline.queue_time_s": record.queue_time_s,
        "inferline.ttft_s": record.ttft_s,
        "inferline.prefill_s": record.prefill_s,
        "inferline.decode_s": record.decode_s,
        "inferline.tpot_s": record.tpot_s,
        "inferline.prefix_cache.hit_tokens": record.cached_tokens,
        "inferline.attempts": record.num_attempts,
        "inferline.fallback_reason": record.fallback_reason,
        "inferline.stopped_by": record.stopped_by,
        "inferline.prompt.id": record.prompt_id,
        "inferline.prompt.version": record.prompt_version,
        "inferline.prompt.label": record.prompt_label,
        "inferline.key_id": record.key_id,
        "inferline.team": record.team,
        "inferline.task_id": record.task_id,
    }


def attempt_attributes(
    attempt: AttemptRecord, operation: str, provider: str
) -> dict[str, AttributeValue]:
    """An attempt span's attributes (``error.type``: the router's error kind)."""
    failed = attempt.status == "error"
    return _compact(
        {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": attempt.target,
            "gen_ai.response.model": attempt.target if attempt.status == "ok" else None,
            "gen_ai.usage.input_tokens": attempt.prompt_tokens,
            "gen_ai.usage.output_tokens": attempt.completion_tokens,
            "gen_ai.usage.cache_read.input_tokens": attempt.cached_tokens,
            "error.type": (attempt.error_type or "_OTHER") if failed else None,
            "inferline.attempt.number": attempt.attempt,
            "inferline.attempt.reason": attempt.reason,
            "inferline.attempt.status": attempt.status,
            "inferline.attempt.cost_usd": attempt.cost_usd,
            "inferline.attempt.ttft_s": attempt.ttft_s,
            "inferline.attempt.engine_s": attempt.engine_s,
        }
    )


def _content(record: RequestRecord) -> dict[str, str | None]:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages`` as JSON strings (the logged
    prompt text is the last message; each choice is one output message)."""
    content: dict[str, str | None] = {}
    if record.prompt is not None:
        message = {"role": "user", "parts": [{"type": "text", "content": record.prompt}]}
        content["gen_ai.input.messages"] = json.dumps([message])
    if record.output is not None:
        reason = record.finish_reason or "error"
        choices = [
            {"role": "assistant", "parts": [{"type": "text", "content": text}],
             "finish_reason": reason}
            for text in record.output.split("\x1e")
        ]  # fmt: skip
        content["gen_ai.output.messages"] = json.dumps(choices)
    return content


def _compact(attributes: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """Without the attributes that have no value (OpenTelemetry refuses None)."""
    return {k: v for k, v in attributes.items() if v is not None}


def _resource() -> Resource:
    """The standard resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``), named
    ``inferline`` unless those name the service."""
    resource = Resource.create({})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "inferline"}))
    return resource


def _version() -> str | None:
    try:
        return metadata.version("inferline")
    except metadata.PackageNotFoundError:
        return None


def _int(hex_id: str | None) -> int | None:
    return int(hex_id, 16) if hex_id else None


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)
