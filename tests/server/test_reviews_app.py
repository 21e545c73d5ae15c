"""The checks and the review queue over HTTP (a tool-calling fake target behind a real
router, real SQLite): decisions in bodies, headers, streams and traces; who may see and
decide a case; a case decided once; the client's poll gets the decided answer."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inferline.core import CompletionOutput, GenerationRequest, RequestMetrics, RequestOutput
from inferline.core.outputs import ToolCall
from inferline.guard import GuardCheck, GuardedGenerator, GuardPolicy, ReviewDesk
from inferline.router.config import RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.server.reviews import ReviewService
from inferline.server.routes_reviews import reviews_extension
from inferline.store import KeyStore, RequestLog, RequestLogWriter, connect, migrate
from inferline.store.reviews import ReviewStore
from inferline.tenants import Tenants
from tests.server.test_tasks_app import ToolCaller
from tests.waiting import eventually

ADMIN = "admin-secret-key"
CHECKS = (
    GuardCheck("cards", "input", "pattern", "block", detectors=("credit_card",)),
    GuardCheck("refunds", "tool_call", "tool", "review", tools=("lookup",), deadline_s=600),
)


class Refunder(ToolCaller):
    """Asks for ``lookup`` when the user says so, else answers "done"."""

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        said = str((request.messages or [{}])[-1].get("content"))
        out = CompletionOutput(0, num_tokens=10, num_tokens_delta=10, finish_reason="stop")
        if "look" in said:
            out.tool_calls = [ToolCall("call_1", "lookup", '{"order": 7}')]
        else:
            out.text = out.text_delta = "done"
        yield RequestOutput(request.request_id, None, [], [out], True,
                            RequestMetrics(time.time()), num_prompt_tokens=20)  # fmt: skip


@pytest.fixture
def app(tmp_path: Path) -> Any:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database)
    router = Router([Target(TargetConfig("tooly"), Refunder())],
                    [RouteConfig("agent", (TargetRef("tooly"),))])  # fmt: skip
    desk = ReviewDesk(ReviewStore(database))
    guarded = GuardedGenerator(router, {"agent": GuardPolicy("agent", CHECKS)}, desk=desk)
    writer = RequestLogWriter(RequestLog(database), flush_interval_s=0.01)
    built = create_app(guarded, ServerConfig(api_keys=(ADMIN,)), log_writer=writer,
                       tenants=Tenants(KeyStore(database), (ADMIN,)),
                       extensions=[reviews_extension(ReviewService(desk))])  # fmt: skip
    with TestClient(built, headers={"authorization": f"Bearer {ADMIN}"}) as client:
        yield client


def key(client: TestClient, role: str) -> dict[str, str]:
    made = client.post("/admin/keys", json={"name": role, "role": role})
    assert made.status_code == 200, made.text
    assert made.json()["role"] == role
    return {"authorization": f"Bearer {made.json()['key']}"}


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def chat(client: TestClient, text: str, headers: dict[str, str], **more: Any) -> Any:
    body = {"model": "agent", "messages": [{"role": "user", "content": text}], "tools": TOOLS}
    return client.post("/v1/chat/completions", json={**body, **more}, headers=headers)


def trace(client: TestClient, request_id: str) -> dict[str, Any]:
    for _ in range(100):
        found = client.get(f"/v1/traces/{request_id}")
        if found.status_code == 200:
            return found.json()
        time.sleep(0.02)
    raise AssertionError("no trace")


def test_a_risky_call_is_held_for_review_and_decided_once(app: TestClient) -> None:
    user, other, reviewer = key(app, "user"), key(app, "user"), key(app, "reviewer")
    held = chat(app, "look up order 7", user)
    assert held.status_code == 200 and held.headers["x-inferline-decision"] == "pending_review"
    body = held.json()
    review_id = body["inferline"]["review_id"]
    assert body["inferline"]["decision"] == "pending_review"
    message = body["choices"][0]["message"]
    assert "tool_calls" not in message or not message["tool_calls"]  # the call does not leak
    assert "review" in message["content"]
    polled = app.get(f"/v1/reviews/{review_id}", headers=user).json()
    assert polled["status"] == "pending" and polled["result"] is None and "draft" not in polled
    assert app.get(f"/v1/reviews/{review_id}", headers=other).status_code == 403
    assert app.get("/v1/reviews", headers=user).status_code == 403
    verdict = {"action": "approve", "comment": "order 7 is theirs"}
    assert app.post(f"/v1/reviews/{review_id}", json=verdict, headers=user).status_code == 403
    queue = app.get("/v1/reviews", params={"status": "pending"}, headers=reviewer).json()["data"]
    (case,) = queue
    assert case["draft"]["message"]["tool_calls"][0]["function"]["arguments"] == '{"order": 7}'
    assert case["checks"][-1]["check"] == "refunds" and case["checks"][-1]["fired"]
    decided = app.post(f"/v1/reviews/{review_id}", json=verdict, headers=reviewer)
    assert decided.status_code == 200 and decided.json()["status"] == "approved"
    again = app.post(f"/v1/reviews/{review_id}", json={"action": "reject"}, headers=reviewer)
    assert again.status_code == 409 and again.json()["error"]["code"] == "review_closed"
    result = app.get(f"/v1/reviews/{review_id}", headers=user).json()["result"]
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    assert result["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    assert result["inferline"] == {"decision": "allow", "review_id": review_id,
                                   "status": "approved"}  # fmt: skip
    logged = trace(app, held.headers["x-request-id"])
    assert logged["decision"]["decision"] == "pending_review"
    assert logged["decision"]["review_id"] == review_id
    assert logged["decision"]["review"]["status"] == "approved"  # what became of it
    assert logged["decision"]["review"]["comment"] == "order 7 is theirs"


def test_block_and_allow_are_in_body_header_and_trace(app: TestClient) -> None:
    blocked = chat(app, "charge 4111 1111 1111 1111", {})
    assert blocked.status_code == 400
    assert blocked.json()["error"]["code"] == "blocked_by_check"
    assert "cards" in blocked.json()["error"]["message"]
    assert trace(app, blocked.headers["x-request-id"])["decision"]["decision"] == "block"
    allowed = chat(app, "hello", {})
    assert allowed.headers["x-inferline-decision"] == "allow"
    assert allowed.json()["inferline"] == {"decision": "allow"}
    checks = trace(app, allowed.headers["x-request-id"])["decision"]["checks"]
    assert [c["check"] for c in checks] == ["cards", "refunds"]


def test_a_streamed_review_decision_rides_on_the_first_chunk(app: TestClient) -> None:
    with app.stream("POST", "/v1/chat/completions", json={
        "model": "agent", "stream": True, "tools": TOOLS,
        "messages": [{"role": "user", "content": "look it up"}]}) as response:  # fmt: skip
        assert response.headers["x-inferline-decision"] == "pending_review"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["inferline"]["decision"] == "pending_review"
    assert all("inferline" not in c for c in chunks[1:])
    assert not any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)


def test_openapi_lists_the_review_statuses(app: TestClient) -> None:
    paths = app.get("/openapi.json").json()["paths"]
    assert {"403", "404", "409"} <= set(paths["/v1/reviews/{review_id}"]["post"]["responses"])


def test_check_stats_and_task_outcomes_from_checks(app: TestClient) -> None:
    reviewer = key(app, "reviewer")
    task = {"x-inferline-task-id": "pay-run"}
    assert chat(app, "charge 4111 1111 1111 1111", task).status_code == 400
    held = [chat(app, "look up order 7", {}).json()["inferline"]["review_id"] for _ in range(3)]
    app.post(f"/v1/reviews/{held[0]}", json={"action": "approve"}, headers=reviewer)
    app.post(f"/v1/reviews/{held[1]}", json={"action": "reject"}, headers=reviewer)
    chat(app, "hello", {})
    stats = eventually(  # the log is written in the background, in order: "hello" last
        lambda: app.get("/v1/checks/stats", params={"route": "agent"}, headers=reviewer).json(),
        lambda s: any(d["check"] is None and d["decision"] == "allow" for d in s["decisions"]),
    )
    by = {(d["check"], d["decision"]): d for d in stats["decisions"]}
    assert by[("cards", "block")]["requests"] == 1
    assert by[("refunds", "pending_review")]["requests"] == 3
    assert by[(None, "allow")]["requests"] == 1
    (verdicts,) = stats["reviews"]
    assert (verdicts["approved"], verdicts["rejected"], verdicts["pending"]) == (1, 1, 1)
    assert verdicts["held_rightly"] == 0.5
    assert app.get("/v1/checks/stats", headers=key(app, "user")).status_code == 403
    outcome = app.get("/v1/tasks/pay-run").json()["outcome"]
    assert outcome["success"] is False and outcome["source"] == "check:cards"
    app.post("/v1/tasks/pay-run/outcome", json={"success": True})  # the API wins from now on
    assert chat(app, "charge 4111 1111 1111 1111", task).status_code == 400

    def cards_blocks() -> int:
        stats = app.get("/v1/checks/stats", params={"route": "agent"}, headers=reviewer).json()
        return sum(d["requests"] for d in stats["decisions"] if d["check"] == "cards")

    assert eventually(cards_blocks, lambda n: n == 2) == 2  # its row written (background)
    assert app.get("/v1/tasks/pay-run").json()["outcome"]["success"] is True


def test_a_prompt_version_brings_its_own_checks(app: TestClient) -> None:
    checks = [
        {"on": "input", "kind": "missing_context", "variables": ["order"], "action": "abstain"},
        {"on": "output", "kind": "pattern", "pattern": "^done$", "action": "abstain"},
    ]
    version = {"id": "orders", "route": "agent", "checks": checks,
               "messages": [{"role": "user", "content": "hello {{ order }}"}]}  # fmt: skip
    assert app.post("/v1/prompts", json=version).status_code == 200
    escalate = {"on": "output", "kind": "logprob", "min_mean": -1, "action": "escalate"}
    no_limit = {"on": "input", "kind": "length", "action": "abstain"}
    for bad, words in ((escalate, "escalate is the route's"), (no_limit, "max_chars")):
        refused = app.post("/v1/prompts", json={**version, "checks": [bad]})
        assert refused.status_code == 400 and words in refused.json()["error"]["message"]

    def ask(order: str) -> Any:
        prompt = {"id": "orders", "variables": {"order": order}}
        return app.post("/v1/chat/completions", json={"prompt": prompt, "messages": []}).json()

    assert ask("")["inferline"]["check"] == "prompt:missing_context-0"
    answered = ask("7")  # the fake answers "done": the version's pattern withholds it
    assert answered["inferline"]["check"] == "prompt:pattern-1"
    assert answered["choices"][0]["message"]["content"] != "done"
    logged = trace(app, answered["id"])["decision"]
    assert [c["check"] for c in logged["checks"]] == [
        "cards", "prompt:missing_context-0", "refunds", "prompt:pattern-1"]  # fmt: skip
    assert logged["withheld"] == "done"
