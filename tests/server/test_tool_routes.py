"""Tool calling over HTTP against `EchoGenerator` (it echoes the user's words as tokens).

The user message *is* the model output here, so these tests pin down the response shapes,
the streaming deltas (through the real openai SDK), finish reasons and the 400s.
"""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient

from inferline.core.tool_calls import ToolCalling
from inferline.server import ServerConfig, create_app
from tests.server.fakes import EchoGenerator
from tests.server.test_app import assert_error

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time"}},
]
CALLS = (
    'Checking. <tool_call> {"name": "get_weather", "arguments": {"city": "Paris"}} </tool_call>'
    ' <tool_call> {"name": "get_time", "arguments": {}} </tool_call>'
)


@pytest.fixture
def generator() -> EchoGenerator:
    return EchoGenerator(max_model_len=256)


@pytest.fixture
def client(generator):  # type: ignore[no-untyped-def]
    app = create_app(generator, ServerConfig())
    with TestClient(app) as c:
        yield c


@pytest.fixture
def sdk(client) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client)


def chat(sdk: openai.OpenAI, text: str, **extra):  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": text}]
    return sdk.chat.completions.create(model="echo", messages=messages, max_tokens=64, **extra)


def test_calls_are_parsed_with_ids_and_finish_reason(sdk, generator) -> None:  # type: ignore[no-untyped-def]
    choice = chat(sdk, CALLS, tools=TOOLS).choices[0]
    assert choice.finish_reason == "length"  # the echo stops at its last word
    assert choice.message.content == "Checking."
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.type == "function" for c in calls)
    request = generator.requests[-1]
    assert request.tools == TOOLS
    calling = ToolCalling.from_spec(request.params.structured.spec)
    assert (calling.mode, calling.parallel) == ("auto", True)
    assert [f.name for f in calling.functions] == ["get_weather", "get_time"]
    assert json.loads(calling.functions[1].parameters) == {"type": "object"}


def test_streamed_calls_accumulate_to_the_same_message(sdk) -> None:  # type: ignore[no-untyped-def]
    stream = chat(sdk, CALLS, tools=TOOLS, stream=True)
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    content = "".join(d.content or "" for d in deltas)
    assert content == "Checking."
    starts = [tc for d in deltas for tc in d.tool_calls or [] if tc.id]
    assert [(s.index, s.function.name) for s in starts] == [(0, "get_weather"), (1, "get_time")]
    arguments = ["", ""]
    for d in deltas:
        for tc in d.tool_calls or []:
            arguments[tc.index] += tc.function.arguments or ""
    assert [json.loads(a) for a in arguments] == [{"city": "Paris"}, {}]
    assert sum(len(d.tool_calls or []) for d in deltas) > 3  # arguments came in pieces


def test_the_sdk_stream_helper_rebuilds_the_calls(sdk, generator) -> None:  # type: ignore[no-untyped-def]
    generator.last_finish = "stop"
    messages = [{"role": "user", "content": CALLS}]
    with sdk.chat.completions.stream(
        model="echo", messages=messages, tools=TOOLS, max_tokens=64
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


def test_stop_after_calls_becomes_tool_calls_except_for_a_named_choice(sdk, generator) -> None:  # type: ignore[no-untyped-def]
    generator.last_finish = "stop"
    assert chat(sdk, CALLS, tools=TOOLS).choices[0].finish_reason == "tool_calls"
    assert chat(sdk, "no calls here", tools=TOOLS).choices[0].finish_reason == "stop"
    named = {"type": "function", "function": {"name": "get_weather"}}
    assert chat(sdk, CALLS, tools=TOOLS, tool_choice=named).choices[0].finish_reason == "stop"
    chunks = list(chat(sdk, CALLS, tools=TOOLS, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    generator.last_finish = "length"
    assert chat(sdk, CALLS, tools=TOOLS).choices[0].finish_reason == "length"


def test_modes_reach_the_engine(client, generator) -> None:  # type: ignore[no-untyped-def]
    def send(**extra):  # type: ignore[no-untyped-def]
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **extra}
        assert client.post("/v1/chat/completions", json=body).status_code == 200, extra
        return generator.requests[-1]

    none = send(tools=TOOLS, tool_choice="none")
    assert none.tools is None and none.params.structured is None
    required = send(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    calling = ToolCalling.from_spec(required.params.structured.spec)
    assert (calling.mode, calling.parallel) == ("required", False)
    named = send(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    calling = ToolCalling.from_spec(named.params.structured.spec)
    assert calling.mode == "named" and [f.name for f in calling.functions] == ["get_time"]
    assert named.tools == TOOLS  # the model still sees every tool
    plain = send()
    assert plain.tools is None and plain.params.structured is None


def test_tool_history_is_passed_on(client, generator) -> None:  # type: ignore[no-untyped-def]
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
    messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "4 degrees"},
    ]
    body = {"model": "echo", "messages": messages, "tools": TOOLS}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    sent = generator.requests[-1].messages
    assert sent[1]["tool_calls"] == [call]
    assert sent[2] == {"role": "tool", "content": "4 degrees", "tool_call_id": "call_1"}


BAD = [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
     "tools[0].function.parameters"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools"),
    ({"tools": TOOLS, "guided_regex": "a+"}, "guided_regex"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "param"), BAD)
def test_bad_tool_fields_are_400_naming_the_field(client, extra, param) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], **extra}
    assert_error(client.post("/v1/chat/completions", json=body), 400, param)


def test_bad_tool_history_is_400(client) -> None:  # type: ignore[no-untyped-def]
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages = [{"role": "assistant", "tool_calls": [call]}, {"role": "user", "content": "x"}]
    response = client.post("/v1/chat/completions", json={"model": "echo", "messages": messages})
    assert_error(response, 400, "messages[0].tool_calls[0].function.arguments")
    messages = [{"role": "tool", "content": "4 degrees"}]
    response = client.post("/v1/chat/completions", json={"model": "echo", "messages": messages})
    assert_error(response, 400, "messages[0].tool_call_id")


def test_tools_with_a_response_format(client, generator) -> None:  # type: ignore[no-untyped-def]
    def calling(**extra) -> ToolCalling:  # type: ignore[no-untyped-def]
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
        response = client.post("/v1/chat/completions", json={**body, **extra})
        assert response.status_code == 200, response.text
        return ToolCalling.from_spec(generator.requests[-1].params.structured.spec)

    assert calling(response_format={"type": "text"}).answer_schema == ""
    assert json.loads(calling(response_format={"type": "json_object"}).answer_schema) == {
        "type": "object"
    }
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    assert json.loads(calling(response_format=schema).answer_schema) == WEATHER
    # Calls only: the format has no text answer to shape.
    assert calling(response_format=schema, tool_choice="required").answer_schema == ""
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
            "response_format": schema, "guided_regex": "a"}  # fmt: skip
    assert_error(client.post("/v1/chat/completions", json=body), 400, "tools")


def test_each_choice_is_parsed_on_its_own(sdk, generator) -> None:  # type: ignore[no-untyped-def]
    generator.last_finish = "stop"
    reply = chat(sdk, CALLS, tools=TOOLS, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert [c.function.name for c in choice.message.tool_calls] == ["get_weather", "get_time"]
        assert choice.finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].id != reply.choices[1].message.tool_calls[0].id
    chunks = list(chat(sdk, CALLS, tools=TOOLS, n=2, stream=True))
    for index in (0, 1):
        starts = [tc.function.name for c in chunks for ch in c.choices if ch.index == index
                  for tc in ch.delta.tool_calls or [] if tc.id]  # fmt: skip
        assert starts == ["get_weather", "get_time"]
