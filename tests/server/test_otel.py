"""OpenTelemetry export: the app's spans as a real OTLP/HTTP collector receives them (the
trace ids the client sees, one child span per attempt, GenAI and inferline attributes,
content only when asked), the GenAI histograms on ``/metrics``, and ``serve``'s options."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from inferline.cli.main import build_parser
from inferline.cli.server_factory import otel_exporter, otlp_traces_endpoint
from inferline.core.errors import UpstreamError
from inferline.router.config import Price, RetryPolicy, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.server.otel import OtelExporter, request_attributes
from inferline.store.request_log import RequestRecord
from tests.router.fakes import WORDS, ScriptedGenerator, Step

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Collector:
    """An OTLP/HTTP trace receiver on a free local port: every span it was sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 404
                if self.path == "/v1/traces":
                    collector.content_types.append(self.headers["Content-Type"])
                    collector.requests.append(ExportTraceServiceRequest.FromString(body))
                    status = 200
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> list[Span]:
        """Every span received, in order."""
        return [
            span
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def close(self) -> None:
        """Stops the server."""
        self.server.shutdown()
        self.server.server_close()


def value(any_value: AnyValue) -> Any:
    """An OTLP attribute value as Python."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind)


def attributes(span: Span) -> dict[str, Any]:
    """A span's attributes by key."""
    return {kv.key: value(kv.value) for kv in span.attributes}


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


def route_app(exporter: OtelExporter | None, log_text: bool = True) -> Any:
    """A route ``bot`` whose first target (remote) fails and second (local) answers at
    1 USD per output token; no request log."""
    broken = ScriptedGenerator("broken", [Step(error=UpstreamError("down", target="broken"))])
    targets = [
        Target(TargetConfig("broken", kind="openai"), broken),
        Target(TargetConfig("good", price=Price(output_per_mtok=1e6)), ScriptedGenerator("good")),
    ]
    refs = (TargetRef("broken"), TargetRef("good"))
    route = RouteConfig("bot", refs, retry=RetryPolicy(attempts=1))
    config = ServerConfig(log_text=log_text)
    return create_app(Router(targets, [route]), config, otel_exporter=exporter)


@contextmanager
def serving(collector: Collector, capture: bool = False) -> Iterator[tuple[TestClient, Any]]:
    """The route app exporting to ``collector``; the exporter stops with the app."""
    exporter = OtelExporter.otlp(collector.url, capture_content=capture)
    with TestClient(route_app(exporter)) as client:
        yield client, exporter


def chat(client: TestClient, headers: dict[str, str] | None = None) -> Any:
    payload = {"model": "bot", "messages": [{"role": "user", "content": "hi"}]}
    response = client.post("/v1/chat/completions", json=payload, headers=headers or {})
    assert response.status_code == 200, response.text
    return response


def test_the_request_span_is_the_one_the_client_was_told_of(collector: Collector) -> None:
    with serving(collector) as (client, exporter):
        headers = {"traceparent": PARENT, "x-inferline-task-id": "run-1"}
        response = chat(client, headers)
        assert exporter.force_flush()
        assert collector.content_types == ["application/x-protobuf"]
        server, *attempts = sorted(collector.spans(), key=lambda s: s.kind != Span.SPAN_KIND_SERVER)
    _, trace_id, span_id, _ = response.headers["traceparent"].split("-")
    assert (server.name, server.kind) == ("chat bot", Span.SPAN_KIND_SERVER)
    assert (server.trace_id.hex(), server.span_id.hex()) == (trace_id, span_id)
    assert server.parent_span_id.hex() == "b7ad6b7169203331"
    assert [(a.name, a.kind) for a in attempts] == [
        ("chat broken", Span.SPAN_KIND_CLIENT), ("chat good", Span.SPAN_KIND_CLIENT)]  # fmt: skip
    assert all(a.trace_id == server.trace_id and a.parent_span_id == server.span_id
               for a in attempts)  # fmt: skip
    assert len({server.span_id, *(a.span_id for a in attempts)}) == 3
    for attempt in attempts:
        assert server.start_time_unix_nano <= attempt.start_time_unix_nano + 1_000_000
        assert attempt.start_time_unix_nano <= attempt.end_time_unix_nano
        assert attempt.end_time_unix_nano <= server.end_time_unix_nano + 1_000_000
    assert server.status.code == Status.STATUS_CODE_UNSET
    assert attempts[0].status.code == Status.STATUS_CODE_ERROR
    found = attributes(server)
    assert found == found | {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "inferline",
        "gen_ai.request.model": "bot",
        "gen_ai.response.model": "good",
        "gen_ai.response.id": response.headers["x-request-id"],
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 7,
        "gen_ai.usage.output_tokens": len(WORDS),
        "http.response.status_code": 200,
        "inferline.route": "bot",
        "inferline.cost_usd": pytest.approx(len(WORDS)),
        "inferline.task_id": "run-1",
        "inferline.attempts": 2,
        "inferline.prefix_cache.hit_tokens": 0,
    }
    assert "error.type" not in found and "inferline.key_id" not in found
    assert not any(key.startswith(("gen_ai.input", "gen_ai.output")) for key in found)
    broken, good = (attributes(a) for a in attempts)
    assert broken == broken | {
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "broken",
        "error.type": "upstream_error",
        "inferline.attempt.reason": "first",
        "inferline.attempt.status": "error",
    }
    assert "gen_ai.response.model" not in broken
    assert good == good | {
        "gen_ai.provider.name": "inferline",
        "gen_ai.response.model": "good",
        "gen_ai.usage.output_tokens": len(WORDS),
        "inferline.attempt.reason": "upstream_error",  # why it was made: a fallback
        "inferline.attempt.status": "ok",
        "inferline.attempt.cost_usd": pytest.approx(len(WORDS)),
    }


def test_content_is_exported_only_when_asked(collector: Collector) -> None:
    with serving(collector, capture=True) as (client, exporter):
        chat(client)
        assert exporter.force_flush()
    server = next(s for s in collector.spans() if s.kind == Span.SPAN_KIND_SERVER)
    found = attributes(server)
    assert json.loads(found["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}]  # fmt: skip
    assert json.loads(found["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": " ".join(WORDS)}],
         "finish_reason": "stop"}]  # fmt: skip


def test_stopping_the_app_flushes_and_a_new_trace_has_no_parent(collector: Collector) -> None:
    with serving(collector) as (client, _):
        body = {"model": "good", "prompt": "hi", "max_tokens": 3}
        response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        client.post("/v1/embeddings", json={"model": "good", "input": "x"})  # not a span
    # sent at shutdown, without a flush of ours (children end, so are queued, first)
    attempt, span = collector.spans()
    assert (span.name, span.parent_span_id) == ("text_completion good", b"")
    assert (attempt.name, attempt.parent_span_id) == ("text_completion good", span.span_id)
    assert span.trace_id.hex() == response.headers["traceparent"].split("-")[1]
    assert attributes(span)["gen_ai.operation.name"] == "text_completion"


def test_attributes_of_a_full_record_and_of_a_refused_one() -> None:
    record = RequestRecord(
        "chatcmpl-1", 1000.0, "bot", "/v1/chat/completions", 429, error="budget",
        prompt="secret", cached_tokens=5, queue_time_s=0.25, cache="miss", key_id="key-1",
        team="support", prompt_id="greet", prompt_version=3, prompt_label="prod",
    )  # fmt: skip
    found = request_attributes(record, "chat")
    assert found == found | {
        "error.type": "429",
        "gen_ai.usage.cache_read.input_tokens": 5,
        "inferline.prefix_cache.hit_tokens": 5,
        "inferline.queue_time_s": 0.25,
        "inferline.cache": "miss",
        "inferline.key_id": "key-1",
        "inferline.team": "support",
        "inferline.prompt.id": "greet",
        "inferline.prompt.version": 3,
        "inferline.prompt.label": "prod",
    }
    assert "gen_ai.input.messages" not in found and None not in found.values()
    assert "gen_ai.input.messages" in request_attributes(record, "chat", capture_content=True)


def test_metrics_have_the_gen_ai_server_histograms() -> None:
    with TestClient(route_app(None)) as client:
        chat(client)
        text = client.get("/metrics").text
    labels = '{gen_ai_operation_name="chat",gen_ai_request_model="bot"}'
    assert f"gen_ai_server_time_to_first_token_seconds_count{labels} 1.0" in text
    assert f"gen_ai_server_time_per_output_token_seconds_count{labels} 1.0" in text
    assert 'gen_ai_server_time_to_first_token_seconds_bucket{gen_ai_operation_name="chat",' \
        'gen_ai_request_model="bot",le="0.001"}' in text  # fmt: skip
    assert 'le="0.075"' in text  # the time-per-token buckets the conventions advise


def test_serve_parses_the_otlp_options_and_honours_the_variables() -> None:
    args = build_parser().parse_args(
        ["serve", "--otlp-endpoint", "http://collector:4318", "--otel-capture-content"]
    )
    assert (args.otlp_endpoint, args.otel_capture_content) == ("http://collector:4318", True)
    assert otlp_traces_endpoint(args.otlp_endpoint, {}) == "http://collector:4318/v1/traces"
    assert otlp_traces_endpoint("http://c:4318/v1/traces/", {}) == "http://c:4318/v1/traces"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318/"}
    assert otlp_traces_endpoint(None, env) == "http://base:4318/v1/traces"
    env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = "http://t:9/x"
    assert otlp_traces_endpoint(None, env) == "http://t:9/x"
    assert otlp_traces_endpoint("http://flag:1", env) == "http://flag:1/v1/traces"
    default = build_parser().parse_args(["serve"])
    assert otel_exporter(default, {}) is None  # nothing is exported unless asked
    exporter = otel_exporter(args, {})
    assert exporter is not None and exporter.capture_content
    exporter.shutdown()
