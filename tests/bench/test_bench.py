"""The load generator and its statistics, against the in-process HTTP app."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from inferline.bench import SCENARIOS, SLO, LoadGenerator, RequestResult, Scenario, summarize
from inferline.bench.metrics import distribution
from inferline.models import Tokenizer, resolve_model_path
from inferline.models.gguf_file import _read_tokenizer
from inferline.models.gguf_header import read_gguf_header
from inferline.server import ServerConfig, create_app
from tests.server.fakes import EchoGenerator


@pytest.mark.parametrize("model", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_prompts_have_the_exact_token_length(model, cache_dir) -> None:  # type: ignore[no-untyped-def]
    header = read_gguf_header(resolve_model_path(model, cache_dir))
    tokenizer = Tokenizer.from_gguf(_read_tokenizer(header))
    for name in ("a", "c"):
        scenario = SCENARIOS.get(name)
        prompts = scenario.prompts(seed=3)
        assert len(prompts) == scenario.num_requests
        assert {len(tokenizer.encode(p)) for p in prompts[:5]} == {scenario.input_tokens}
    c = SCENARIOS.get("c").prompts()
    assert c[0][: 1024 * 3] == c[1][: 1024 * 3] and c[0] != c[1]  # shared head, distinct tails


def test_scenario_validation() -> None:
    with pytest.raises(ValueError):
        Scenario("x", 10, 5, 2, concurrency=None, rate=None)
    with pytest.raises(ValueError):
        Scenario("x", 10, 5, 2, shared_prefix_tokens=10)


def test_distribution_uses_nearest_rank() -> None:
    dist = distribution([float(i) for i in range(1, 101)])
    assert dist == {"mean": 50.5, "p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert distribution([]) is None


def test_summary_counts_goodput_against_the_slo() -> None:
    fast = RequestResult(True, 0.0, ttft_s=0.1, e2e_s=1.0, output_tokens=10, prompt_tokens=5)
    slow = RequestResult(True, 0.0, ttft_s=3.0, e2e_s=4.0, output_tokens=10, prompt_tokens=5)
    failed = RequestResult(False, 0.0, error="HTTP 503: busy")
    summary = summarize([fast, slow, failed], wall_s=2.0, slo=SLO(ttft_s=2.0, tpot_s=0.2))
    assert summary["completed"] == 2 and summary["failed"] == 1
    assert summary["goodput_requests_per_s"] == 0.5
    assert summary["output_tokens_per_s"] == 10.0
    assert summary["errors"] == ["HTTP 503: busy"]


@pytest.mark.parametrize("load", [{"concurrency": 3}, {"concurrency": None, "rate": 50.0}])
def test_load_generator_against_the_app(load) -> None:  # type: ignore[no-untyped-def]
    app = create_app(EchoGenerator(max_model_len=4096), ServerConfig())
    scenario = dataclasses.replace(SCENARIOS.get("smoke"), num_requests=7, **load)
    generator = LoadGenerator("http://test", "echo", transport=httpx.ASGITransport(app=app))
    done: list[RequestResult] = []
    results = asyncio.run(generator.run(scenario, done.append))
    assert len(results) == len(done) == 7
    assert all(r.ok and r.output_tokens == 8 and r.prompt_tokens == 32 for r in results)
    assert all(r.ttft_s is not None and r.e2e_s >= r.ttft_s for r in results)  # type: ignore[operator]


def test_failures_are_counted_not_raised() -> None:
    app = create_app(EchoGenerator(), ServerConfig())
    generator = LoadGenerator("http://test", "wrong-model", transport=httpx.ASGITransport(app=app))
    results = asyncio.run(generator.run(SCENARIOS.get("smoke"), lambda _: None))
    assert not any(r.ok for r in results)
    assert all(r.error and r.error.startswith("HTTP 404") for r in results)
