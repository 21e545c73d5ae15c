"""Prefill attention over the paged cache: the C kernels (float32; AMX bf16 tiles; VNNI
int16 products over an int8 cache) against causal SDPA and float64."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from inferline.models.kv_layout import read_rows
from inferline.models.native import NativeKernels
from tests.models.test_native import CACHE_DTYPES, SHAPES, random_cache


def causal_reference(
    q: torch.Tensor,
    cache: torch.Tensor,
    chunks: torch.Tensor,
    tables: torch.Tensor,
    block_size: int,
    dtype: torch.dtype = torch.float32,
) -> dict[int, torch.Tensor]:
    """SDPA of each prefill chunk over its paged context, in ``dtype``, by first row."""
    expected = {}
    for (row, start, count), table in zip(chunks.tolist(), tables, strict=True):
        positions = torch.arange(start + count)
        slots = table.long()[positions // block_size] * block_size + positions % block_size
        k, v = (read_rows(cache[i], slots, torch.float32).transpose(0, 1).to(dtype) for i in (0, 1))
        rows = q[row : row + count].transpose(0, 1).to(dtype)  # [heads, count, D]
        mask = positions[None, :] <= (start + torch.arange(count))[:, None]
        out = F.scaled_dot_product_attention(rows, k, v, attn_mask=mask, enable_gqa=True)
        expected[row] = out.transpose(0, 1).reshape(count, -1)
    return expected


def sharp_prefill_case(
    shape: tuple[int, int, int, int], cache_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(queries x 4: sharp softmaxes, a random cache, chunks with long contexts and partial
    row blocks and runs, their block tables)."""
    heads, kv_heads, head_dim, block_size = shape
    gen = torch.Generator().manual_seed(7)
    cache = random_cache(64 * block_size, kv_heads, head_dim, cache_dtype, gen)
    chunks = torch.tensor([[0, 0, 300], [300, 700, 45], [345, 31, 33]])
    tables = torch.stack([torch.randperm(64, generator=gen)[:48] for _ in range(3)]).int()
    q = torch.randn(378, heads, head_dim, generator=gen) * 4
    return q, cache, chunks, tables


def prefill_both_ways(kernels, switch, q, cache, chunks, tables, block_size):  # type: ignore[no-untyped-def]
    """prefill_attention's outputs with ``switch(True)`` (a kernel on), then off; asserts
    the two paths ran (their outputs differ)."""
    outs = []
    for on in (True, False):
        assert switch(on) == on
        outs.append(torch.zeros(q.shape[0], q.shape[1] * q.shape[2]))
        assert kernels.prefill_attention(q, cache, chunks, tables, block_size, outs[-1])
    assert not torch.equal(outs[0], outs[1])
    return outs


def amx_tolerance(
    cache: tuple[torch.Tensor, torch.Tensor], head_dim: int, otherwise: float
) -> float:
    """How far AMX prefill attention may be from float64: head_dim 64 rounds each softmax
    weight to bf16 (relative error <= 2^-8) and takes a degree-3 exp2 (< 8e-5), so an output
    moves by at most (2^-8 + 2e-4) of the largest value (~8e-3 with the sharp softmaxes
    below; an int8 cache's own rounding moves them by 0.04-0.11, test_decode_attention_int8);
    other head sizes ``otherwise``."""
    if head_dim != 64:
        return otherwise
    values = read_rows(cache[1], torch.arange(cache[1].shape[0]), torch.float32)
    return (2**-8 + 2e-4) * float(values.abs().max())


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8])
@pytest.mark.parametrize("shape", [(9, 3, 64, 16), (14, 2, 64, 16), (8, 2, 128, 32)])
def test_amx_prefill_attention_keeps_float32_accuracy(
    kernels: NativeKernels, shape: tuple[int, int, int, int], cache_dtype: torch.dtype
) -> None:
    """AMX bf16 tiles with queries split into two bf16 parts (plain bf16 queries miss by
    ~1e-2): long contexts, runs of 32 keys across blocks, partial row blocks and runs, sharp
    softmaxes. An int8 cache's integers enter the tiles exactly, their row scales apply to
    scores and weights in float32. head_dim 128 splits the weights too: within 1e-4 of
    float64. head_dim 64 rounds each weight to bf16: `amx_tolerance`."""
    heads, kv_heads, head_dim, block_size = shape
    default = kernels.amx_attention
    if not kernels.amx_attention_on(True):
        pytest.skip("no AMX bf16 on this CPU, build or OS")
    q, cache, chunks, tables = sharp_prefill_case(shape, cache_dtype)
    try:
        amx, float32 = prefill_both_ways(
            kernels, kernels.amx_attention_on, q, cache, chunks, tables, block_size
        )
    finally:
        kernels.amx_attention_on(default)
    expected = torch.cat(
        list(causal_reference(q, cache, chunks, tables, block_size, torch.float64).values())
    )
    tolerance = amx_tolerance(cache, head_dim, 1e-4)
    torch.testing.assert_close(amx.double(), expected, rtol=0, atol=tolerance)
    assert (amx.double() - expected).abs().mean() < tolerance / 8  # rounding, not a bias


def i16_tolerance(cache: tuple[torch.Tensor, torch.Tensor]) -> float:
    """How far the VNNI prefill attention may be from float64 over the same int8 cache:
    queries rounded to int8 a row (half a step: 2^-8 of its largest |q|) move the sharp
    softmaxes below by up to ~3 % a weight, weights rounded to bytes (2^-9 of the row's
    largest in a run) add less: measured at most 2.5e-2 of the largest value (1.2e-3 on
    average). The int8 cache's own rounding moves outputs by 0.04-0.11
    (test_decode_attention_int8); llama.cpp's q8_0 cache takes q8_0 queries the same way."""
    values = read_rows(cache[1], torch.arange(cache[1].shape[0]), torch.float32)
    return 4e-2 * float(values.abs().max())


@pytest.mark.parametrize("shape", [(9, 3, 64, 16), (14, 2, 64, 16), (8, 2, 128, 32)])
def test_i16_prefill_attention_over_an_int8_cache_keeps_its_accuracy(
    kernels: NativeKernels, shape: tuple[int, int, int, int]
) -> None:
    """VNNI byte products (queries rounded to int8, softmax weights to bytes; keys and
    values the cache's int8 integers): long contexts, runs of 32 keys across blocks, partial row
    blocks and runs, odd run lengths, sharp softmaxes; within `i16_tolerance` of float64,
    errors without a bias. Where AMX runs prefill attention it is not used."""
    block_size = shape[3]
    default = kernels.i16_attention, kernels.amx_attention
    kernels.amx_attention_on(False)
    if not kernels.i16_attention_on(True):
        kernels.amx_attention_on(default[1])
        pytest.skip("no AVX-512 VNNI in this build")
    q, cache, chunks, tables = sharp_prefill_case(shape, torch.int8)
    try:
        i16, float32 = prefill_both_ways(
            kernels, kernels.i16_attention_on, q, cache, chunks, tables, block_size
        )
    finally:
        kernels.i16_attention_on(default[0]), kernels.amx_attention_on(default[1])
    expected = torch.cat(
        list(causal_reference(q, cache, chunks, tables, block_size, torch.float64).values())
    )
    tolerance = i16_tolerance(cache)
    error = i16.double() - expected
    torch.testing.assert_close(i16.double(), expected, rtol=0, atol=tolerance)
    assert error.abs().mean() < tolerance / 16  # a few outliers, not a spread
    assert abs(error.mean()) < tolerance / 1000  # rounding, not a bias
    torch.testing.assert_close(float32.double(), expected, rtol=0, atol=1e-4)


def test_i16_prefill_attention_of_a_row_does_not_depend_on_its_task(
    kernels: NativeKernels,
) -> None:
    """A row's int16 weights are scaled by its own largest (not by keys it does not see):
    each row of a chunk alone (a chunk of one row, as the layer stack's wanted rows) gives
    the bits it gets among its chunk's 16-row tasks."""
    default = kernels.i16_attention, kernels.amx_attention
    kernels.amx_attention_on(False)
    if not kernels.i16_attention_on(True):
        kernels.amx_attention_on(default[1])
        pytest.skip("no AVX-512 VNNI in this build")
    gen = torch.Generator().manual_seed(8)
    cache = random_cache(48 * 16, 3, 64, torch.int8, gen)
    tables = torch.randperm(48, generator=gen)[None, :40].int().contiguous()
    q = torch.randn(70, 9, 64, generator=gen) * 4
    try:
        whole = torch.zeros(70, 9 * 64)
        assert kernels.prefill_attention(q, cache, torch.tensor([[0, 100, 70]]), tables, 16, whole)
        for row in (0, 13, 31, 47, 69):
            alone = torch.zeros(70, 9 * 64)
            chunk = torch.tensor([[row, 100 + row, 1]])
            assert kernels.prefill_attention(q, cache, chunk, tables, 16, alone)
            assert torch.equal(alone[row], whole[row])
    finally:
        kernels.i16_attention_on(default[0]), kernels.amx_attention_on(default[1])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
def test_prefill_attention_matches_causal_sdpa(
    kernels: NativeKernels, cache_dtype: torch.dtype, shape: tuple[int, int, int, int]
) -> None:
    """Chunks from position 0 and after earlier context, partial row blocks, gaps."""
    heads, kv_heads, head_dim, block_size = shape
    gen = torch.Generator().manual_seed(6)
    cache = random_cache(48 * block_size, kv_heads, head_dim, cache_dtype, gen)
    chunks = torch.tensor([[0, 0, 37], [40, 150, 60], [100, 5, 16]])  # row, position, count
    tables = torch.stack([torch.randperm(48, generator=gen)[:16] for _ in range(3)]).int()
    q = torch.randn(120, heads, head_dim, generator=gen)
    out = torch.full((120, heads * head_dim), -7.0)
    handled = kernels.prefill_attention(q, cache, chunks, tables, block_size, out)
    assert kernels.handles_prefill(heads, kv_heads, head_dim) == handled
    if head_dim not in (64, 128) or "avx512f" not in Path("/proc/cpuinfo").read_text():
        assert not handled and (out == -7.0).all()  # the caller runs SDPA instead
        return
    assert handled
    expected = causal_reference(q, cache, chunks, tables, block_size)
    amx = kernels.amx_attention and cache_dtype != torch.float32
    tolerance = amx_tolerance(cache, head_dim, 1e-5) if amx else 1e-5
    if kernels.i16_attention and cache_dtype == torch.int8 and not amx:
        tolerance = i16_tolerance(cache)
    for row, count in chunks[:, [0, 2]].tolist():
        torch.testing.assert_close(out[row : row + count], expected[row], rtol=1e-5, atol=tolerance)
    assert (out[37:40] == -7.0).all() and (out[116:] == -7.0).all()
