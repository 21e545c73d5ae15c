"""The real `openai` SDK against a real `inferline serve` process on SmolLM2."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import openai
import pytest

from inferline.store import RequestLog, connect

pytestmark = pytest.mark.e2e
MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_list(client) -> None:  # type: ignore[no-untyped-def]
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_chat_answers_with_usage(client) -> None:  # type: ignore[no-untyped-def]
    response = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=32, temperature=0
    )
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 32
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_equals_non_stream(client) -> None:  # type: ignore[no-untyped-def]
    kwargs = {"model": MODEL, "messages": QUESTION, "max_tokens": 32, "temperature": 0}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_stream_and_not(client) -> None:  # type: ignore[no-untyped-def]
    kwargs = {
        "model": MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 8,
        "temperature": 0,
    }
    whole = client.completions.create(**kwargs)
    assert whole.choices[0].text.strip().startswith("Paris")
    assert whole.usage.completion_tokens == 8
    text = "".join(c.choices[0].text for c in client.completions.create(**kwargs, stream=True))
    assert text == whole.choices[0].text


def test_stop_n_seed_logprobs(client) -> None:  # type: ignore[no-untyped-def]
    base = {"model": MODEL, "messages": QUESTION, "max_tokens": 32, "temperature": 0}
    assert (
        client.chat.completions.create(**base, stop=["Paris"])
        .choices[0]
        .message.content.endswith("is ")
    )
    two = client.chat.completions.create(**{**base, "temperature": 1.0}, n=2, seed=5)
    assert [c.index for c in two.choices] == [0, 1]
    again = client.chat.completions.create(**{**base, "temperature": 1.0}, n=2, seed=5)
    assert [c.message.content for c in again.choices] == [c.message.content for c in two.choices]
    lp = client.chat.completions.create(**base, logprobs=True, top_logprobs=2).choices[0].logprobs
    assert len(lp.content) > 0 and len(lp.content[0].top_logprobs) == 2
    assert lp.content[0].logprob <= 0


def test_errors_have_the_right_status_and_shape(client, server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=QUESTION)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=5)
    assert info.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=100_000)
    assert info.value.body["code"] == "context_length_exceeded"
    assert "8192" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", suffix="!")  # not supported
    huge = {"model": MODEL, "prompt": "x" * (5 * 1024 * 1024)}
    assert httpx.post(f"{server.base_url}/v1/completions", json=huge).status_code == 413


def test_32_concurrent_streams_complete_while_health_answers(client, server) -> None:  # type: ignore[no-untyped-def]
    def one(i: int) -> int:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to ten, attempt {i}."}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks = list(stream)
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content is not None) >= 1
        return chunks[-1].usage.completion_tokens

    health_codes: list[int] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            health_codes.append(httpx.get(f"{server.base_url}/health", timeout=5).status_code)
            time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        counts = list(pool.map(one, range(32)))
    done.set()
    prober.join()
    assert counts == [16] * 32
    assert health_codes and set(health_codes) == {200}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": QUESTION}),
        ("/v1/completions", {"prompt": ["Once upon a time", "In a galaxy far away"]}),
    ],
)
def test_disconnect_mid_stream_frees_blocks(server, path, body) -> None:  # type: ignore[no-untyped-def]
    baseline = server.metric("num_kv_blocks_used")
    payload = {"model": MODEL, **body, "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}{path}", json=payload) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert server.metric("num_kv_blocks_used") > baseline
    deadline = time.monotonic() + 10
    while server.metric("num_kv_blocks_used") > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("num_kv_blocks_used") == baseline
    after = httpx.post(
        f"{server.base_url}{path}", json={**payload, "stream": False, "max_tokens": 4}
    )
    assert after.status_code == 200


def test_disconnect_of_a_non_streaming_request_frees_blocks(server) -> None:  # type: ignore[no-untyped-def]
    baseline = server.metric("num_kv_blocks_used")
    payload = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=payload, timeout=1.5)
    deadline = time.monotonic() + 10
    while server.metric("num_kv_blocks_used") > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("num_kv_blocks_used") == baseline


def test_request_log_has_a_row_per_request_with_timings(client, server) -> None:  # type: ignore[no-untyped-def]
    response = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0
    )
    log = RequestLog(connect(server.database_url))
    deadline = time.monotonic() + 5
    rows: list[dict] = []  # type: ignore[type-arg]
    while time.monotonic() < deadline:
        rows = [r for r in log.recent(limit=200) if r["request_id"] == response.id]
        if rows:
            break
        time.sleep(0.2)
    assert len(rows) == 1
    row = rows[0]
    assert row["status_code"] == 200 and row["model"] == MODEL
    assert row["completion_tokens"] == response.usage.completion_tokens
    assert row["ttft_s"] > 0 and row["total_time_s"] >= row["ttft_s"]
    assert row["queue_time_s"] is not None and "France" in row["prompt"]
    assert row["output"] == response.choices[0].message.content
    errors = log.recent(limit=200, status_code=400)
    assert any("context length" in (r["error"] or "") for r in errors)
    assert any("temperature" in (r["error"] or "") for r in errors)  # refused by validation
    assert log.recent(limit=200, status_code=404)  # unknown model


def test_bench_smoke_against_the_real_server(server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "bench.json"
    bench = Path(sys.executable).parent / "inferline"
    args = ["bench", "--base-url", server.base_url, "--scenario", "smoke", "--concurrency", "1,2"]
    result = subprocess.run(
        [str(bench), *args, "--json", str(out), "--plot", str(tmp_path / "bench.png")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(out.read_text())
    assert [r["label"] for r in document["runs"]] == ["c=1", "c=2"]
    for run in document["runs"]:
        summary = run["summary"]
        assert summary["completed"] == run["scenario"]["num_requests"] and summary["failed"] == 0
        assert summary["mean_prompt_tokens"] == 32 and summary["mean_output_tokens"] == 8
        assert summary["ttft_s"]["p50"] > 0 and summary["output_tokens_per_s"] > 0
    assert (tmp_path / "bench.png").stat().st_size > 1000
