"""The prompt registry over HTTP, and chat requests that name a stored prompt (scripted
target, real SQLite): versions, labels as rollback, what the model was sent, the trace."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inferline.router.config import RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.store import KeyStore, RequestLog, RequestLogWriter, connect, migrate
from inferline.tenants import Tenants
from tests.router.fakes import ScriptedGenerator

ADMIN = "admin-secret-key"
V1 = {"id": "support", "route": "bot", "params": {"temperature": 0.3, "max_tokens": 5},
      "messages": [{"role": "system", "content": "You answer {{ product }} questions."},
                   {"role": "user", "content": "{{ question }}"}]}  # fmt: skip
V2 = {**V1, "messages": [{"role": "system", "content": "Be brief. Product: {{ product }}."},
                         {"role": "user", "content": "{{ question }}"}]}  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database)
    target = ScriptedGenerator("small")
    router = Router([Target(TargetConfig("small"), target)],
                    [RouteConfig("bot", (TargetRef("small"),))])  # fmt: skip
    writer = RequestLogWriter(RequestLog(database), flush_interval_s=0.01)
    app = create_app(router, ServerConfig(api_keys=(ADMIN,)), log_writer=writer,
                     tenants=Tenants(KeyStore(database), (ADMIN,)))  # fmt: skip
    with TestClient(app, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        yield client, target


def ask(client: TestClient, version: str | None = None, **body: Any) -> Any:
    prompt = {"id": "support", "variables": {"product": "Acme", "question": "Why?"}}
    if version is not None:
        prompt["version"] = version
    response = client.post("/v1/chat/completions", json={"prompt": prompt, **body})
    return response


def trace_prompt(client: TestClient, request_id: str) -> Any:
    for _ in range(50):
        found = client.get(f"/v1/traces/{request_id}")
        if found.status_code == 200:
            return found.json()["prompt"]
        time.sleep(0.02)
    raise AssertionError("no trace")


def test_push_label_answer_roll_back(setup: Any) -> None:
    client, target = setup
    assert client.post("/v1/prompts", json=V1).json()["version"] == 1
    assert client.post("/v1/prompts", json=V1).json()["created"] is False
    assert client.post("/v1/prompts", json={**V2, "labels": ["production"]}).json()["version"] == 2
    answer = ask(client)
    assert answer.status_code == 200, answer.text
    sent = target.requests[-1]
    assert sent.messages[0]["content"] == "Be brief. Product: Acme."
    assert sent.params.temperature == 0.3 and sent.params.max_tokens == 5
    assert trace_prompt(client, answer.headers["x-request-id"]) == {
        "id": "support", "version": 2, "label": "production"}  # fmt: skip
    moved = client.post("/v1/prompts/support/labels", json={"label": "production", "version": 1})
    assert moved.json()["previous_version"] == 2
    rolled_back = ask(client)
    assert target.requests[-1].messages[0]["content"] == "You answer Acme questions."
    assert trace_prompt(client, rolled_back.headers["x-request-id"])["version"] == 1
    pinned = ask(client, version="2", temperature=0.0,
                 messages=[{"role": "user", "content": "And more?"}])  # fmt: skip
    sent = target.requests[-1]
    assert sent.params.temperature == 0.0  # the request's own setting wins
    assert [m["role"] for m in sent.messages] == ["system", "user", "user"]
    assert trace_prompt(client, pinned.headers["x-request-id"]) == {
        "id": "support", "version": 2, "label": None}  # fmt: skip


def test_reading_diffing_and_errors(setup: Any) -> None:
    client, _ = setup
    client.post("/v1/prompts", json=V1)
    client.post("/v1/prompts", json=V2)
    listed = client.get("/v1/prompts").json()["data"]
    assert listed == [{"id": "support", "object": "prompt", "latest_version": 2,
                       "updated_at": listed[0]["updated_at"], "labels": {}}]  # fmt: skip
    assert len(client.get("/v1/prompts/support").json()["versions"]) == 2
    one = client.get("/v1/prompts/support/versions/1").json()
    assert one["version"] == 1 and one["route"] == "bot"
    diff = client.get("/v1/prompts/support/diff", params={"from": 1, "to": 2}).json()["diff"]
    assert "+Be brief. Product: {{ product }}." in diff
    assert client.get("/v1/prompts/nope").status_code == 404
    assert client.get("/v1/prompts/support/versions/staging").status_code == 404
    missing = client.post("/v1/chat/completions", json={"prompt": {"id": "support"}})
    assert missing.status_code == 400 and "product" in missing.json()["error"]["message"]
    assert ask(client, version="7").status_code == 404
    bad = client.post("/v1/prompts", json={**V1, "messages": [{"role": "user",
                                                              "content": "{% if %}"}]})  # fmt: skip
    assert bad.status_code == 400
    no_model = client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "x"}]})  # fmt: skip
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"


def test_a_virtual_key_reads_but_does_not_write(setup: Any) -> None:
    client, _ = setup
    client.post("/v1/prompts", json=V1)
    key = client.post("/admin/keys", json={"name": "team"}).json()["key"]
    headers = {"authorization": f"Bearer {key}"}
    assert client.post("/v1/prompts", json=V2, headers=headers).status_code == 403
    moved = client.post("/v1/prompts/support/labels", json={"label": "production", "version": 1},
                        headers=headers)  # fmt: skip
    assert moved.status_code == 403
    assert client.get("/v1/prompts/support", headers=headers).status_code == 200
    prompt = {"id": "support", "variables": {"product": "Acme", "question": "Why?"}}
    used = client.post("/v1/chat/completions", json={"prompt": prompt}, headers=headers)
    assert used.status_code == 200, used.text
