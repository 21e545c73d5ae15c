"""Reloading a gateway's config in place: POST /admin/reload and SIGHUP; a bad file is
refused and the old config stays; a new local model loads before traffic moves to it; a
dropped one finishes what it is doing before it stops."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle
from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e


def upstream_entry(name: str, api_base: str) -> str:
    return f"""
  - name: {name}
    kind: openai
    base_url: {api_base}
    model: {name}"""


LOCAL = """
  - name: local
    kind: llm
    source: smollm2-135m
    weight_format: int8"""


def write(path: Path, models: str, routes: str) -> None:
    path.write_text(f"models:{models}\nroutes:{routes}\n")


def route(name: str, targets: str) -> str:
    return f"\n  - {{name: {name}, targets: [{targets}]}}"


@pytest.fixture(scope="module")
def setup(upstream: FakeUpstreamHandle, tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    directory = Path(tmp_path_factory.mktemp("reload"))
    path = directory / "gateway.yaml"
    write(path, upstream_entry("one", upstream.api_base), route("bot", "one"))
    # a dropped model may take this long to finish what it is doing (a busy CI machine)
    server = start_server(directory, "--config", str(path), "--drain-timeout", "300")
    yield {"server": server, "path": path, "api": upstream.api_base}
    stop_server(server)


def answered_by(server: ServerProcess, model: str) -> str:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    return reply.model


def names(server: ServerProcess) -> set[str]:
    return {m["id"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}


def test_reload_by_request_then_a_bad_file_is_refused(setup: dict[str, Any]) -> None:
    server, path, api = setup["server"], setup["path"], setup["api"]
    assert answered_by(server, "bot") == "one"
    models = upstream_entry("one", api) + upstream_entry("two", api)
    write(path, models, route("bot", "two, one") + route("extra", "two"))
    response = httpx.post(f"{server.base_url}/admin/reload", timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["loaded"] == ["two"] and response.json()["kept"] == ["one"]
    assert answered_by(server, "bot") == "two" and answered_by(server, "extra") == "two"
    write(path, models, route("bot", "two, parnter"))
    refused = httpx.post(f"{server.base_url}/admin/reload", timeout=60)
    assert refused.status_code == 400
    assert "routes[0].targets[1]: unknown model 'parnter'" in refused.json()["error"]["message"]
    assert answered_by(server, "extra") == "two"  # the old config stays


def test_sighup_loads_a_local_model_then_drains_it_when_dropped(setup: dict[str, Any]) -> None:
    server, path, api = setup["server"], setup["path"], setup["api"]
    write(path, upstream_entry("one", api) + LOCAL, route("bot", "one") + route("chat", "local"))
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 120
    while "chat" not in names(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {"chat", "local", "bot", "one"} <= names(server) and "two" not in names(server)
    assert answered_by(server, "chat") == "local"
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=80,
        extra_body={"ignore_eos": True},
        stream=True,
    )
    chunks: list[Any] = [next(iter(stream))]
    errors: list[Exception] = []

    def read() -> None:
        try:
            chunks.extend(stream)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    write(path, upstream_entry("one", api), route("bot", "one"))
    server.process.send_signal(signal.SIGHUP)  # drops the local model mid-stream
    reader.join(120)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert not errors and finish == ["length"], errors  # the stream in flight finished whole
    deadline = time.monotonic() + 30
    while "local" in names(server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "local" not in names(server) and answered_by(server, "bot") == "one"
