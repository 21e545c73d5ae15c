"""Engine configuration: validation and the defaults that depend on other settings."""

from __future__ import annotations

import pytest
import torch

from inferline.core.errors import InvalidParameterError
from inferline.engine import CacheConfig
from inferline.models.config import ModelConfig


def test_kv_cache_dtype_follows_the_weights_unless_set() -> None:
    assert CacheConfig().resolve_dtype("fp32") == "float32"
    assert CacheConfig().resolve_dtype("fp32", native=True) == "float32"
    for weight_format in ("int4", "int8", "mixed"):
        assert CacheConfig().resolve_dtype(weight_format) == "bfloat16"  # torch path, CUDA
        assert CacheConfig().resolve_dtype(weight_format, native=True) == "int8"
    assert CacheConfig(kv_cache_dtype="float32").resolve_dtype("mixed", native=True) == "float32"
    assert CacheConfig(kv_cache_dtype="bfloat16").resolve_dtype("mixed", native=True) == "bfloat16"


def test_unknown_kv_cache_dtype_names_the_field() -> None:
    with pytest.raises(InvalidParameterError) as error:
        CacheConfig(kv_cache_dtype="fp8")
    assert error.value.param == "kv_cache_dtype"


def test_a_bf16_cache_holds_twice_the_tokens(smollm) -> None:  # type: ignore[no-untyped-def]
    config: ModelConfig = smollm.config
    cache = CacheConfig(kv_cache_gib=0.25)
    fp32_blocks = cache.num_blocks(config.kv_bytes_per_token(torch.float32))
    assert cache.num_blocks(config.kv_bytes_per_token(torch.bfloat16)) in (
        2 * fp32_blocks,
        2 * fp32_blocks + 1,
    )
    # int8 rows carry a 4-byte scale each: 68 bytes per 64 values against bf16's 128
    int8_tokens = cache.num_blocks(config.kv_bytes_per_token(torch.int8))
    assert int8_tokens == pytest.approx(4 * fp32_blocks * 64 / 68, abs=1)


def test_the_pool_holds_no_more_than_the_sequences_can_fill() -> None:
    cache = CacheConfig(kv_cache_tokens=100_000, block_size=16)
    assert cache.num_blocks(1000) == 6250  # the budget alone
    # 4 sequences of 100 tokens: 7 blocks each, and one more for a forked sibling's copy
    assert cache.num_blocks(1000, max_num_seqs=4, max_model_len=100) == 4 * 8
    assert cache.num_blocks(1000, max_num_seqs=64, max_model_len=8192) == 6250
