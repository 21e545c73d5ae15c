"""The fault-injecting fake OpenAI upstream, driven with httpx and the real openai SDK."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from inferline.bench.fake_upstream import (
    FakeUpstreamHandle,
    canonical_text,
    canonical_words,
    parse_model_name,
    start_fake_upstream,
)

WORDS = canonical_words()
TEXT = canonical_text()
USER: Any = [{"role": "user", "content": "tell me a story"}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstreamHandle]:
    with start_fake_upstream(reset_port=0) as handle:
        yield handle


@pytest.fixture
def up(server: FakeUpstreamHandle) -> FakeUpstreamHandle:
    server.reset()
    return server


@pytest.fixture
def sdk(up: FakeUpstreamHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up.api_base, api_key="x", max_retries=0) as client:
        yield client


def chat(up: FakeUpstreamHandle, timeout: float = 5.0, **body: Any) -> httpx.Response:
    body = {"model": "m", "messages": USER, **body}
    return httpx.post(up.api_base + "/chat/completions", json=body, timeout=timeout)


def sse(up: FakeUpstreamHandle, path: str = "/chat/completions", **body: Any) -> list[str]:
    """The ``data:`` payloads of a stream, read with httpx."""
    prompt = {"messages": USER} if path == "/chat/completions" else {"prompt": "hello"}
    body = {"model": "m", **prompt, "stream": True, **body}
    with httpx.stream("POST", up.api_base + path, json=body, timeout=5) as response:
        assert response.status_code == 200
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def stream_text(events: list[str]) -> str:
    text = ""
    for event in events:
        if event != "[DONE]" and json.loads(event)["choices"]:
            choice = json.loads(event)["choices"][0]
            text += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return text


def test_the_canonical_words_are_distinct() -> None:
    for n in (60, 250):
        words = canonical_words(n)
        keys = {re.sub(r"[^a-z0-9]", "", w.lower()) for w in words}
        assert len(words) == len(keys) == n
    assert canonical_words(250)[:60] == WORDS and " ".join(WORDS) == TEXT


def test_healthy_chat_with_the_sdk(up: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="gpt-x", messages=USER)
    assert reply.model == "gpt-x" and reply.choices[0].message.content == TEXT
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage and (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 60)
    chunks = list(
        sdk.chat.completions.create(
            model="gpt-x",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=7,
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content
    ]
    assert pieces == [WORDS[0]] + [" " + w for w in WORDS[1:7]]  # one word per chunk
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 7
    assert [(e["status"], e["words_sent"], e["outcome"]) for e in up.log()] == [
        (200, 60, "ok"),
        (200, 7, "ok"),
    ]


def test_completions_and_models(up: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model="base", prompt="once upon", max_tokens=3)
    assert (
        reply.choices[0].text == "Quietly, the amber" and reply.choices[0].finish_reason == "length"
    )
    events = sse(up, "/completions")
    assert events[-1] == "[DONE]" and stream_text(events) == TEXT and len(events) == 62
    assert [m.id for m in sdk.models.list()] == ["fake-model"]


@pytest.mark.parametrize("m", [0, 1, 40, 59, 60])
def test_chat_continuation_completes_the_canonical_text(up: FakeUpstreamHandle, m: int) -> None:
    prefixes = {" ".join(WORDS[:m]), " ".join(WORDS[:m]) + " " if m else ""}
    for prefix in prefixes:
        expected = TEXT[len(prefix) :] if m < 60 else ""  # prefix + continuation == TEXT
        messages = [*USER, {"role": "assistant", "content": prefix}]
        reply = chat(up, messages=messages, continue_final_message=True).json()
        assert reply["choices"][0]["message"]["content"] == expected
        assert reply["usage"]["completion_tokens"] == 60 - m
        events = sse(up, messages=[*USER, {"role": "assistant", "content": prefix, "prefix": True}])
        assert stream_text(events) == expected
    assert {(e["continuation"], e["prefix_words"]) for e in up.log()} == {(True, m)}


def test_continuation_errors_and_completions_rule(up: FakeUpstreamHandle) -> None:
    wrong = [*USER, {"role": "assistant", "content": "Quietly, a fox"}]
    response = chat(up, messages=wrong, continue_final_message=True)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert chat(up, continue_final_message=True).status_code == 400  # no assistant message
    for prompt, rest in [("Go on: Quietly, the", WORDS[2:]), ("x Quietly, the ", WORDS[2:])]:
        body = {"model": "m", "prompt": prompt}
        text = httpx.post(up.api_base + "/completions", json=body).json()["choices"][0]["text"]
        assert prompt + text == prompt.rstrip() + " " + " ".join(rest)
    assert [e["prefix_words"] for e in up.log()] == [None, None, 2, 2]


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        ({"status": 429, "retry_after": 2}, openai.RateLimitError, "rate_limit_exceeded"),
        ({"status": 500}, openai.InternalServerError, None),
        ({"status": 503}, openai.InternalServerError, None),
        ({"code": "context_length_exceeded"}, openai.BadRequestError, "context_length_exceeded"),
        ({"status": 400, "code": "content_filter"}, openai.BadRequestError, "content_filter"),
        ({"status": 401}, openai.AuthenticationError, "invalid_api_key"),
    ],
)
def test_status_faults(
    up: FakeUpstreamHandle, sdk: openai.OpenAI, fault: Any, error: Any, code: Any
) -> None:
    up.script("*", {"kind": "status", **fault})
    with pytest.raises(error) as caught:
        sdk.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == code and caught.value.status_code == fault.get("status", 400)
    assert caught.value.response.headers.get("retry-after") == (
        "2" if "retry_after" in fault else None
    )
    if code == "context_length_exceeded":
        assert "maximum context length is 8192 tokens" in caught.value.message
    assert sdk.chat.completions.create(model="m", messages=USER).choices


def test_the_log_counts_sdk_retries(up: FakeUpstreamHandle) -> None:
    up.script("m", {"kind": "status", "status": 429, "retry_after": 0.05})
    with openai.OpenAI(base_url=up.api_base, api_key="x", max_retries=2) as client:
        assert client.chat.completions.create(model="m", messages=USER).choices
    assert [e["status"] for e in up.log(endpoint="/v1/chat/completions")] == [429, 200]
    assert up.log()[0]["fault"] == {"kind": "status", "status": 429, "retry_after": 0.05}


def test_model_name_faults(up: FakeUpstreamHandle) -> None:
    model = "fault:429-once:retry_after=0.5|cut-x2:after=5"
    assert [s for _, s in parse_model_name(model)] == [1, 2]
    first = chat(up, model=model)
    assert first.status_code == 429 and first.headers["retry-after-ms"] == "500"
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            sse(up, model=model)
    assert chat(up, model=model).json()["choices"][0]["message"]["content"] == TEXT
    assert chat(up, model="fault:content_filter").json()["error"]["code"] == "content_filter"
    bad = chat(up, model="fault:nonsense")
    assert bad.status_code == 400 and "unknown fault kind" in bad.json()["error"]["message"]
    assert [e["outcome"] for e in up.log()] == ["error", "cut", "cut", "ok", "error", "error"]


def test_script_fifo_times_and_reset(up: FakeUpstreamHandle) -> None:
    up.script("a", {"kind": "status", "status": 429, "times": 2}, {"kind": "status", "status": 500})
    up.script("*", {"kind": "ok"}, {"kind": "status", "status": 503, "times": None})
    assert up.control("GET", "/_control/script")["scripts"]["a"][0]["times"] == 2
    codes = [chat(up, model=m).status_code for m in ["a", "a", "b", "a", "a", "b", "b"]]
    assert codes == [429, 429, 200, 500, 503, 503, 503]
    up.reset()
    assert chat(up, model="a").status_code == 200 and len(up.log()) == 1
    bad = httpx.post(
        up.base_url + "/_control/script", json={"model": "a", "faults": [{"kind": "x"}]}
    )
    assert bad.status_code == 400 and not up.control("GET", "/_control/script")["scripts"]


def test_refuse_prefix(up: FakeUpstreamHandle) -> None:
    up.script("*", {"kind": "refuse_prefix", "times": None})
    assert chat(up).status_code == 200
    continuation = [*USER, {"role": "assistant", "content": "Quietly,"}]
    response = chat(up, messages=continuation, continue_final_message=True)
    assert (
        response.status_code == 400
        and "continue_final_message" in response.json()["error"]["message"]
    )


def test_hang_until_the_client_times_out(up: FakeUpstreamHandle) -> None:
    up.script("*", {"kind": "hang", "times": 2})
    with pytest.raises(httpx.ReadTimeout):
        chat(up, timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        chat(up, timeout=0.3, stream=True)
    time.sleep(0.1)
    assert [(e["status"], e["outcome"]) for e in up.log()] == [(None, "client_closed")] * 2


def test_first_token_delay(up: FakeUpstreamHandle) -> None:
    up.script("*", {"kind": "first_token_delay", "delay": 0.5})
    start = time.monotonic()
    body = {"model": "m", "messages": USER, "stream": True}
    with httpx.stream("POST", up.api_base + "/chat/completions", json=body, timeout=5) as response:
        assert response.status_code == 200 and time.monotonic() - start < 0.3
        lines = [line for line in response.iter_lines() if line]
        assert time.monotonic() - start >= 0.5
    assert stream_text([line[6:] for line in lines]) == TEXT


def test_cut_drops_the_connection(up: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    up.script("*", {"kind": "cut", "after": 40}, {"kind": "cut"})
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in sdk.chat.completions.create(model="m", messages=USER, stream=True):
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == " ".join(WORDS[:40])
    with pytest.raises(httpx.RemoteProtocolError):
        chat(up)  # not streamed: half the JSON body, then the drop
    assert [(e["words_sent"], e["outcome"]) for e in up.log()] == [(40, "cut"), (0, "cut")]


def test_stall_pauses_then_continues(up: FakeUpstreamHandle) -> None:
    up.script(
        "*", {"kind": "stall", "after": 10, "duration": 0.5}, {"kind": "stall", "duration": None}
    )
    body = {"model": "m", "messages": USER, "stream": True}
    arrivals: list[tuple[float, str]] = []
    with httpx.stream("POST", up.api_base + "/chat/completions", json=body, timeout=5) as response:
        for line in response.iter_lines():
            if line:
                arrivals.append((time.monotonic(), line[6:]))
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert gaps.index(max(gaps)) == 10 and max(gaps) >= 0.45  # after the role chunk + 10 words
    assert stream_text([e for _, e in arrivals]) == TEXT and arrivals[-1][1] == "[DONE]"
    with pytest.raises(httpx.ReadTimeout):
        chat(up, timeout=0.3)


def test_malformed_and_no_done(up: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    up.script(
        "*", {"kind": "malformed", "after": 3}, {"kind": "malformed", "after": 3, "then": "stop"}
    )
    events = sse(up)
    assert events[4] == "{not json" and events[-1] == "[DONE]" and len(events) == 64
    assert sse(up)[-1] == "{not json"
    up.script("*", {"kind": "malformed"})
    with pytest.raises(ValueError):
        list(sdk.chat.completions.create(model="m", messages=USER, stream=True))
    up.script("*", {"kind": "no_done"}, {"kind": "no_done", "finish": False})
    events = sse(up)
    assert (
        json.loads(events[-1])["choices"][0]["finish_reason"] == "stop"
        and stream_text(events) == TEXT
    )
    events = sse(up, stream_options={"include_usage": True})
    assert json.loads(events[-1])["usage"]["completion_tokens"] == 60
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events[:-1])


def test_content_filter_200(up: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    up.script("*", {"kind": "content_filter_200", "times": 2})
    reply = sdk.chat.completions.create(model="m", messages=USER)
    assert (
        reply.choices[0].finish_reason == "content_filter"
        and reply.choices[0].message.content == ""
    )
    chunks = list(sdk.chat.completions.create(model="m", messages=USER, stream=True))
    assert [c.choices[0].finish_reason for c in chunks] == [None, "content_filter"]


def test_tool_call(up: FakeUpstreamHandle, sdk: openai.OpenAI) -> None:
    up.script("*", {"kind": "tool_call", "name": "refund", "arguments": '{"id": 7}', "times": 2})
    reply = sdk.chat.completions.create(model="m", messages=USER)
    (call,) = reply.choices[0].message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("refund", '{"id": 7}')
    assert reply.choices[0].finish_reason == "tool_calls" and call.id == f"call_{reply.id}"
    assert reply.usage is not None and reply.usage.completion_tokens == 10
    chunks = list(sdk.chat.completions.create(model="m", messages=USER, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert [d[0].function.name for d in deltas] == ["refund", None]  # type: ignore[union-attr]
    assert "".join(d[0].function.arguments or "" for d in deltas) == '{"id": 7}'  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert chat(up).json()["choices"][0]["message"]["content"] == TEXT  # the script is spent
    up.script("*", {"kind": "tool_call"})
    text = httpx.post(up.api_base + "/completions", json={"model": "m", "prompt": "x"})
    assert text.status_code == 400


def test_flap(up: FakeUpstreamHandle) -> None:
    up.script("*", {"kind": "flap", "up": 0.4, "down": 0.4, "retry_after": 1})
    start = time.monotonic()
    codes = []
    for at in (0.0, 0.55, 0.95, 1.35):
        time.sleep(max(0.0, start + at - time.monotonic()))
        codes.append(chat(up).status_code)
    assert codes == [200, 503, 200, 503]


def test_the_reset_port(up: FakeUpstreamHandle) -> None:
    assert up.reset_url is not None
    client = openai.OpenAI(base_url=up.reset_url, api_key="x", max_retries=0)
    with client, pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)
    with pytest.raises(httpx.TransportError):
        httpx.get(up.reset_url + "/models")


def test_token_delay_paces_the_stream(up: FakeUpstreamHandle) -> None:
    up.set_token_delay(25)
    try:
        start = time.monotonic()
        events = sse(up, max_tokens=9)
        assert time.monotonic() - start >= 8 * 0.025 and stream_text(events) == " ".join(WORDS[:9])
    finally:
        up.set_token_delay(0)


def test_stop_releases_paused_requests() -> None:
    handle = start_fake_upstream()
    handle.script("*", {"kind": "hang"})
    results: list[object] = []

    def call() -> None:
        try:
            results.append(chat(handle, timeout=10).status_code)
        except httpx.HTTPError as exc:
            results.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    arrived = time.monotonic() + 10  # stopped before it arrived, it would be refused instead
    while not handle.log(fault={"kind": "hang"}) and time.monotonic() < arrived:
        time.sleep(0.02)
    start = time.monotonic()
    handle.stop()
    thread.join(5)
    assert time.monotonic() - start < 2 and not thread.is_alive() and results == [500]


def test_the_subprocess_runner_and_cli() -> None:
    start = time.monotonic()
    with start_fake_upstream(reset_port=0, mode="process", words=5, token_delay_ms=20) as proc:
        assert time.monotonic() - start < 5 and proc.app is None
        proc.script("*", {"kind": "status", "status": 503})
        assert chat(proc).status_code == 503
        begun = time.monotonic()
        assert stream_text(sse(proc)) == " ".join(WORDS[:5])
        assert time.monotonic() - begun >= 4 * 0.02
        assert len(proc.log()) == 2 and proc.reset_url
        with pytest.raises(httpx.TransportError):
            httpx.get(proc.reset_url)
