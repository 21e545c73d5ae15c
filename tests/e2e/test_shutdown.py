"""SIGTERM drains: in-flight requests finish, new ones are refused, exit code 0."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import start_server

pytestmark = pytest.mark.e2e


def test_sigterm_lets_in_flight_requests_finish(tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = start_server(tmp_path, "--drain-timeout", "30")
    payload = {
        "model": "smollm2-135m",
        "prompt": "Once upon a time",
        "max_tokens": 120,
        "ignore_eos": True,
    }
    result: dict[str, object] = {}

    def in_flight() -> None:
        response = httpx.post(f"{server.base_url}/v1/completions", json=payload, timeout=60)
        result["status"] = response.status_code
        result["tokens"] = response.json()["usage"]["completion_tokens"]

    worker = threading.Thread(target=in_flight)
    worker.start()
    time.sleep(0.8)  # the request is running
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.TransportError):  # no longer admitting
        httpx.post(f"{server.base_url}/v1/completions", json=payload, timeout=5)
    worker.join(60)
    assert result == {"status": 200, "tokens": 120}
    assert server.process.wait(60) == 0  # one SIGTERM: drained, then a clean exit
