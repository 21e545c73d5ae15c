"""A hung or crashed model runner, seen through HTTP: /health fails, requests get 503."""

from __future__ import annotations

import concurrent.futures

import pytest
from fastapi.testclient import TestClient

from inferline.engine import AsyncEngine, FrontendConfig
from inferline.server import ServerConfig, create_app
from tests.engine.fakes import SabotagedRunner

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("mode", ["hang", "crash"])
def test_failure_fails_health_and_every_waiting_request(make_engine, mode) -> None:  # type: ignore[no-untyped-def]
    llm_engine = make_engine()
    sabotage = SabotagedRunner(llm_engine.runner, mode)
    llm_engine.runner = sabotage
    generator = AsyncEngine(llm_engine, FrontendConfig(stall_timeout_s=1.0))
    app = create_app(generator, ServerConfig())
    # ignore_eos: no request may finish (a sampled EOS) within the two good steps
    payload = {
        "model": "smollm2-135m",
        "prompt": "Hello there",
        "max_tokens": 50,
        "ignore_eos": True,
    }
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            responses = list(
                pool.map(lambda _: client.post("/v1/completions", json=payload), range(4))
            )
        assert [r.status_code for r in responses] == [503] * 4
        assert all(r.json()["error"]["code"] == "engine_dead" for r in responses)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unhealthy"
        assert client.post("/v1/completions", json=payload).status_code == 503
        sabotage.release.set()
