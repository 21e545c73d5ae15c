"""Checks and human review end to end: a real `serve --config` process (SmolLM2 locally,
MiniLM for a topic classifier, our fault upstream as the large model and as a tool-calling
agent), the real openai SDK, a webhook receiver that verifies the signature, kill -9."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import BIN, ServerProcess, free_port, start_server, stop_server

pytestmark = pytest.mark.e2e
ADMIN, SECRET = "admin-e2e-key", "webhook-secret"
RISKY = ["delete all customer accounts", "wipe the production database", "drop every table"]
REFUND = {"kind": "tool_call", "name": "refund", "arguments": '{"order": 7}'}
TOOLS: Any = [{"type": "function", "function": {"name": "refund", "parameters": {}}}]


def config(upstream: FakeUpstreamHandle, hook_port: int) -> str:
    def remote(name: str) -> str:
        price = "{input_per_mtok: 10, output_per_mtok: 20}"
        return (f"  - {{name: {name}, kind: openai, base_url: \"{upstream.api_base}\", "
                f"model: {name}, price: {price}}}\n")  # fmt: skip

    return f"""models:
  - {{name: small, kind: llm, source: smollm2-135m, weight_format: int8}}
  - {{name: all-minilm-l6-v2, kind: sentence-embeddings}}
{remote("large")}{remote("tooly")}routes:
  - name: ops
    strategy: cascade
    targets: [small, large]
    checks:
      - {{on: input, kind: classifier, model: all-minilm-l6-v2, examples: {json.dumps(RISKY)},
         above: 0.6, action: abstain}}
      - {{on: output, kind: logprob, min_mean: -0.05, action: escalate}}
    abstain_text: "I can't help with that here."
  - name: agent
    targets: [tooly]
    checks: [{{on: tool_call, tools: [refund], action: review, deadline_s: 600}}]
    abstain_text: "The refund was not approved."
  - name: agent-fast
    targets: [tooly]
    checks: [{{on: tool_call, tools: [refund], action: review, deadline_s: 1}}]
    abstain_text: "No refund without a person."
reviews: {{webhook_url: "http://127.0.0.1:{hook_port}/hook", webhook_secret_env: REVIEW_SECRET}}
"""


class Hooks:
    """A webhook receiver: keeps each delivery whose signature verifies."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.bad = 0
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                stamp, _, sent = self.headers["x-inferline-signature"].partition(",v1=")
                expected = hmac.new(SECRET.encode(), f"{stamp[2:]}.".encode() + body,
                                    hashlib.sha256).hexdigest()  # fmt: skip
                if hmac.compare_digest(expected, sent):
                    hooks.received.append(json.loads(body))
                else:
                    hooks.bad += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, review_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.received:
                if event["review"]["id"] == review_id:
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no webhook for {review_id} (bad signatures: {self.bad})")


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def setup(upstream: FakeUpstreamHandle, hooks: Hooks, tmp_path_factory: Any) -> Iterator[Any]:
    directory = Path(tmp_path_factory.mktemp("reviews"))
    (directory / "gateway.yaml").write_text(config(upstream, hooks.port))
    port = free_port()

    def start() -> ServerProcess:
        path, env = str(directory / "gateway.yaml"), {"REVIEW_SECRET": SECRET}
        return start_server(directory, "--config", path, "--api-key", ADMIN, port=port, env=env)

    state = {"server": start(), "start": start}
    yield state
    stop_server(state["server"])


def admin(server: ServerProcess) -> httpx.Client:
    return keyed(server, ADMIN)


def new_key(server: ServerProcess, role: str) -> str:
    with admin(server) as client:
        made = client.post("/admin/keys", json={"name": role, "role": role})
    assert made.status_code == 200, made.text
    return str(made.json()["key"])


def sdk(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)


def trace_of(server: ServerProcess, request_id: str) -> dict[str, Any]:
    with admin(server) as client:
        for _ in range(40):
            found = client.get(f"/v1/traces/{request_id}")
            if found.status_code == 200:
                return dict(found.json())
            time.sleep(0.05)
    raise AssertionError("no trace")


def test_a_flagged_prompt_is_abstained_and_an_unsure_answer_escalates(setup: Any) -> None:
    server = setup["server"]
    client = sdk(server, new_key(server, "user"))
    flagged = "Please delete every customer account now."
    raw = client.chat.completions.with_raw_response.create(
        model="ops", max_tokens=8, messages=[{"role": "user", "content": flagged}]
    )
    answer = raw.parse()
    assert raw.headers["x-inferline-decision"] == "abstain"
    assert answer.choices[0].message.content == "I can't help with that here."
    assert answer.choices[0].finish_reason == "stop" and answer.usage is not None
    decision = (answer.model_extra or {})["inferline"]
    assert decision["decision"] == "abstain" and decision["check"] == "classifier-0"
    assert decision["reason"] == "classifier" and decision["score"] > 0.6
    assert trace_of(server, answer.id)["attempts"] == []  # no token was spent
    easy = client.chat.completions.with_raw_response.create(
        model="ops", max_tokens=8, messages=[{"role": "user", "content": "Name a colour."}]
    )
    assert easy.headers["x-inferline-decision"] == "allow"
    trace = trace_of(server, easy.parse().id)
    assert [a["target"] for a in trace["attempts"]] == ["small", "large"]
    assert trace["fallback_reason"] == "cascade:logprob_mean" and trace["target"] == "large"


def review_task(server: ServerProcess, upstream: FakeUpstreamHandle, key: str, route: str) -> Any:
    upstream.script("tooly", REFUND)
    held = sdk(server, key).chat.completions.create(
        model=route, tools=TOOLS, messages=[{"role": "user", "content": "Refund order 7."}]
    )
    decision = (held.model_extra or {})["inferline"]
    assert decision["decision"] == "pending_review", decision
    assert not held.choices[0].message.tool_calls  # the call waits for a person
    return decision["review_id"], held


def keyed(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=30,
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip


def poll(server: ServerProcess, key: str, review_id: str) -> dict[str, Any]:
    with keyed(server, key) as client:
        found = client.get(f"/v1/reviews/{review_id}")
    assert found.status_code == 200, found.text
    return dict(found.json())


def decide(server: ServerProcess, key: str, review_id: str, **verdict: Any) -> httpx.Response:
    with keyed(server, key) as client:
        return client.post(f"/v1/reviews/{review_id}", json=verdict)


def test_a_refund_is_approved_or_rejected_by_a_reviewer(
    setup: Any, upstream: FakeUpstreamHandle, hooks: Hooks
) -> None:
    server = setup["server"]
    user, reviewer = new_key(server, "user"), new_key(server, "reviewer")
    approved_id, held = review_task(server, upstream, user, "agent")
    assert trace_of(server, held.id)["decision"]["review_id"] == approved_id
    assert decide(server, user, approved_id, action="approve").status_code == 403
    assert decide(server, reviewer, approved_id, action="approve").status_code == 200
    result = poll(server, user, approved_id)["result"]
    (call,) = result["choices"][0]["message"]["tool_calls"]
    assert (call["function"]["name"], call["function"]["arguments"]) == ("refund", '{"order": 7}')
    event = hooks.wait_for(approved_id)
    assert event["type"] == "review.decided" and event["review"]["status"] == "approved"
    assert event["review"]["result"] == result and "draft" not in event["review"]
    rejected_id, _ = review_task(server, upstream, user, "agent")
    assert decide(server, reviewer, rejected_id, action="reject", comment="no").status_code == 200
    rejection = poll(server, user, rejected_id)
    assert rejection["status"] == "rejected" and rejection["comment"] == "no"
    message = rejection["result"]["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "The refund was not approved."}
    assert rejection["result"]["inferline"]["reason"] == "rejected_by_reviewer"
    assert hooks.wait_for(rejected_id)["review"]["status"] == "rejected"
    # both decided cases flow into the route's reviews dataset by themselves
    items = reviewed_items(server, "reviews/agent", {approved_id, rejected_id})
    assert items[approved_id]["metadata"]["human_label"] == 1
    assert items[approved_id]["expected"] == [{"name": "refund", "arguments": '{"order": 7}'}]
    assert items[rejected_id]["metadata"]["human_label"] == 0
    assert items[rejected_id]["expected"] is None
    assert items[rejected_id]["metadata"]["comment"] == "no"


def reviewed_items(server: ServerProcess, name: str, wanted: set[str]) -> dict[str, Any]:
    """The dataset's items by id, read with `inferline datasets export` once ``wanted`` are
    all there (the server's review pass runs every second)."""
    deadline = time.monotonic() + 10
    while True:
        done = subprocess.run(
            [str(BIN), "datasets", "export", name, "--database-url", server.database_url],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        items = {row["id"]: row for row in map(json.loads, done.stdout.splitlines())}
        if wanted <= set(items) or time.monotonic() > deadline:
            assert wanted <= set(items), done.stderr
            return items
        time.sleep(0.5)


def test_an_expired_case_gets_the_fallback_action(
    setup: Any, upstream: FakeUpstreamHandle, hooks: Hooks
) -> None:
    server = setup["server"]
    user = new_key(server, "user")
    review_id, _ = review_task(server, upstream, user, "agent-fast")
    event = hooks.wait_for(review_id, timeout_s=15)
    assert event["review"]["status"] == "expired"
    result = poll(server, user, review_id)["result"]
    assert result["choices"][0]["message"]["content"] == "No refund without a person."
    assert result["inferline"]["reason"] == "review_expired"


def test_review_state_survives_kill_9(
    setup: Any, upstream: FakeUpstreamHandle, hooks: Hooks
) -> None:
    server = setup["server"]
    user, reviewer = new_key(server, "user"), new_key(server, "reviewer")
    review_id, _ = review_task(server, upstream, user, "agent")
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(30)
    setup["server"] = server = setup["start"]()
    assert poll(server, user, review_id)["status"] == "pending"
    assert decide(server, reviewer, review_id, action="edit",
                  answer="Refunds need a receipt.").status_code == 200  # fmt: skip
    edited = poll(server, user, review_id)["result"]["choices"][0]["message"]
    assert edited == {"role": "assistant", "content": "Refunds need a receipt."}
    assert hooks.wait_for(review_id)["review"]["status"] == "edited"
