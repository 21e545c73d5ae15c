"""The Responses API through the real `openai` SDK and the OpenAI Agents SDK, against a real
server: the local model (SmolLM2) and a fallback route whose first target (our fake
upstream) fails; create, stream, parse, three chained turns, a function call round trip;
an agent with two tools (the fake upstream scripted to call them) completes its task."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: Any = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
               "parameters": WEATHER, "strict": True}]  # fmt: skip


def config(upstream: FakeUpstreamHandle) -> str:
    return f"""models:
  - {{name: local, kind: llm, source: smollm2-135m, weight_format: int8}}
  - name: primary
    kind: openai
    base_url: "{upstream.api_base}"
    model: primary
  - name: partner
    kind: openai
    base_url: "{upstream.api_base}"
    model: partner
routes:
  - name: bot
    targets: [local]
  - name: fallback
    strategy: fallback
    targets: [primary, local]
    retry: {{attempts: 1}}
  - name: agent
    targets: [partner]
"""


@pytest.fixture(scope="module")
def server(
    upstream: FakeUpstreamHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("responses")
    path = tmp / "gateway.yaml"
    path.write_text(config(upstream))
    process = start_server(tmp, "--config", str(path))
    yield process
    stop_server(process)


def client_of(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("route", ["bot", "fallback"])
def test_create_and_stream_on_the_local_model_and_through_a_fallback(
    server: ServerProcess, upstream: FakeUpstreamHandle, route: str
) -> None:
    client = client_of(server)
    upstream.script("primary", {"kind": "status", "status": 500, "times": None})
    try:
        raw = client.responses.with_raw_response.create(
            model=route, input="Name a color.", max_output_tokens=8, temperature=0
        )
        created = raw.parse()
        with client.responses.stream(
            model=route, input="Name a color.", max_output_tokens=8, temperature=0
        ) as stream:
            events = list(stream)
    finally:
        upstream.reset()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    # cut at 8 tokens: ``response.incomplete`` ends it (the SDK's final response needs a
    # ``response.completed``, as with OpenAI)
    assert events[-1].type in ("response.completed", "response.incomplete")
    streamed = events[-1].response  # type: ignore[union-attr]
    assert raw.headers["x-inferline-target"] == "local"
    assert created.output_text and created.output_text == streamed.output_text == "".join(deltas)
    assert created.usage is not None and created.usage.output_tokens <= 8
    assert client.responses.retrieve(streamed.id).output_text == streamed.output_text


class City(BaseModel):
    name: str
    country: str


def test_parse_structured_output(server: ServerProcess) -> None:
    parsed = client_of(server).responses.parse(
        model="bot", input="Give a city and its country as JSON.", text_format=City,
        max_output_tokens=60, temperature=0,
    )  # fmt: skip
    assert isinstance(parsed.output_parsed, City)


def test_three_turns_reuse_the_cached_prefix(server: ServerProcess) -> None:
    client = client_of(server)
    previous = None
    turns = []
    for question in ("Say hello.", "Say goodbye.", "Say thanks."):
        response = client.responses.create(
            model="bot", input=question, previous_response_id=previous, instructions="Be brief.",
            max_output_tokens=8, temperature=0,
        )  # fmt: skip
        turns.append(response)
        previous = response.id
    inputs = [t.usage.input_tokens for t in turns if t.usage]
    assert inputs[0] < inputs[1] < inputs[2]  # each turn carries the ones before
    last = turns[2].usage
    assert last is not None and last.input_tokens_details.cached_tokens >= inputs[0] // 2


def test_function_call_round_trip_on_the_local_model(server: ServerProcess) -> None:
    client = client_of(server)
    first = client.responses.create(
        model="bot", input="What is the weather in Paris?", tools=TOOLS,
        tool_choice={"type": "function", "name": "get_weather"}, temperature=0,
        max_output_tokens=60,
    )  # fmt: skip
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert set(json.loads(calls[0].arguments)) == {"city"}
    second = client.responses.create(
        model="bot", previous_response_id=first.id, tools=TOOLS, temperature=0,
        max_output_tokens=30,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "Sunny, 24 C"}],
    )  # fmt: skip
    assert second.output_text
    assert all(item.type == "message" for item in second.output)


def test_errors_are_openai_shaped(server: ServerProcess) -> None:
    client = client_of(server)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="x")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")
    body = {"model": "bot", "input": [{"role": "user", "content": [{"type": "input_image"}]}]}
    reply = httpx.post(f"{server.base_url}/v1/responses", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "input[0].content[0].type"


def test_an_agent_with_two_tools_completes_its_task(
    server: ServerProcess, upstream: FakeUpstreamHandle
) -> None:
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    called: list[tuple[str, str]] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(("get_weather", city))
        return f"Sunny in {city}"

    @agents.function_tool
    def get_time(timezone: str) -> str:
        """The time in a timezone."""
        called.append(("get_time", timezone))
        return "09:00"

    upstream.script(
        "partner",
        {"kind": "tool_call", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"kind": "tool_call", "name": "get_time", "arguments": '{"timezone": "Europe/Paris"}'},
    )
    remote = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    model = agents.OpenAIResponsesModel(model="agent", openai_client=remote)
    agent = agents.Agent(name="helper", instructions="Use the tools.", model=model,
                         tools=[get_weather, get_time])  # fmt: skip

    async def run() -> Any:
        async with remote:
            return await agents.Runner.run(agent, "Weather and time in Paris?")

    try:
        result = asyncio.run(run())
        sent = [r for r in upstream.log(model="partner") if r["endpoint"] == "/v1/chat/completions"]
    finally:
        upstream.reset()
    assert called == [("get_weather", "Paris"), ("get_time", "Europe/Paris")]
    assert "amber fox" in result.final_output  # the upstream's own answer, third turn
    assert len(sent) == 3


@pytest.mark.slow
def test_stream_and_a_function_call_round_trip_on_qwen(qwen_server: ServerProcess) -> None:
    client = client_of(qwen_server)
    model = "qwen2.5-coder-0.5b"
    with client.responses.stream(model=model, input="Say hi.", max_output_tokens=16) as stream:
        events = list(stream)
    assert events[-1].type in ("response.completed", "response.incomplete")
    first = client.responses.create(
        model=model, input="What is the weather in Paris?", tools=TOOLS, temperature=0,
        tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=60,
    )  # fmt: skip
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert json.loads(call.arguments)["city"]
    second = client.responses.create(
        model=model, previous_response_id=first.id, tools=TOOLS, temperature=0,
        max_output_tokens=40,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"}],
    )  # fmt: skip
    assert second.output_text and second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens > 0  # the first turn, cached
