"""Traces end to end: a real `serve --config` process with a local engine and our fault
upstream, the real openai SDK, the trace read back over HTTP and with `inferline traces`."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import BIN, ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LOCAL_PRICE = {"input": 1.0, "output": 4.0}  # USD per million tokens


def config(upstream: FakeUpstreamHandle) -> str:
    price = f"{{input_per_mtok: {LOCAL_PRICE['input']}, output_per_mtok: {LOCAL_PRICE['output']}}}"
    return f"""models:
  - {{name: local, kind: llm, source: smollm2-135m, weight_format: int8, price: {price}}}
  - name: partner
    kind: openai
    base_url: "{upstream.api_base}"
    model: partner
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
  - name: tooly
    kind: openai
    base_url: "{upstream.api_base}"
    model: tooly
    price: {{input_per_mtok: 1000.0, output_per_mtok: 2000.0}}
routes:
  - name: agent
    targets: [tooly]
  - name: bot
    targets: [partner, local]
    retry: {{attempts: 1}}
    cache: {{mode: exact}}
"""


@pytest.fixture(scope="module")
def server(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[ServerProcess]:
    directory = Path(tmp_path_factory.mktemp("traces"))
    (directory / "gateway.yaml").write_text(config(upstream))
    process = start_server(directory, "--config", str(directory / "gateway.yaml"))
    yield process
    stop_server(process)


def trace_of(server: ServerProcess, request_id: str) -> dict[str, Any]:
    """The trace over HTTP; the issue asks for it within a second of the request's end."""
    deadline = time.monotonic() + 1.0
    while True:
        response = httpx.get(f"{server.base_url}/v1/traces/{request_id}")
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()
        time.sleep(0.05)


def test_a_fallback_then_a_cache_hit_are_in_the_traces(
    server: ServerProcess, upstream: FakeUpstreamHandle
) -> None:
    upstream.script("partner", {"kind": "status", "status": 503})
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    ask = {"model": "bot", "messages": [{"role": "user", "content": "Name a colour."}],
           "max_tokens": 8, "temperature": 0}  # fmt: skip
    raw = client.chat.completions.with_raw_response.create(
        **ask, extra_headers={"traceparent": PARENT}
    )
    first = trace_of(server, raw.headers["x-request-id"])
    assert [(a["target"], a["status"]) for a in first["attempts"]] == [
        ("partner", "error"), ("local", "ok")]  # fmt: skip
    assert first["cache"] == "miss" and first["target"] == "local"
    assert first["trace_id"] == PARENT.split("-")[1]
    assert first["parent_span_id"] == PARENT.split("-")[2]
    assert raw.headers["traceparent"].split("-")[1:3] == [first["trace_id"], first["span_id"]]
    sent = upstream.log(model="partner")[-1]["traceparent"]
    assert sent == raw.headers["traceparent"]  # the upstream joins our trace under our span
    assert first["timings"]["prefill_s"] > 0 and first["timings"]["decode_s"] >= 0
    again = client.chat.completions.with_raw_response.create(**ask)
    second = trace_of(server, again.headers["x-request-id"])
    assert (second["cache"], second["attempts"], second["cost_usd"]) == ("hit", [], 0.0)
    assert again.parse().choices[0].message.content == raw.parse().choices[0].message.content


def test_a_streamed_trace_has_exact_tokens_and_cost(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    stream = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Count to twenty."}],
        max_tokens=24, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 24
    trace = trace_of(server, chunks[0].id)
    assert trace["usage"]["prompt_tokens"] == usage.prompt_tokens
    assert trace["usage"]["completion_tokens"] == 24
    expected = (usage.prompt_tokens * LOCAL_PRICE["input"] + 24 * LOCAL_PRICE["output"]) / 1e6
    assert trace["cost_usd"] == pytest.approx(expected)
    assert trace["timings"]["tpot_s"] is not None and trace["finish_reason"] == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert trace["output"] == text


def test_a_three_step_tool_task_has_its_tool_latency_and_cost_per_success(
    server: ServerProcess, upstream: FakeUpstreamHandle
) -> None:
    """Two tool calls, then an answer; the upstream counts a word as a token and each call as
    10 tokens, at 1,000 / 2,000 USD per million: by hand, the steps see 4, 5 and 6 prompt words
    (user 4; a tool result 1 each) and give 10, 10 and 5 tokens -> 0.024 + 0.025 + 0.016."""
    upstream.script("tooly", {"kind": "tool_call", "name": "lookup", "times": 2})
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    messages: list[Any] = [{"role": "user", "content": "Find the order status."}]
    waits = (0.4, 0.2)
    for step in range(3):
        reply = client.chat.completions.create(
            model="agent", messages=messages, tools=tools, max_tokens=5,
            extra_headers={"x-inferline-task-id": "order-run"},
        )  # fmt: skip
        message = reply.choices[0].message
        if step == 2:
            assert message.tool_calls is None and message.content
            break
        (call,) = message.tool_calls or []
        time.sleep(waits[step])  # the tool runs
        messages += [message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "shipped"}]  # fmt: skip
    lone = client.chat.completions.with_raw_response.create(
        model="agent", messages=messages[:1], max_tokens=5, metadata={"task_id": "lone-run"}
    )
    trace_of(server, lone.headers["x-request-id"])  # every step is in the log now
    outcome = httpx.post(f"{server.base_url}/v1/tasks/order-run/outcome", json={"success": True})
    assert outcome.status_code == 200, outcome.text
    httpx.post(f"{server.base_url}/v1/tasks/lone-run/outcome", json={"success": False})
    task = httpx.get(f"{server.base_url}/v1/tasks/order-run").json()
    assert task["num_requests"] == 3
    assert [s["context_tokens"] for s in task["steps"]] == [4, 5, 6]
    measured = [s["tool_wait_s"] for s in task["steps"]]
    assert measured[0] is None
    for got, slept in zip(measured[1:], waits, strict=True):
        assert slept <= got < slept + 0.15, measured
    assert task["cost_usd"] == pytest.approx(0.024 + 0.025 + 0.016)
    stats = httpx.get(f"{server.base_url}/v1/tasks/stats", params={"route": "agent"}).json()
    assert (stats["tasks"], stats["succeeded"]) == (2, 1)
    lone_cost = 4 * 1000 / 1e6 + 5 * 2000 / 1e6  # counted in the numerator: it was spent
    assert stats["cost_per_successful_task_usd"] == pytest.approx(0.065 + lone_cost)
    assert stats["tool_time_share"] == pytest.approx(
        task["tool_s"]
        / (
            task["latency_s"]
            + httpx.get(f"{server.base_url}/v1/tasks/lone-run").json()["latency_s"]
        )
    )


def test_the_cli_lists_and_shows_traces(
    server: ServerProcess, upstream: FakeUpstreamHandle
) -> None:
    upstream.script("partner", {"kind": "status", "status": 503})
    body = {"model": "bot", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    made = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    trace_of(server, made.headers["x-request-id"])

    def cli(*args: str) -> str:
        done = subprocess.run([str(BIN), "traces", *args, "--database-url", server.database_url],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return done.stdout

    rows = [json.loads(line) for line in cli("list", "--route", "bot", "--json").splitlines()]
    assert rows and all(r["route"] == "bot" for r in rows)
    assert rows[0]["id"] == made.headers["x-request-id"]
    shown = cli("show", rows[0]["id"])
    assert rows[0]["id"] in shown and "attempt 1 partner (first): error" in shown


def test_a_prompt_answers_with_the_labelled_version_and_the_trace_says_which(
    server: ServerProcess,
) -> None:
    base = {"id": "colour", "route": "local", "params": {"max_tokens": 4, "temperature": 0}}
    versions = [
        [{"role": "system", "content": "Answer in one word."},
         {"role": "user", "content": "Name a {{ thing }}."}],
        [{"role": "system", "content": "Answer with a number."},
         {"role": "user", "content": "How many {{ thing }}s?"}],
    ]  # fmt: skip
    for number, messages in enumerate(versions, start=1):
        pushed = httpx.post(f"{server.base_url}/v1/prompts", json={**base, "messages": messages})
        assert pushed.json()["version"] == number, pushed.text
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
    for version in (2, 1):
        moved = httpx.post(f"{server.base_url}/v1/prompts/colour/labels",
                           json={"label": "production", "version": version})  # fmt: skip
        assert moved.status_code == 200
        raw = client.chat.completions.with_raw_response.create(
            model="local", messages=[],
            extra_body={"prompt": {"id": "colour", "variables": {"thing": "colour"}}},
        )  # fmt: skip
        trace = trace_of(server, raw.headers["x-request-id"])
        assert trace["prompt"] == {"id": "colour", "version": version, "label": "production"}
        assert trace["input"] == versions[version - 1][1]["content"].replace(
            "{{ thing }}", "colour")  # fmt: skip


INSTRUCTIONS = (
    "You are the support assistant of a hardware shop. Answer in one short sentence, "
    "name the part when you know it, never invent prices, say so when you are unsure, "
    "and point the customer to the returns page for anything about refunds or exchanges. "
)


def test_a_variable_moved_ahead_is_warned_and_loses_the_prefix_cache(
    server: ServerProcess,
) -> None:
    """v1: fixed instructions, then the question; v2: the customer's name first. Under the
    same requests, v1's prompts hit the prefix cache and v2's do not."""
    base = {"id": "shop", "route": "local", "params": {"max_tokens": 1, "temperature": 0}}
    asks = {"role": "user", "content": "{{ name }} asks: {{ q }}"}
    first = {**base, "messages": [{"role": "system", "content": INSTRUCTIONS}, asks]}
    second = {**base, "messages": [
        {"role": "system", "content": "Customer: {{ name }}. " + INSTRUCTIONS},
        {"role": "user", "content": "{{ q }}"}]}  # fmt: skip
    v1 = httpx.post(f"{server.base_url}/v1/prompts", json=first).json()
    v2 = httpx.post(f"{server.base_url}/v1/prompts", json=second).json()
    assert v1["warning"] is None and v1["prefix_tokens"] > 40
    assert v2["prefix_tokens"] < 10 and "down from" in v2["warning"]
    diff = httpx.get(f"{server.base_url}/v1/prompts/shop/diff", params={"from": 1, "to": 2})
    assert "# warning (v2)" in diff.json()["diff"]
    for version in ("1", "2"):
        for i in range(6):
            values = {"name": f"Customer {i}", "q": f"Do you sell bolt size {i}?"}
            prompt = {"id": "shop", "version": version, "variables": values}
            body = {"model": "local", "messages": [], "prompt": prompt}
            answer = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
            assert answer.status_code == 200, answer.text
    time.sleep(0.5)
    usage = {v["version"]: v["usage"] for v in
             httpx.get(f"{server.base_url}/v1/prompts/shop").json()["versions"]}  # fmt: skip
    print(f"prefix tokens v1 {v1['prefix_tokens']} v2 {v2['prefix_tokens']}; "
          f"hit rate v1 {usage[1]['prefix_cache_hit_rate']:.3f} "
          f"v2 {usage[2]['prefix_cache_hit_rate']:.3f}")  # fmt: skip
    assert usage[1]["requests"] == usage[2]["requests"] == 6
    assert usage[1]["prefix_cache_hit_rate"] > 0.3, usage  # 3 of its ~5 blocks, from the 2nd
    assert usage[2]["prefix_cache_hit_rate"] < 0.1, usage
