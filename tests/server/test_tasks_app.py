"""Tasks: steps grouped by task id, tool latency matched by tool_call_id, outcomes, cost per
successful task — by hand-computed figures, then over HTTP with a tool-calling target."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from inferline.core import (
    CompletionOutput,
    GenerationRequest,
    GeneratorStats,
    HealthReport,
    ModelInfo,
    RequestMetrics,
    RequestOutput,
)
from inferline.core.outputs import ToolCall
from inferline.router.config import Price, RouteConfig, TargetConfig, TargetRef
from inferline.router.router import Router
from inferline.router.target import Target
from inferline.server import ServerConfig, create_app
from inferline.store import RequestLog, RequestLogWriter, connect, migrate
from inferline.store.tasks import aggregate, summarize
from tests.waiting import eventually


def row(request_id: str, start: float, took: float, cost: float, **more: Any) -> dict[str, Any]:
    return {"request_id": request_id, "created_at": start, "total_time_s": took, "route": "r",
            "status_code": 200, "prompt_tokens": 10, "completion_tokens": 5,
            "num_attempts": more.pop("attempts", 1), "cost_usd": cost,
            "tool_calls": json.dumps([{"id": i, "name": "f"} for i in more.pop("calls", [])]),
            "tool_results": json.dumps(more.pop("results", [])), **more}  # fmt: skip


def test_tool_latency_and_cost_per_successful_task_by_hand() -> None:
    """Step 1 (100.0-101.0 s) asks for call a; the tool takes until 103.5, step 2 (103.5-
    104.5, one retry) asks for b and c; step 3 brings both at 106.0 and ends at 106.5."""
    steps = [
        row("r1", 100.0, 1.0, 0.010, calls=["a"]),
        row("r2", 103.5, 1.0, 0.020, calls=["b", "c"], results=["a"], attempts=2),
        row("r3", 106.0, 0.5, 0.005, results=["a", "b", "c"]),  # a again: the history
    ]
    task = summarize("t1", steps, {"success": True})
    assert [s["tool_wait_s"] for s in task["steps"]] == [None, 2.5, 1.5]
    assert task["tool_s"] == 4.0 and task["latency_s"] == 6.5 and task["retries"] == 1
    assert task["cost_usd"] == pytest.approx(0.035) and task["model_s"] == 2.5
    failed = summarize("t2", [row("r4", 200.0, 2.0, 0.015)], {"success": False})
    unjudged = summarize("t3", [row("r5", 300.0, 1.0, 0.050)], None)
    stats = aggregate([task, failed, unjudged])
    assert stats["cost_per_successful_task_usd"] == pytest.approx((0.035 + 0.015 + 0.050) / 1)
    assert stats["success_rate"] == 0.5 and stats["with_outcome"] == 2
    assert stats["tool_time_share"] == pytest.approx(4.0 / (6.5 + 2.0 + 1.0))
    assert stats["latency_p50_s"] == 2.0 and stats["latency_p95_s"] == 6.5


class ToolCaller:
    """A target that asks for one tool call until the conversation has a tool result, then
    answers in words; 10 output tokens each time."""

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None:
        pass

    async def shutdown(self, drain_timeout_s: float) -> None:
        pass

    async def submit(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        results = [m for m in request.messages or [] if m["role"] == "tool"]
        out = CompletionOutput(0, num_tokens=10, num_tokens_delta=10, finish_reason="stop")
        if len(results) < 2:
            self.calls += 1
            out.tool_calls = [ToolCall(f"call_{self.calls}", "lookup", "{}")]
        else:
            out.text = out.text_delta = "done"
        yield RequestOutput(request.request_id, None, [], [out], True,
                            RequestMetrics(time.time()), num_prompt_tokens=20)  # fmt: skip

    async def abort(self, request_id: str) -> None:
        pass

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("tooly")]

    def health(self) -> HealthReport:
        return HealthReport(True, True, "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        return {"tooly": GeneratorStats()}


@pytest.fixture
def client(tmp_path: Path) -> Any:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database)
    price = Price(input_per_mtok=1000.0, output_per_mtok=2000.0)  # a step: 0.02 + 0.02 USD
    router = Router([Target(TargetConfig("tooly", price=price), ToolCaller())],
                    [RouteConfig("agent", (TargetRef("tooly"),))])  # fmt: skip
    writer = RequestLogWriter(RequestLog(database), flush_interval_s=0.01)
    with TestClient(create_app(router, ServerConfig(), log_writer=writer)) as test_client:
        yield test_client


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def run_task(client: TestClient, task_id: str, tool_s: float) -> None:
    """Three steps: ask, tool (sleep), ask with the result, tool, ask with both results."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Find it."}]
    for _ in range(3):
        body = {"model": "agent", "messages": messages, "tools": TOOLS}
        answer = client.post("/v1/chat/completions", json=body,
                             headers={"x-inferline-task-id": task_id}).json()  # fmt: skip
        message = answer["choices"][0]["message"]
        if not message.get("tool_calls"):
            return
        time.sleep(tool_s)
        results = [{"role": "tool", "tool_call_id": c["id"], "content": "42"}
                   for c in message["tool_calls"]]  # fmt: skip
        messages = [*messages, message, *results]


def test_a_three_step_task_over_http(client: TestClient) -> None:
    run_task(client, "run-1", tool_s=0.3)
    run_task(client, "run-2", tool_s=0.0)
    assert client.post("/v1/tasks/run-1/outcome", json={"success": True, "score": 0.9}).json()[
        "success"] is True  # fmt: skip
    client.post("/v1/tasks/run-2/outcome", json={"success": False})
    eventually(  # the log is written in the background: both tasks' three requests
        lambda: [client.get(f"/v1/tasks/{name}").json() for name in ("run-1", "run-2")],
        lambda tasks: all(t.get("num_requests") == 3 for t in tasks),
    )
    task = client.get("/v1/tasks/run-1").json()
    assert task["num_requests"] == 3 and task["outcome"]["score"] == 0.9
    waits = [s["tool_wait_s"] for s in task["steps"]]
    assert waits[0] is None and all(0.3 <= w < 0.5 for w in waits[1:]), waits
    assert [s["context_tokens"] for s in task["steps"]] == [20, 20, 20]
    assert task["cost_usd"] == pytest.approx(3 * 0.04)
    stats = client.get("/v1/tasks/stats", params={"route": "agent"}).json()
    assert (stats["tasks"], stats["succeeded"], stats["success_rate"]) == (2, 1, 0.5)
    assert stats["cost_per_successful_task_usd"] == pytest.approx(6 * 0.04)
    assert 0.3 < stats["tool_time_share"] < 1
    assert client.get("/v1/tasks/nope").status_code == 404
    assert client.post("/v1/tasks/nope/outcome", json={"success": True}).status_code == 404
