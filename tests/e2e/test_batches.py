"""The Files and Batches API end to end: the real openai SDK, a real server, a SIGKILL."""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e

QUESTIONS = ["What is the capital of France?", "Name a colour.", "Count to three.", "Say hi."]


def chat_line(custom_id: str, content: str, max_tokens: int = 12) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def sdk(server: ServerProcess):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def wait_for(client, batch_id: str, statuses: tuple[str, ...], timeout_s: float = 180):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.3)
    raise AssertionError(f"batch {batch_id} still {batch.status}")


def submit(client, lines: list[Any]):  # type: ignore[no-untyped-def]
    upload = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "test"},
    )


def read_lines(client, file_id: str | None) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


# int8 weights compute each row alone, so a line's greedy answer does not depend on which
# other lines share its batch (the default mixed format switches kernel with batch size).
BATCH_INVARIANT = ("--weight-format", "int8")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    running = start_server(tmp_path_factory.mktemp("batches"), *BATCH_INVARIANT)
    yield running
    stop_server(running)


def test_a_batch_runs_to_completion_with_the_same_answers(server) -> None:  # type: ignore[no-untyped-def]
    client = sdk(server)
    lines = [chat_line(f"q-{i}", q) for i, q in enumerate(QUESTIONS)]
    lines.append(chat_line("too-long", "word " * 9000))  # a 400 for this line only
    batch = submit(client, lines)
    assert batch.status == "validating" and batch.metadata == {"job": "test"}
    done = wait_for(client, batch.id, ("completed", "failed"))
    assert done.status == "completed", done.errors
    assert done.request_counts.total == 5
    assert done.request_counts.completed == 4 and done.request_counts.failed == 1
    assert done.completed_at >= done.in_progress_at >= done.created_at
    assert done.usage.output_tokens > 0 and done.usage.input_tokens > 0
    outputs = {x["custom_id"]: x for x in read_lines(client, done.output_file_id)}
    assert sorted(outputs) == [f"q-{i}" for i in range(4)]
    direct = client.chat.completions.create(**lines[0]["body"])
    body = outputs["q-0"]["response"]["body"]
    assert outputs["q-0"]["response"]["status_code"] == 200
    assert body["choices"][0]["message"]["content"] == direct.choices[0].message.content
    (failed,) = read_lines(client, done.error_file_id)
    assert failed["custom_id"] == "too-long" and failed["error"] is None
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["code"] == "context_length_exceeded"
    assert batch.id in [b.id for b in client.batches.list(limit=100)]
    assert done.output_file_id in [f.id for f in client.files.list(purpose="batch_output")]


def test_invalid_lines_fail_validation_with_their_line_numbers(server) -> None:  # type: ignore[no-untyped-def]
    client = sdk(server)
    wrong_url = {**chat_line("c", "x"), "url": "/v1/completions"}
    lines = [chat_line("a", "x"), b"{not json", chat_line("b", "x"), chat_line("a", "y"), wrong_url]
    done = wait_for(client, submit(client, lines).id, ("failed", "completed"))
    assert done.status == "failed" and done.failed_at is not None
    assert [(e.line, e.code) for e in done.errors.data] == [
        (2, "invalid_json_line"),
        (4, "duplicate_custom_id"),
        (5, "mismatched_endpoint"),
    ]
    assert done.request_counts.total == 0


def test_bad_requests_are_clear_4xx(server) -> None:  # type: ignore[no-untyped-def]
    import openai

    client = sdk(server)
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    upload = client.files.create(
        file=("x.jsonl", io.BytesIO(jsonl([chat_line("a", "x")]))), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(
            input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h"
        )
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(
            input_file_id=upload.id, endpoint="/v1/images", completion_window="24h"
        )
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_cancel_keeps_what_finished_and_accounts_for_every_line(server) -> None:  # type: ignore[no-untyped-def]
    client = sdk(server)
    lines = [chat_line(f"c-{i}", QUESTIONS[i % 4], max_tokens=48) for i in range(60)]
    batch = submit(client, lines)
    wait_for(client, batch.id, ("in_progress",))
    time.sleep(1.0)
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    done = wait_for(client, batch.id, ("cancelled",), timeout_s=30)
    outputs = read_lines(client, done.output_file_id)
    errors = read_lines(client, done.error_file_id)
    ids = [x["custom_id"] for x in outputs + errors]
    assert sorted(ids) == sorted(line["custom_id"] for line in lines)  # each exactly once
    assert any(x["error"] and x["error"]["code"] == "batch_cancelled" for x in errors)
    with pytest.raises(Exception, match="already cancelled"):
        client.batches.cancel(batch.id)


def test_sigkill_mid_job_then_restart_completes_each_line_once(tmp_path: Path) -> None:
    first = start_server(tmp_path, *BATCH_INVARIANT)
    client = sdk(first)
    lines = [chat_line(f"k-{i}", QUESTIONS[i % 4], max_tokens=32) for i in range(40)]
    batch = submit(client, lines)
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    second = start_server(tmp_path, *BATCH_INVARIANT)  # same database and data directory
    try:
        client = sdk(second)
        done = wait_for(client, batch.id, ("completed",))
        outputs = read_lines(client, done.output_file_id)
        assert sorted(x["custom_id"] for x in outputs) == sorted(x["custom_id"] for x in lines)
        assert done.request_counts.completed == 40 and done.request_counts.failed == 0
        assert read_lines(client, done.error_file_id) == []
    finally:
        stop_server(second)
