"""The app over a router (scripted targets, the real openai SDK over ASGI): headers naming
route, target and attempts; the model that answered; errors saying what was tried; the
routes list, metrics and the request log's attempts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from inferline.core import RateLimitedError, UpstreamUnavailableError
from inferline.router.config import RetryPolicy, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.store import RequestLog, RequestLogWriter, connect, migrate
from tests.router.fakes import WORDS, ScriptedGenerator, Step

WHOLE = " ".join(WORDS)


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    down = UpstreamUnavailableError("down", target="a")
    a = ScriptedGenerator("a", [Step(error=down), Step()])
    b = ScriptedGenerator("b")
    limited = ScriptedGenerator(
        "c", [Step(error=RateLimitedError("slow", target="c", retry_after_s=7))]
    )
    targets = [Target(TargetConfig(g.name), g) for g in (a, b, limited)]
    routes = [
        RouteConfig("bot", (TargetRef("a"), TargetRef("b")), retry=RetryPolicy(attempts=1)),
        RouteConfig("limited", (TargetRef("c"),), retry=RetryPolicy(attempts=1)),
    ]
    database = connect(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(database)
    log = RequestLog(database)
    writer = RequestLogWriter(log, flush_interval_s=0.05)
    app = create_app(Router(targets, routes), ServerConfig(), log_writer=writer)
    with TestClient(app) as client:
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client,
                            max_retries=0)  # fmt: skip
        yield {"client": client, "sdk": sdk, "log": log, "writer": writer}


def test_headers_and_model_name_the_target_that_answered(setup: Any) -> None:
    raw = setup["sdk"].chat.completions.with_raw_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}]
    )
    reply = raw.parse()
    assert reply.model == "b" and reply.choices[0].message.content == WHOLE
    assert raw.headers["x-inferline-route"] == "bot" and raw.headers["x-inferline-target"] == "b"
    assert raw.headers["x-inferline-attempts"] == "2"
    assert raw.headers["x-inferline-fallback-reason"] == "upstream_unavailable"
    assert raw.headers["x-request-id"] == reply.id
    setup["writer"].close()
    (row,) = setup["log"].recent()
    assert (row["route"], row["target"], row["num_attempts"]) == ("bot", "b", 2)
    attempts = setup["log"].attempts_of(reply.id)
    assert [(a["target"], a["status"], a["error_type"]) for a in attempts] == [
        ("a", "error", "upstream_unavailable"),
        ("b", "ok", None),
    ]


def test_a_stream_names_its_first_target_in_the_headers(setup: Any) -> None:
    with setup["sdk"].chat.completions.with_streaming_response.create(
        model="bot", messages=[{"role": "user", "content": "hi"}], stream=True
    ) as response:
        assert response.headers["x-inferline-target"] == "b"
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == WHOLE


def test_when_everything_fails_the_error_says_what_was_tried(setup: Any) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        setup["sdk"].chat.completions.create(
            model="limited", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.response.headers["x-inferline-attempts"] == "1"
    assert "route 'limited': every target failed (c: rate_limited)" in info.value.message


def test_streamed_failures_before_the_first_token_are_http_errors(setup: Any) -> None:
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        setup["sdk"].chat.completions.create(
            model="limited", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    assert time.monotonic() - started < 1


def test_models_routes_and_metrics(setup: Any) -> None:
    client = setup["client"]
    models = {m["id"]: m["kind"] for m in client.get("/v1/models").json()["data"]}
    assert models == {"bot": "route", "limited": "route", "a": "model", "b": "model", "c": "model"}
    setup["sdk"].chat.completions.create(model="bot", messages=[{"role": "user", "content": "x"}])
    routes = {r["id"]: r for r in client.get("/v1/routes").json()["data"]}
    assert [t["name"] for t in routes["bot"]["targets"]] == ["a", "b"]
    assert routes["bot"]["targets"][0]["error_rate"] == 1.0
    metrics = client.get("/metrics").text
    assert 'inferline:route_attempts_total{route="bot",status="error",target="a"} 1.0' in metrics
    assert 'inferline:route_fallbacks_total{reason="upstream_unavailable",route="bot"}' in metrics
    assert 'inferline:target_breaker_state{target="a"} 0.0' in metrics
    assert client.get("/v1/models/nope").status_code == 404


def test_the_clients_timeout_header_bounds_the_request(tmp_path: Path) -> None:
    slow = ScriptedGenerator("slow", [Step(delay_s=0.5)])
    router = Router([Target(TargetConfig("slow"), slow)], [])
    with TestClient(create_app(router, ServerConfig())) as client:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        started = time.monotonic()
        response = client.post(
            "/v1/chat/completions", json=body, headers={"x-inferline-timeout-ms": "200"}
        )
        assert response.status_code == 504 and time.monotonic() - started < 1.0
        assert response.json()["error"]["code"] == "deadline_exceeded"
        bad = client.post(
            "/v1/chat/completions", json=body, headers={"x-inferline-timeout-ms": "x"}
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-inferline-timeout-ms"
