"""Two real inferline servers as the upstreams of a third (the gateway): one is killed with
SIGKILL under load; every non-streaming request still succeeds, its breaker opens, and
traffic returns to it after a restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import ServerProcess, free_port, start_server, stop_server
from tests.waiting import eventually

pytestmark = pytest.mark.e2e
UPSTREAM_ARGS = ("--weight-format", "int8", "--max-num-seqs", "8")


def config(port_a: int, port_b: int) -> str:
    entries = "".join(
        f"""
  - name: {name}
    kind: openai
    base_url: http://127.0.0.1:{port}/v1
    model: smollm2-135m
    can_continue: true
    timeouts: {{connect_s: 1, first_token_s: 20, idle_s: 10, total_s: 60}}
    breaker: {{failures: 2, window_s: 30, cooldown_s: 2}}"""
        for name, port in (("a", port_a), ("b", port_b))
    )
    return f"""models:{entries}
routes:
  - name: pool
    strategy: fallback
    targets: [a, b]
    retry: {{attempts: 1}}
    deadline_s: 60
"""


class Load:
    """Clients sending non-streaming requests back to back; records every outcome."""

    def __init__(self, base_url: str, num_clients: int) -> None:
        self.base_url = base_url
        self.results: list[tuple[float, int, str, str]] = []  # (time, status, model, error)
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(num_clients)]

    def _run(self) -> None:
        client = openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="x", max_retries=0)
        while not self.stopping.is_set():
            try:
                reply = client.chat.completions.create(
                    model="pool",
                    messages=[{"role": "user", "content": "Name a color."}],
                    max_tokens=12,
                    temperature=0,
                )
                self.results.append((time.monotonic(), 200, reply.model, ""))
            except openai.APIError as error:
                status = getattr(error, "status_code", 0) or 0
                self.results.append((time.monotonic(), status, "", str(error)[:200]))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def breaker_of(gateway: ServerProcess, target: str) -> str:
    (route,) = httpx.get(f"{gateway.base_url}/v1/routes").json()["data"]
    return next(t["breaker"] for t in route["targets"] if t["name"] == target)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port_a = free_port()
    a = start_server(tmp_path / "a", *UPSTREAM_ARGS, port=port_a)
    b = start_server(tmp_path / "b", *UPSTREAM_ARGS)
    port_b = int(b.base_url.rsplit(":", 1)[1])
    path = tmp_path / "gateway.yaml"
    path.write_text(config(port_a, port_b))
    gateway = start_server(tmp_path / "gateway", "--config", str(path))
    running = {"a": a, "b": b, "gateway": gateway, "port_a": port_a, "tmp": tmp_path}
    yield running
    for name in ("gateway", "a", "b"):
        server = running[name]
        if server.process.poll() is None:
            stop_server(server)


def test_a_killed_upstream_loses_no_request_and_gets_traffic_back(servers) -> None:
    gateway = servers["gateway"]
    with Load(gateway.base_url, num_clients=6) as load:
        assert eventually(lambda: len(load.results) >= 6, bool, 60)
        servers["a"].process.kill()  # SIGKILL: requests in flight on it are cut
        killed_at = time.monotonic()
        assert eventually(lambda: breaker_of(gateway, "a") == "open", bool, 30)
        assert eventually(lambda: sum(r[0] > killed_at + 1 for r in load.results) >= 6, bool, 60)
        servers["a"] = start_server(servers["tmp"] / "a2", *UPSTREAM_ARGS, port=servers["port_a"])
        restarted_at = time.monotonic()
        back = eventually(
            lambda: any(r[0] > restarted_at and r[2] == "a" for r in load.results), bool, 60
        )
    failures = [r for r in load.results if r[1] != 200]
    assert not failures, failures[:5]
    after_kill = [r for r in load.results if killed_at < r[0] < restarted_at]
    assert after_kill and all(r[2] == "b" for r in after_kill if r[0] > killed_at + 1)
    assert back, "traffic did not return to the restarted upstream"
    assert breaker_of(gateway, "a") == "closed"
