"""The same engine code on CUDA (runs only where a GPU is present)."""

from __future__ import annotations

import pytest

from inferline.core import SamplingParams
from inferline.engine import CacheConfig, EngineConfig, LLMEngine
from tests.conftest import run_to_completion

pytestmark = pytest.mark.gpu


def test_cuda_greedy_matches_cpu(make_engine, cache_dir) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    prompts = ["The capital of France is", "def fibonacci(n):"]
    cpu = run_to_completion(make_engine(), prompts, params)
    config = EngineConfig(
        device="cuda", cache_dir=cache_dir, cache=CacheConfig(kv_cache_tokens=8192)
    )
    gpu = run_to_completion(LLMEngine(config), prompts, params)
    assert [o.outputs[0].token_ids for o in gpu] == [o.outputs[0].token_ids for o in cpu]
