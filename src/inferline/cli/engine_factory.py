"""Builds the engine from parsed command-line options."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferline.cli.main import default_cache_dir
from inferline.core.sampling_params import SamplingParams

if TYPE_CHECKING:
    from inferline.engine import EngineConfig


def engine_config(args: argparse.Namespace, cache_dir: Path, **overrides: Any) -> EngineConfig:
    """The `EngineConfig` the shared engine options describe (imports the engine lazily)."""
    from inferline.engine import CacheConfig, EngineConfig, SpeculativeConfig

    speculative = SpeculativeConfig(
        method=getattr(args, "speculative", "ngram"),
        num_tokens=getattr(args, "num_speculative_tokens", 4),
    )
    return EngineConfig(
        model=args.model,
        cache_dir=cache_dir,
        device=args.device,
        weight_format=args.weight_format,
        kernels=args.kernels,
        generation_config=getattr(args, "generation_config", "auto"),
        max_model_len=args.max_model_len,
        cache=CacheConfig(kv_cache_gib=args.kv_cache_gib, kv_cache_dtype=args.kv_cache_dtype),
        speculative=speculative,
        **overrides,
    )


def build_llm(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """An `LLM` configured from ``args`` (imports the engine, hence torch, lazily)."""
    from inferline.engine import LLM

    return LLM(config=engine_config(args, default_cache_dir()))


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """SamplingParams from the sampling options."""
    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=tuple(args.stop),
    )
