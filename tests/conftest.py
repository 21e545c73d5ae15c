"""Shared fixtures: the real default model (loaded once), engines on small caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.redis_server import redis_url  # noqa: F401  (a real redis-server, when asked)

CACHE_DIR = Path(os.environ.get("INFERLINE_HOME") or Path.home() / ".cache" / "inferline")


def host_summary() -> str:
    """The CPU, its cores, the vector extensions the kernels choose by, and the load (a CI
    log's timings read differently on another CPU kind or a busy machine)."""
    from inferline.bench.host import cpu_description

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    flags = next(
        (set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set()
    )
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
    extensions = " ".join(f for f in wanted if f in flags) or "none of " + " ".join(wanted)
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{cpu_description()}, {extensions}; load average {load}"


def pytest_report_header(config: pytest.Config) -> str:
    """The host, at the start of the run."""
    return "host: " + host_summary()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The host again at the end (a CI log's tail shows it beside the durations)."""
    terminalreporter.write_line("host: " + host_summary())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests are skipped on machines without CUDA."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio, what the server runs on (trio, which selenium brings in,
    would be tried too otherwise)."""
    return "asyncio"


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """Where assembled model files live (shared with the CLI's default)."""
    return CACHE_DIR


@pytest.fixture(scope="session")
def smollm(cache_dir: Path):  # type: ignore[no-untyped-def]
    """SmolLM2-135M-Instruct loaded by our own loader, once per session."""
    from inferline.models import load_model

    return load_model("smollm2-135m", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def make_engine(smollm, cache_dir: Path):  # type: ignore[no-untyped-def]
    """Builds an `LLMEngine` on the shared SmolLM2 weights with the given settings."""
    from inferline.engine import (
        CacheConfig,
        EngineConfig,
        LLMEngine,
        SchedulerConfig,
        SpeculativeConfig,
    )

    def make(
        *,
        kv_cache_tokens: int = 16384,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int = 512,
        max_num_seqs: int = 64,
        max_model_len: int | None = None,
        speculative: str = "ngram",
        kv_cache_dtype: str = "auto",
    ) -> LLMEngine:
        config = EngineConfig(
            model="smollm2-135m",
            cache_dir=cache_dir,
            weight_format="fp32",  # the reference numerics; int4 has its own tests
            max_model_len=max_model_len,
            cache=CacheConfig(
                block_size=block_size,
                kv_cache_tokens=kv_cache_tokens,
                enable_prefix_caching=enable_prefix_caching,
                kv_cache_dtype=kv_cache_dtype,
            ),
            scheduler=SchedulerConfig(
                max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs
            ),
            speculative=SpeculativeConfig(method=speculative),
        )
        return LLMEngine(config, loaded=smollm)

    return make


def run_to_completion(engine, prompts, params):  # type: ignore[no-untyped-def]
    """Adds ``prompts`` to ``engine``, steps until done, returns outputs in order."""
    return run_each(engine, [(p, params) for p in prompts])


def run_each(engine, requests):  # type: ignore[no-untyped-def]
    """Adds each ``(prompt, params)``, steps until all are done, returns outputs in order."""
    ids = [engine.add_request(prompt, params) for prompt, params in requests]
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    return [finished[i] for i in ids]


# Prompts for native-vs-torch parity: a short prompt, code, and one long enough for
# several prefill chunks beside the others' decodes.
PARITY_PROMPTS = ["The capital of France is", "def add(a, b):", "Once upon a time " * 30]


def on_torch_path(loaded, run):  # type: ignore[no-untyped-def]
    """``run()`` with ``loaded``'s model on its torch ops (native kernels off), restored after."""
    kernels, loaded.model.native = loaded.model.native, None
    try:
        return run()
    finally:
        loaded.model.native = kernels
