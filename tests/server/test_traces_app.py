"""Traces over HTTP (the app with scripted targets, a real SQLite log): W3C trace context,
tasks and metadata, filters and paging of ``GET /v1/traces``, a key's own traces only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from inferline.cache import CachedGenerator, CachePolicy
from inferline.core.errors import UpstreamError
from inferline.router.config import Price, RetryPolicy, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.server.tracing import trace_context
from inferline.store import KeyStore, RequestLog, RequestLogWriter, connect, migrate
from inferline.tenants import Tenants
from tests.router.fakes import WORDS, ScriptedGenerator, Step

ADMIN = "admin-secret-key"
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database)
    broken = ScriptedGenerator("broken", [Step(error=UpstreamError("down", target="broken"))])
    good = ScriptedGenerator("good")
    targets = [
        Target(TargetConfig("broken", kind="openai"), broken),
        Target(TargetConfig("good", price=Price(output_per_mtok=1e6)), good),
    ]
    routes = [
        RouteConfig(
            "bot", (TargetRef("broken"), TargetRef("good")), retry=RetryPolicy(attempts=1)
        ),  # fmt: skip
        RouteConfig("faq", (TargetRef("good"),)),
    ]
    router = Router(targets, routes)
    cached = CachedGenerator(router, {"faq": CachePolicy("exact", shared=True)})
    writer = RequestLogWriter(RequestLog(database), flush_interval_s=0.01)
    tenants = Tenants(KeyStore(database), (ADMIN,))
    app = create_app(cached, ServerConfig(api_keys=(ADMIN,), log_text=True),
                     log_writer=writer, tenants=tenants)  # fmt: skip
    with TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        yield {"client": client, "broken": broken, "good": good}


def chat(client: TestClient, model: str = "bot", headers: Any = None, **body: Any) -> Any:
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
    response = client.post("/v1/chat/completions", json=payload, headers=headers or {})
    assert response.status_code == 200, response.text
    return response


def trace(client: TestClient, request_id: str) -> dict[str, Any]:
    """The trace, once the background writer has written it (within a second)."""
    deadline = time.monotonic() + 1.0
    while True:
        response = client.get(f"/v1/traces/{request_id}")
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.02)


def test_the_traceparent_is_continued_returned_and_sent_upstream(setup: Any) -> None:
    client = setup["client"]
    response = chat(client, headers={"traceparent": PARENT})
    version, trace_id, span, flags = response.headers["traceparent"].split("-")
    assert trace_id == "0af7651916cd43dd8448eb211c80319c" and span != "b7ad6b7169203331"
    sent = [r.traceparent for r in setup["broken"].requests + setup["good"].requests]
    assert sent == [response.headers["traceparent"]] * 2  # each attempt carries our span
    found = trace(client, response.headers["x-request-id"])
    assert (found["trace_id"], found["span_id"]) == (trace_id, span)
    assert found["parent_span_id"] == "b7ad6b7169203331"


@pytest.mark.parametrize(
    "header",
    [None, "garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01", "ff-" + PARENT[3:]],
)
def test_a_missing_or_invalid_traceparent_starts_a_new_trace(header: str | None) -> None:
    context = trace_context(header)
    assert len(context.trace_id) == 32 and context.trace_id != "0af7651916cd43dd8448eb211c80319c"
    assert context.parent_span_id is None and len(context.span_id) == 16


def test_a_trace_shows_every_attempt_the_route_and_the_cache(setup: Any) -> None:
    client = setup["client"]
    failed_over = trace(client, chat(client).headers["x-request-id"])
    assert failed_over["route"] == "bot" and failed_over["target"] == "good"
    assert [(a["target"], a["status"]) for a in failed_over["attempts"]] == [
        ("broken", "error"), ("good", "ok")]  # fmt: skip
    assert failed_over["fallback_reason"] and failed_over["cache"] is None
    words = len(WORDS)
    assert failed_over["usage"]["completion_tokens"] == words
    assert failed_over["cost_usd"] == pytest.approx(words)  # 1 USD per output token
    assert failed_over["output"] == " ".join(WORDS) and failed_over["input"] == "hi"
    first = trace(client, chat(client, "faq", temperature=0).headers["x-request-id"])
    second = trace(client, chat(client, "faq", temperature=0).headers["x-request-id"])
    assert (first["cache"], len(first["attempts"])) == ("miss", 1)
    assert (second["cache"], second["attempts"], second["cost_usd"]) == ("hit", [], 0.0)
    assert second["timings"]["prefill_s"] is None  # a hit ran no engine


def test_tasks_metadata_and_tool_results_are_kept(setup: Any) -> None:
    client = setup["client"]
    by_header = chat(client, headers={"x-inferline-task-id": "run-1"})
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    by_body = chat(client, metadata={"task_id": "run-1", "team": "support"}, messages=messages)
    found = trace(client, by_body.headers["x-request-id"])
    assert found["task_id"] == "run-1" and found["metadata"]["team"] == "support"
    assert found["tool_results"] == ["call_1"]
    trace(client, by_header.headers["x-request-id"])
    listed = client.get("/v1/traces", params={"task_id": "run-1"}).json()["data"]
    assert {t["id"] for t in listed} == {
        by_header.headers["x-request-id"], by_body.headers["x-request-id"]}  # fmt: skip


def test_filters_and_paging(setup: Any) -> None:
    client = setup["client"]
    ids = [chat(client, "faq", messages=[{"role": "user", "content": f"q{i}"}])
           .headers["x-request-id"] for i in range(5)]  # fmt: skip
    trace(client, ids[-1])
    bad = client.post("/v1/chat/completions", json={"model": "nope", "messages": [
        {"role": "user", "content": "x"}]})  # fmt: skip
    assert bad.status_code == 404
    first = client.get("/v1/traces", params={"route": "faq", "limit": 2}).json()
    assert [t["id"] for t in first["data"]] == ids[::-1][:2] and first["has_more"]
    rest = client.get("/v1/traces", params={"route": "faq", "before": first["next_before"]})
    assert [t["id"] for t in rest.json()["data"]] == ids[::-1][2:]
    assert client.get("/v1/traces", params={"q": "q3"}).json()["data"][0]["id"] == ids[3]
    deadline, errors = time.monotonic() + 1.0, []
    while not errors and time.monotonic() < deadline:  # the 404's row is written in the back
        errors = client.get("/v1/traces", params={"status": "error"}).json()["data"]
    assert errors and all(t["status_code"] >= 400 for t in errors)
    slow = client.get("/v1/traces", params={"min_latency_ms": 60_000}).json()["data"]
    assert slow == []
    assert client.get("/v1/traces", params={"status": "bad"}).status_code == 400
    assert client.get("/v1/traces", params={"limit": 0}).status_code == 400
    assert client.get("/v1/traces/chatcmpl-nope").status_code == 404


def test_a_key_reads_only_its_own_traces(setup: Any) -> None:
    client = setup["client"]

    def new_key(name: str) -> tuple[str, str]:
        made = client.post("/admin/keys", json={"name": name, "metadata": {"team": name}})
        return made.json()["id"], made.json()["key"]

    (a_id, a_key), (_, b_key) = new_key("a"), new_key("b")
    mine = chat(client, headers={"authorization": f"Bearer {a_key}"})
    theirs = chat(client, headers={"authorization": f"Bearer {b_key}"})
    assert trace(client, mine.headers["x-request-id"])["team"] == "a"
    trace(client, theirs.headers["x-request-id"])
    as_a = httpx.Headers({"authorization": f"Bearer {a_key}"})
    listed = client.get("/v1/traces", headers=as_a).json()["data"]
    assert [t["id"] for t in listed] == [mine.headers["x-request-id"]]
    assert listed[0]["key_id"] == a_id
    assert client.get(f"/v1/traces/{theirs.headers['x-request-id']}",
                      headers=as_a).status_code == 404  # fmt: skip
    other = client.get("/v1/traces", params={"key_id": "key_other"}, headers=as_a)
    assert other.status_code == 404
