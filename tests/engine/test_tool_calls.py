"""Tool-call grammars on the real SmolLM2 (its template has no tools: the Hermes fallback).

The engine's outputs carry the calls parsed (`CompletionOutput.tool_calls`) and the text
outside them; the raw Hermes text is checked too, decoded from the output's token ids.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from inferline.core import InvalidParameterError, SamplingParams
from inferline.core.tool_calls import CALL_OPEN, ToolCalling, ToolFunction
from tests.conftest import run_each

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
FUNCTIONS = (
    ToolFunction("get_weather", json.dumps(WEATHER)),
    ToolFunction("get_time", json.dumps(TIME)),
)
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]


def tool_params(calling: ToolCalling, max_tokens: int = 120) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0, structured=calling.to_structured())


def run(engine, requests: list[tuple[str, SamplingParams]]) -> list[Any]:  # type: ignore[no-untyped-def]
    def prompt(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return str(engine.tokenizer.apply_chat_template(messages, tools=OPENAI_TOOLS))

    outputs = run_each(engine, [(prompt(q), params) for q, params in requests])
    return [o.outputs[0] for o in outputs]


def calls_in(text: str) -> list[dict[str, Any]]:
    """The JSON objects of the ``<tool_call>`` blocks, checked block by block."""
    blocks = text.split(CALL_OPEN)[1:]
    calls = []
    for block in blocks:
        body, close, _ = block.partition("</tool_call>")
        assert close, text
        calls.append(json.loads(body))
    return calls


def parsed_calls(engine, output) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The output's structured calls, which must equal the calls in its raw text."""
    raw = engine.tokenizer.decode(output.token_ids)
    calls = [{"name": c.name, "arguments": json.loads(c.arguments)} for c in output.tool_calls]
    assert calls == calls_in(raw), (raw, output.tool_calls)
    return calls


def check_call(call: dict[str, Any]) -> None:
    schema = {"get_weather": WEATHER, "get_time": TIME}[call["name"]]
    jsonschema.validate(call["arguments"], schema)


@pytest.fixture(scope="module")
def engine(make_engine):  # type: ignore[no-untyped-def]
    return make_engine()


def test_the_prompt_lists_the_tools_when_the_template_has_none(engine) -> None:  # type: ignore[no-untyped-def]
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "4 degrees"},
    ]  # fmt: skip
    prompt = engine.tokenizer.apply_chat_template(history, tools=OPENAI_TOOLS)
    assert "<tools>\n" + json.dumps(OPENAI_TOOLS[0]) in prompt
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
        in prompt
    )
    assert "<|im_start|>user\n<tool_response>\n4 degrees\n</tool_response><|im_end|>" in prompt


def test_required_and_named_calls_always_parse_and_validate(engine) -> None:  # type: ignore[no-untyped-def]
    required = ToolCalling(FUNCTIONS, "required", parallel=True)
    single = ToolCalling(FUNCTIONS, "required", parallel=False)
    named = ToolCalling(FUNCTIONS[1:], "named", parallel=False)
    questions = ["What is the weather in Paris for 3 days?", "What time is it in Tokyo?"]
    requests = [(q, tool_params(c)) for q in questions for c in (required, single, named)]
    outputs = run(engine, requests)
    for (_, params), output in zip(requests, outputs, strict=True):
        calling = ToolCalling.from_spec(params.structured.spec)
        assert engine.tokenizer.decode(output.token_ids).startswith(CALL_OPEN)
        assert output.text == ""  # calls only: no content
        calls = parsed_calls(engine, output)
        assert calls, output
        for call in calls:
            check_call(call)
        if not calling.parallel:
            assert len(calls) == 1 and output.finish_reason == "stop", output.text
        if calling.mode == "named":
            assert calls[0]["name"] == "get_time"


def test_auto_leaves_free_text_alone(engine) -> None:  # type: ignore[no-untyped-def]
    auto = tool_params(ToolCalling(FUNCTIONS, "auto"), max_tokens=30)
    free = SamplingParams(max_tokens=30, temperature=0)
    # Non-ASCII answers: characters split over byte-level tokens must pass the text regex.
    questions = [
        "Say hello in French.",
        "Write hello in Chinese characters.",
        "Send a smiley emoji.",
    ]
    outputs = run(engine, [(q, p) for q in questions for p in (auto, free)])
    for constrained, unconstrained in zip(outputs[::2], outputs[1::2], strict=True):
        assert CALL_OPEN not in unconstrained.text
        assert constrained.text == unconstrained.text and not constrained.tool_calls


def test_auto_with_an_answer_schema_gives_json_or_calls(engine) -> None:  # type: ignore[no-untyped-def]
    answer = {"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 20}},
              "required": ["greeting"], "additionalProperties": False}  # fmt: skip
    calling = ToolCalling(FUNCTIONS, "auto", answer_schema=json.dumps(answer))
    (output,) = run(engine, [("Say hello.", tool_params(calling, max_tokens=40))])
    if output.tool_calls:
        for call in parsed_calls(engine, output):
            check_call(call)
    else:
        jsonschema.validate(json.loads(output.text), answer)


@pytest.mark.parametrize("max_tokens", [30, 48])
def test_calls_are_closed_in_time_at_the_max_tokens_cut(engine, max_tokens: int) -> None:  # type: ignore[no-untyped-def]
    long_text = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    calling = ToolCalling((ToolFunction("write", json.dumps(long_text)),), "required")
    (output,) = run(
        engine, [("Write a very long story about a dragon.", tool_params(calling, max_tokens))]
    )
    assert len(output.token_ids) <= max_tokens
    calls = parsed_calls(engine, output)
    assert calls and all(c["name"] == "write" for c in calls), output


def test_bad_parameter_schemas_and_too_few_tokens_are_refused(engine) -> None:  # type: ignore[no-untyped-def]
    bad = ToolCalling((ToolFunction("f", json.dumps({"type": "object", "if": {}})),), "required")
    with pytest.raises(InvalidParameterError, match='"if"') as error:
        engine.add_request("x", tool_params(bad))
    assert error.value.param == "tools"
    with pytest.raises(InvalidParameterError, match="max_tokens"):
        engine.add_request("x", tool_params(ToolCalling(FUNCTIONS, "required"), max_tokens=5))
