"""Builds the engine from parsed command-line options."""

from __future__ import annotations

import argparse

from inferline.cli.main import default_cache_dir
from inferline.core.sampling_params import SamplingParams


def build_llm(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """An `LLM` configured from ``args`` (imports the engine, hence torch, lazily)."""
    from inferline.engine import LLM, CacheConfig, EngineConfig

    config = EngineConfig(
        model=args.model,
        cache_dir=default_cache_dir(),
        device=args.device,
        weight_format=args.weight_format,
        max_model_len=args.max_model_len,
        cache=CacheConfig(kv_cache_gib=args.kv_cache_gib),
    )
    return LLM(config=config)


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
