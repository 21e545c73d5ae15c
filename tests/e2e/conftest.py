"""A real `inferline serve` process on the real model, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from inferline.bench.fake_upstream import FakeUpstreamHandle, start_fake_upstream

BIN = Path(sys.executable).parent / "inferline"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamHandle]:
    """Our fault-injecting OpenAI upstream in its own process, one per test module."""
    handle = start_fake_upstream(port=0, mode="process")
    yield handle
    handle.stop()


@dataclass
class ServerProcess:
    """A running server: its URL, process and request-log database."""

    base_url: str
    process: subprocess.Popen[bytes]
    database_url: str
    log_path: Path

    def metric(self, name: str) -> float:
        """The value of an unlabelled-by-route inferline metric (first sample)."""
        for line in httpx.get(f"{self.base_url}/metrics").text.splitlines():
            if line.startswith((f"inferline:{name}{{", f"inferline:{name} ")):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    tmp_path: Path,
    *extra: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 120,
) -> ServerProcess:
    """Starts `inferline serve` (on ``port``, default a free one); waits until /ready is 200
    (at most ``ready_timeout_s``)."""
    port = port or free_port()
    tmp_path.mkdir(parents=True, exist_ok=True)
    database_url = f"sqlite:///{tmp_path / 'requests.db'}"
    log_path = tmp_path / f"server-{port}-{time.monotonic_ns()}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port), "--database-url", database_url, *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "INFERLINE_API_KEY": "", **(env or {})},
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=1).status_code == 200:
                return ServerProcess(base_url, process, database_url, log_path)
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not become ready")


def stop_server(server: ServerProcess, timeout_s: float = 60) -> int:
    """SIGTERM, then wait; returns the exit code."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        return server.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        server.process.kill()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture
def client(server):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def qwen_server(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    """A server on Qwen2.5-Coder-0.5B (its template renders tools), shared by the session."""
    running = start_server(tmp_path_factory.mktemp("qwen"), "--model", "qwen2.5-coder-0.5b")
    yield running
    stop_server(running)


@pytest.fixture
def qwen(qwen_server):  # type: ignore[no-untyped-def]
    """An openai client of the Qwen server."""
    from openai import OpenAI

    with OpenAI(base_url=f"{qwen_server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c
