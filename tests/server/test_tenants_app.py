"""Virtual keys over HTTP (the real openai SDK against the app, scripted targets): the admin
API, routes a key may use, rate limits with OpenAI's headers, budgets under concurrency,
and keys never reaching the log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from inferline.router.config import Price, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.store import KeyStore, RequestLog, RequestLogWriter, connect, migrate
from inferline.tenants import Tenants
from tests.router.fakes import WORDS, ScriptedGenerator, Step

ADMIN = "admin-secret-key"
PRICE = Price(input_per_mtok=0.0, output_per_mtok=1_000_000.0)  # 1 USD per output token


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database)
    store = KeyStore(database)
    priced = ScriptedGenerator("priced", [Step(delay_s=0.01)])
    free = ScriptedGenerator("free")
    targets = [
        Target(TargetConfig("priced", price=PRICE), priced),
        Target(TargetConfig("free"), free),
    ]
    routes = [
        RouteConfig("bot", (TargetRef("priced"),)),
        RouteConfig("other", (TargetRef("free"),)),
    ]
    log = RequestLog(database)
    writer = RequestLogWriter(log, flush_interval_s=0.05)
    tenants = Tenants(store, (ADMIN,))
    config = ServerConfig(api_keys=(ADMIN,))
    app = create_app(Router(targets, routes), config, log_writer=writer, tenants=tenants)
    with TestClient(app) as client:
        yield {"client": client, "store": store, "log": log, "writer": writer, "app": app}


def admin(client: TestClient, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {ADMIN}"}
    return client.request(method, path, json=body, headers=headers)


def make_key(client: TestClient, **fields: Any) -> tuple[str, str]:
    response = admin(client, "POST", "/admin/keys", {"name": "team-a", **fields})
    assert response.status_code == 200, response.text
    return response.json()["id"], response.json()["key"]


def sdk(client: TestClient, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=client,
                         max_retries=0)  # fmt: skip


def chat(client: openai.OpenAI, model: str = "bot", **extra: Any) -> Any:
    messages = [{"role": "user", "content": "hi"}]
    return client.chat.completions.with_raw_response.create(model=model, messages=messages, **extra)


def test_the_admin_api_shows_a_secret_once_and_never_again(setup: Any) -> None:
    client = setup["client"]
    key_id, secret = make_key(client, routes=["bot"], rpm=60, metadata={"team": "a"})
    listed = admin(client, "GET", "/admin/keys").json()["data"]
    assert [k["id"] for k in listed] == [key_id] and secret not in str(listed)
    assert listed[0]["key_hint"].startswith("sk-inf-") and listed[0]["metadata"] == {"team": "a"}
    assert admin(client, "GET", f"/admin/keys/{key_id}").json()["rpm"] == 60
    assert (
        client.get("/admin/keys", headers={"authorization": f"Bearer {secret}"}).status_code == 403
    )
    assert (
        client.get("/v1/models", headers={"authorization": "Bearer sk-inf-nope"}).status_code == 401
    )
    bad = admin(client, "POST", "/admin/keys", {"name": "x", "rpm": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rpm"


def test_a_key_uses_only_its_routes_and_a_revoked_key_is_refused_at_once(setup: Any) -> None:
    client = setup["client"]
    key_id, secret = make_key(client, routes=["bot"])
    assert chat(sdk(client, secret)).parse().choices[0].message.content == " ".join(WORDS)
    with pytest.raises(openai.PermissionDeniedError, match="may not use the model 'other'"):
        chat(sdk(client, secret), "other")
    assert admin(client, "DELETE", f"/admin/keys/{key_id}").json()["deleted"]
    with pytest.raises(openai.PermissionDeniedError, match="revoked"):
        chat(sdk(client, secret))
    expired_id, expired = make_key(client, expires_at=time.time() - 1)
    with pytest.raises(openai.PermissionDeniedError, match="expired"):
        chat(sdk(client, expired))


def test_rate_limits_answer_429_with_retry_after_and_openais_headers(setup: Any) -> None:
    client = setup["client"]
    _, secret = make_key(client, rpm=2, tpm=100_000)
    first = chat(sdk(client, secret), "other")
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    chat(sdk(client, secret), "other")
    with pytest.raises(openai.RateLimitError) as info:
        chat(sdk(client, secret), "other")
    headers = info.value.response.headers
    assert 25 <= int(headers["retry-after"]) <= 31  # 2 per minute: one comes back in 30 s
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.code == "rate_limit_exceeded"


def test_a_budget_holds_under_concurrency(setup: Any) -> None:
    """20 concurrent requests of 10 tokens each (1 USD a token), a 35 USD budget: at most
    three are admitted at once; spend never passes 35 and equals the attempts' costs."""
    client, store = setup["client"], setup["store"]
    key_id, secret = make_key(
        client, budget={"amount_usd": 35.0, "period": "total", "policy": "refuse"}
    )
    transport = httpx.ASGITransport(app=setup["app"])

    async def one(i: int) -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            body = {"model": "bot", "max_tokens": 10, "stream": True,
                    "messages": [{"role": "user", "content": f"q{i}"}]}  # fmt: skip
            headers = {"authorization": f"Bearer {secret}"}
            async with http.stream("POST", "/v1/chat/completions", json=body,
                                   headers=headers) as response:  # fmt: skip
                await response.aread()
                return response.status_code

    async def all_of_them() -> list[int]:
        return list(await asyncio.gather(*(one(i) for i in range(20))))

    statuses = asyncio.run(all_of_them())
    assert statuses.count(200) == 3 and statuses.count(429) == 17
    setup["writer"].close()
    spent = store.spent_since(key_id, 0)
    attempts = sum(a["cost_usd"] for r in setup["log"].recent(limit=100, key_id=key_id)
                   for a in setup["log"].attempts_of(r["request_id"]))  # fmt: skip
    assert spent <= 35.0 and round(spent, 2) == round(attempts, 2) == 30.0
    usage = admin(client, "GET", f"/admin/keys/{key_id}/usage").json()
    assert usage["budget"]["spend_usd"] == pytest.approx(30.0)
    metrics = admin(client, "GET", "/metrics").text
    assert f'inferline:key_spend_usd_total{{key="{key_id}"}} 30.0' in metrics
    assert f'inferline:key_requests_total{{key="{key_id}",status_code="429"}} 17.0' in metrics


def test_an_answer_past_the_budget_is_stopped_not_overspent(setup: Any, monkeypatch: Any) -> None:
    """Without max_tokens a local answer reserves a default; when it runs past what the
    budget can pay, it is cut with finish_reason length and says why."""
    monkeypatch.setattr("inferline.tenants.service.DEFAULT_OUTPUT_TOKENS", 3)
    client, store = setup["client"], setup["store"]
    key_id, secret = make_key(client, budget={"amount_usd": 6.0, "period": "day"})
    raw = chat(sdk(client, secret))
    reply = raw.parse()
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == " ".join(WORDS[:6])
    assert raw.headers["x-inferline-stopped"] == "budget"
    assert raw.http_response.json()["inferline"] == {"stopped_by": "budget"}
    with pytest.raises(openai.RateLimitError) as info:
        chat(sdk(client, secret))
    assert info.value.code == "insufficient_quota"
    time.sleep(0.2)  # the settlement is written in the background
    assert store.spent_since(key_id, 0) == pytest.approx(6.0)


def test_a_key_pasted_into_a_prompt_never_reaches_the_log(setup: Any) -> None:
    client = setup["client"]
    _, secret = make_key(client)
    leaked = f"my key is {secret} and the admin one {ADMIN}"
    sdk(client, secret).chat.completions.create(
        model="other", messages=[{"role": "user", "content": leaked}]
    )
    setup["writer"].close()
    (row,) = setup["log"].recent()
    assert secret not in str(row) and ADMIN not in str(row)
    assert "[redacted key]" in row["prompt"]


def test_a_key_pasted_into_metadata_never_reaches_the_log(setup: Any) -> None:
    client = setup["client"]
    _, secret = make_key(client)
    sdk(client, secret).chat.completions.create(
        model="other", messages=[{"role": "user", "content": "hi"}],
        metadata={"note": f"key {secret}"},
    )  # fmt: skip
    setup["writer"].close()
    (row,) = setup["log"].recent()
    assert secret not in str(row) and "[redacted key]" in row["metadata"]
