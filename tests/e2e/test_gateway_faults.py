"""The gateway against its upstreams' faults: a real `inferline serve --config` process in
front of our fault-injecting upstream, driven by the real `openai` SDK.

One test per fault (the list of failoverbench, an independent fault bench, 2026). Each
states the expected outcome — the whole canonical answer from a fallback, or a bounded,
clean error — and its time bound. Every healthy answer is the same 60-word text, so a
truncated, duplicated or mixed-up answer shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle, canonical_text, start_fake_upstream
from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e
WHOLE = canonical_text(60)
WORDS = WHOLE.split()
MESSAGES = [{"role": "user", "content": "Tell me the story."}]
TIMEOUTS = "{connect_s: 1, first_token_s: 1.5, idle_s: 1, total_s: 30}"


def _model(name: str, base_url: str, model: str, extra: str = "") -> str:
    return f"""
  - name: {name}
    kind: openai
    base_url: {base_url}
    model: {model}
    can_continue: true
    timeouts: {TIMEOUTS}
    price: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
    retry_budget: {{min_retries: 1000}}  # tests share the targets: no budget between them
    breaker: {{failures: 100, window_s: 60, cooldown_s: 2}}{extra}"""


def _route(name: str, targets: str, attempts: int = 2) -> str:
    return f"""
  - name: {name}
    targets: [{targets}]
    retry: {{attempts: {attempts}, backoff_ms: 50, max_backoff_ms: 200}}
    deadline_s: 15"""


def gateway_config(upstream: FakeUpstreamHandle) -> str:
    api, reset = upstream.api_base, upstream.reset_url
    flappy = "\n    breaker: {failures: 2, window_s: 10, cooldown_s: 1}"
    models = "".join(
        [
            _model("primary", api, "primary"),
            _model("backup", api, "backup"),
            _model("refuser", api, "refuser"),
            _model("resetter", str(reset), "resetter"),
            _model("flappy", api, "flappy", extra=flappy).replace(
                "breaker: {failures: 100, window_s: 60, cooldown_s: 2}" + flappy, flappy.strip()
            ),
        ]
    )
    routes = "".join(
        [
            _route("main", "primary, backup"),
            _route("alone", "primary"),
            _route("reset-route", "resetter, backup"),
            _route("refuse-route", "primary, refuser"),
            _route("flap-route", "flappy, backup"),
        ]
    )
    return f"models:{models}\nroutes:{routes}\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamHandle]:
    handle = start_fake_upstream(port=0, reset_port=0, mode="process")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("gateway")
    config = Path(directory) / "gateway.yaml"
    config.write_text(gateway_config(upstream))
    server = start_server(directory, "--config", str(config))
    yield server
    stop_server(server)


@pytest.fixture
def sdk(gateway: ServerProcess, upstream: FakeUpstreamHandle) -> Iterator[openai.OpenAI]:
    upstream.reset()
    with openai.OpenAI(
        base_url=f"{gateway.base_url}/v1", api_key="x", max_retries=0, timeout=30
    ) as client:
        yield client


def ask(sdk: openai.OpenAI, route: str = "main") -> tuple[Any, float]:
    """A non-streaming answer and its time."""
    started = time.monotonic()
    raw = sdk.chat.completions.with_raw_response.create(
        model=route, messages=MESSAGES, max_tokens=100
    )
    return raw, time.monotonic() - started


def ask_streamed(sdk: openai.OpenAI, route: str = "main") -> tuple[list[Any], float]:
    """Every chunk of a streamed answer and its time."""
    started = time.monotonic()
    stream = sdk.chat.completions.create(
        model=route,
        messages=MESSAGES,
        max_tokens=100,
        stream=True,
        stream_options={"include_usage": True},
    )
    return list(stream), time.monotonic() - started


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_of(chunks: list[Any]) -> str | None:
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    return next((r for r in reversed(reasons) if r), None)


def attempts(upstream: FakeUpstreamHandle, model: str) -> int:
    return len(upstream.log(model=model, endpoint="/v1/chat/completions"))


def test_429_with_retry_after_once_is_retried_after_exactly_that(sdk, upstream) -> None:
    """Expected: the whole answer from the primary, retried after its Retry-After (1 s)."""
    upstream.script("primary", {"kind": "status", "status": 429, "retry_after": 1})
    raw, elapsed = ask(sdk)
    reply = raw.parse()
    assert reply.choices[0].message.content == WHOLE and reply.model == "primary"
    assert raw.headers["x-inferline-attempts"] == "2"
    assert 1.0 <= elapsed < 3.0
    assert attempts(upstream, "primary") == 2


def test_429_persistently_falls_back_and_alone_is_a_429_with_retry_after(sdk, upstream) -> None:
    """Expected: the backup's whole answer after one honoured Retry-After; a route with no
    other target answers 429 with Retry-After (bounded by attempts x Retry-After)."""
    upstream.script("primary", {"kind": "status", "status": 429, "retry_after": 1, "times": None})
    raw, elapsed = ask(sdk)
    assert raw.parse().choices[0].message.content == WHOLE and raw.parse().model == "backup"
    assert raw.headers["x-inferline-fallback-reason"] == "rate_limited"
    assert elapsed < 3.0
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="alone", messages=MESSAGES, max_tokens=100)
    assert time.monotonic() - started < 3.0
    assert info.value.response.headers["retry-after"] == "1"
    assert "primary: rate_limited" in info.value.message


def test_500_once_is_retried(sdk, upstream) -> None:
    """Expected: the whole answer from the primary on its second attempt, within 1 s."""
    upstream.script("primary", {"kind": "status", "status": 500})
    raw, elapsed = ask(sdk)
    assert raw.parse().choices[0].message.content == WHOLE and raw.parse().model == "primary"
    assert raw.headers["x-inferline-attempts"] == "2" and elapsed < 1.5


def test_503_persistently_falls_back(sdk, upstream) -> None:
    """Expected: the backup's whole answer after two quick attempts on the primary."""
    upstream.script("primary", {"kind": "status", "status": 503, "times": None})
    raw, elapsed = ask(sdk)
    assert raw.parse().choices[0].message.content == WHOLE and raw.parse().model == "backup"
    assert raw.headers["x-inferline-fallback-reason"] == "upstream_unavailable"
    assert elapsed < 1.5 and attempts(upstream, "primary") == 2


def test_connection_reset_falls_back(sdk, upstream) -> None:
    """Expected: the backup's whole answer, within 1 s."""
    chunks, elapsed = ask_streamed(sdk, "reset-route")
    assert text_of(chunks) == WHOLE and chunks[-1].model == "backup" and elapsed < 1.5


def test_no_response_at_all_fails_over_after_the_first_token_timeout(sdk, upstream) -> None:
    """Expected: the backup's whole answer after one first-token timeout (1.5 s), not
    retries of the silent upstream (LiteLLM: 91-96 s)."""
    upstream.script("primary", {"kind": "hang", "times": None})
    raw, elapsed = ask(sdk)
    assert raw.parse().choices[0].message.content == WHOLE and raw.parse().model == "backup"
    assert raw.headers["x-inferline-fallback-reason"] == "first_token_timeout"
    assert 1.4 <= elapsed < 4.0 and attempts(upstream, "primary") == 1


def test_a_first_token_after_20_s_fails_over(sdk, upstream) -> None:
    """Expected: the backup's whole answer (streamed) after the 1.5 s first-token timeout."""
    upstream.script("primary", {"kind": "first_token_delay", "delay": 20})
    chunks, elapsed = ask_streamed(sdk)
    assert text_of(chunks) == WHOLE and finish_of(chunks) == "stop"
    assert chunks[-1].model == "backup" and elapsed < 4.0


def test_a_stream_cut_after_40_of_60_tokens_is_continued_by_the_fallback(sdk, upstream) -> None:
    """Expected: one whole answer (40 words from the primary, 20 from the backup), the
    final chunk and usage naming the backup, within 1 s."""
    upstream.script("primary", {"kind": "cut", "after": 40})
    chunks, elapsed = ask_streamed(sdk)
    assert text_of(chunks) == WHOLE and finish_of(chunks) == "stop"
    assert chunks[1].model == "primary" and chunks[-1].model == "backup"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 60
    (continuation,) = upstream.log(model="backup")
    assert continuation["continuation"] and continuation["prefix_words"] == 40
    assert elapsed < 1.5


def test_a_cut_non_streaming_answer_is_answered_again_whole(sdk, upstream) -> None:
    """Expected: the whole answer; nothing was shown, so it is not stitched from two."""
    upstream.script("primary", {"kind": "cut", "after": 40}, {"kind": "cut", "after": 40})
    raw, elapsed = ask(sdk)
    assert raw.parse().choices[0].message.content == WHOLE and raw.parse().model == "backup"
    assert not upstream.log(model="backup")[0]["continuation"]
    assert elapsed < 1.5


def test_a_30_s_stall_midway_is_continued_after_the_idle_timeout(sdk, upstream) -> None:
    """Expected: the whole answer, the backup continuing after the 1 s idle timeout."""
    upstream.script("primary", {"kind": "stall", "after": 30, "duration": 30})
    chunks, elapsed = ask_streamed(sdk)
    assert text_of(chunks) == WHOLE and chunks[-1].model == "backup"
    assert 1.0 <= elapsed < 3.0


def test_a_malformed_chunk_is_continued_elsewhere(sdk, upstream) -> None:
    """Expected: the whole answer, words 1-20 from the primary, the rest from the backup."""
    upstream.script("primary", {"kind": "malformed", "after": 20, "then": "continue"})
    chunks, elapsed = ask_streamed(sdk)
    assert text_of(chunks) == WHOLE and chunks[-1].model == "backup" and elapsed < 1.5


def test_a_stream_without_done(sdk, upstream) -> None:
    """Expected: with its finish reason the answer is whole (kept); without it, the
    backup continues from where it stopped."""
    upstream.script("primary", {"kind": "no_done"})
    chunks, _ = ask_streamed(sdk)
    assert text_of(chunks) == WHOLE and chunks[-1].model == "primary"
    upstream.script("primary", {"kind": "no_done", "finish": False})
    chunks, elapsed = ask_streamed(sdk)
    assert text_of(chunks) == WHOLE and chunks[-1].model == "backup" and elapsed < 1.5


def test_context_length_exceeded_goes_to_the_next_target(sdk, upstream) -> None:
    """Expected: the backup's whole answer; the reason says why."""
    upstream.script("primary", {"kind": "status", "code": "context_length_exceeded"})
    raw, elapsed = ask(sdk)
    assert raw.parse().model == "backup" and raw.parse().choices[0].message.content == WHOLE
    assert raw.headers["x-inferline-fallback-reason"] == "context_window" and elapsed < 1.5
    assert attempts(upstream, "primary") == 1  # not retried


def test_a_content_filter_refusal_goes_to_the_next_target(sdk, upstream) -> None:
    """Expected: the backup answers; a route with no other target answers a 400."""
    upstream.script("primary", {"kind": "status", "code": "content_filter"})
    raw, _ = ask(sdk)
    assert raw.parse().model == "backup"
    assert raw.headers["x-inferline-fallback-reason"] == "content_filter"
    upstream.script("primary", {"kind": "status", "code": "content_filter"})
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="alone", messages=MESSAGES, max_tokens=100)
    assert info.value.code == "content_filter"


def test_a_fallback_refusing_the_prefix_ends_with_an_error_not_a_short_answer(
    sdk, upstream
) -> None:
    """Expected: the 40 words sent, then an OpenAI error event (never finish_reason stop),
    within 1 s."""
    upstream.script("primary", {"kind": "cut", "after": 40})
    upstream.script("refuser", {"kind": "refuse_prefix"})
    started, seen = time.monotonic(), []
    stream = sdk.chat.completions.create(
        model="refuse-route", messages=MESSAGES, max_tokens=100, stream=True
    )
    with pytest.raises(openai.APIError, match="could not be completed"):
        for chunk in stream:
            seen.append(chunk)
    assert text_of(seen) == " ".join(WORDS[:40]) and finish_of(seen) is None
    assert time.monotonic() - started < 1.5


def test_a_flapping_primary_never_fails_a_request(sdk, upstream, gateway) -> None:
    """Expected: every request over 4 s of flapping (1 s up, 1 s down) gets the whole
    answer; while it is down, its breaker opens and the backup answers at once."""
    upstream.script("flappy", {"kind": "flap", "up": 1, "down": 1})
    models, latencies = [], []
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        raw, elapsed = ask(sdk, "flap-route")
        reply = raw.parse()
        assert reply.choices[0].message.content == WHOLE
        models.append(reply.model)
        latencies.append(elapsed)
        time.sleep(0.05)
    assert {"flappy", "backup"} <= set(models) and max(latencies) < 1.5
    routes = httpx.get(f"{gateway.base_url}/v1/routes").json()["data"]
    (flap,) = [r for r in routes if r["id"] == "flap-route"]
    flappy = flap["targets"][0]
    assert flappy["name"] == "flappy" and flappy["error_rate"] > 0 and flappy["num_requests"]


def test_the_response_and_usage_name_the_model_that_answered(sdk, upstream) -> None:
    """Expected: `model` and the headers name the fallback; usage is the fallback's."""
    upstream.script("primary", {"kind": "status", "status": 503, "times": None})
    chunks, _ = ask_streamed(sdk)
    assert {c.model for c in chunks} == {"backup"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 60
    raw, _ = ask(sdk)
    assert raw.headers["x-inferline-target"] == "backup" and raw.parse().model == "backup"
    assert raw.headers["x-inferline-route"] == "main"
