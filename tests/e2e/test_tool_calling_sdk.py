"""Tool calling through the real openai SDK against real servers.

Qwen2.5-Coder-0.5B renders tools with its own template; SmolLM2 (no tools in its template)
gets the Hermes fallback. At temperature 0 neither model chooses ``<tool_call>`` by itself
for a plain question in ``auto`` mode (llama.cpp's server gives the same answers for the
same GGUF), so ``auto`` calls are tested with SmolLM2 asked to repeat a call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QWEN = "qwen2.5-coder-0.5b"
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": WEATHER,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "Time in a timezone", "parameters": TIME},
    },
]
ASK = [{"role": "user", "content": "What's the weather in Paris, and the time in Tokyo?"}]


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(max_length=30)
    unit: str = Field(pattern="^(celsius|fahrenheit)$")


def sdk_client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def calls_of(message: Any) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of each call, each validated against its function's schema."""
    calls = []
    for call in message.tool_calls or []:
        assert call.id.startswith("call_") and call.type == "function"
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        calls.append((call.function.name, arguments))
    return calls


def warm(client: openai.OpenAI, **request: Any) -> None:
    """Puts the prompt in the prefix cache, so the requests that follow see the same cache.

    With the default ``mixed`` weights, a fully computed prompt and a cached one take
    different kernels for the last tokens (int4 below 8 rows), so greedy outputs can differ.
    """
    choice = "none" if request.get("tool_choice") == "none" else "auto"  # same prompt
    client.chat.completions.create(**{**request, "max_tokens": 1, "tool_choice": choice})


def streamed_calls(client: openai.OpenAI, **request: Any) -> tuple[str, list[Any], str | None]:
    """Content, calls and finish reason, accumulated from raw stream chunks."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **request):
        if not chunk.choices:
            continue
        delta, finish = chunk.choices[0].delta, chunk.choices[0].finish_reason or finish
        content += delta.content or ""
        for piece in delta.tool_calls or []:
            if piece.id:
                calls[piece.index] = [piece.function.name, ""]
            calls[piece.index][1] += piece.function.arguments or ""
    return content, [(n, json.loads(a)) for n, a in calls.values()], finish


def test_required_calls_streamed_and_not(qwen) -> None:  # type: ignore[no-untyped-def]
    request = {"model": QWEN, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
               "temperature": 0, "max_tokens": 120}  # fmt: skip
    warm(qwen, **request)
    reply = qwen.chat.completions.create(**request)
    choice = reply.choices[0]
    calls = calls_of(choice.message)
    assert calls and choice.message.content is None
    assert choice.finish_reason in ("tool_calls", "length")
    content, streamed, finish = streamed_calls(qwen, **request)
    assert (content, streamed, finish) == ("", calls, choice.finish_reason)


def test_one_call_when_parallel_calls_are_off(qwen) -> None:  # type: ignore[no-untyped-def]
    reply = qwen.chat.completions.create(
        model=QWEN, messages=ASK, tools=TOOLS, tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=120,
    )  # fmt: skip
    assert len(calls_of(reply.choices[0].message)) == 1
    assert reply.choices[0].finish_reason == "tool_calls"


def test_named_choice_streamed_through_the_sdk_helper(qwen) -> None:  # type: ignore[no-untyped-def]
    named = {"type": "function", "function": {"name": "get_time"}}
    reply = qwen.chat.completions.create(
        model=QWEN, messages=ASK, tools=TOOLS, tool_choice=named, temperature=0, max_tokens=80
    )
    assert [name for name, _ in calls_of(reply.choices[0].message)] == ["get_time"]
    assert reply.choices[0].finish_reason == "stop"
    weather_tool = openai.pydantic_function_tool(GetWeather, name="get_weather")
    with qwen.chat.completions.stream(
        model=QWEN, messages=ASK, tools=[weather_tool], temperature=0, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ) as stream:  # fmt: skip
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert isinstance(call.function.parsed_arguments, GetWeather)


def test_auto_and_none_answer_in_text(qwen) -> None:  # type: ignore[no-untyped-def]
    hello = [{"role": "user", "content": "Hi! How are you today?"}]
    for choice in ("auto", "none"):
        request = {"model": QWEN, "messages": hello, "tools": TOOLS, "tool_choice": choice,
                   "temperature": 0, "max_tokens": 40}  # fmt: skip
        warm(qwen, **request)
        reply = qwen.chat.completions.create(**request)
        message = reply.choices[0].message
        assert message.content and not message.tool_calls, message
        content, calls, _ = streamed_calls(qwen, **request)
        assert (content, calls) == (message.content, [])


def test_a_tool_result_round_trips_into_the_next_turn(qwen) -> None:  # type: ignore[no-untyped-def]
    # Without the system message the fp32 model itself answers the tool result with the
    # call's JSON again (no 17): the answer then depended on what W8A8 noise appended
    question = [
        {"role": "system", "content": "You are a helpful assistant. When a tool returns a "
                                      "result, answer the user's question in one plain sentence."},
        {"role": "user", "content": "What's the temperature in Paris right now?"},
    ]  # fmt: skip
    first = qwen.chat.completions.create(
        model=QWEN, messages=question, tools=TOOLS, temperature=0, max_tokens=60,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    message = first.choices[0].message
    (call,) = message.tool_calls
    result = {"city": "Paris", "temperature": 17, "unit": "celsius"}
    messages = [
        *question,
        message,
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)},
    ]
    second = qwen.chat.completions.create(  # the 0.5B model answers best with tools hidden
        model=QWEN, messages=messages, tools=TOOLS, tool_choice="none", temperature=0,
        max_tokens=80,
    )  # fmt: skip
    assert "17" in (second.choices[0].message.content or ""), second.choices[0].message


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Iterator[openai.OpenAI]:  # type: ignore[no-untyped-def]
    """SmolLM2 at fp32 weights, whose greedy outputs do not depend on their batch."""
    server = start_server(tmp_path_factory.mktemp("smol"), "--weight-format", "fp32")
    with sdk_client(server) as client:
        yield client
    stop_server(server)


def test_auto_mode_parses_a_call_the_model_writes(smol) -> None:  # type: ignore[no-untyped-def]
    arguments = {"city": "Paris", "unit": "celsius"}
    call = (
        f"<tool_call>\n{json.dumps({'name': 'get_weather', 'arguments': arguments})}\n</tool_call>"
    )
    request = {"model": "smollm2-135m", "tools": TOOLS, "temperature": 0, "max_tokens": 60,
               "messages": [{"role": "user", "content": f"Repeat exactly: {call}"}]}  # fmt: skip
    reply = smol.chat.completions.create(**request)
    assert calls_of(reply.choices[0].message) == [
        ("get_weather", {"city": "Paris", "unit": "celsius"})
    ]
    assert reply.choices[0].finish_reason == "tool_calls"
    content, calls, finish = streamed_calls(smol, **request)
    assert (content, calls, finish) == ("", calls_of(reply.choices[0].message), "tool_calls")


def test_free_outputs_are_the_same_beside_constrained_requests(smol) -> None:  # type: ignore[no-untyped-def]
    questions = [
        "What is the capital of France?",
        "Name three fruits.",
        "Say hello.",
        "Count to five.",
    ]
    free = [{"messages": [{"role": "user", "content": q}]} for q in questions]
    named = {"type": "function", "function": {"name": "get_time"}}
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    constrained = [
        {"messages": ASK, "tools": TOOLS, "tool_choice": "required"},
        {"messages": ASK, "tools": TOOLS, "tool_choice": named},
        {"messages": [{"role": "user", "content": "Weather as JSON."}], "response_format": schema},
    ]

    def send(extra: dict[str, Any]) -> Any:
        reply = smol.chat.completions.create(
            model="smollm2-135m", temperature=0, max_tokens=40, **extra
        )
        return reply.choices[0].message

    with ThreadPoolExecutor(max_workers=8) as pool:
        alone = [m.content for m in pool.map(send, free)]
        mixed = list(pool.map(send, [*constrained, *free]))
    assert [m.content for m in mixed[len(constrained) :]] == alone
    assert calls_of(mixed[0]) and [n for n, _ in calls_of(mixed[1])] == ["get_time"]
    jsonschema.validate(json.loads(mixed[2].content), WEATHER)
