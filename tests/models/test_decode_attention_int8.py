"""Decode attention over an int8 cache on AMX int8 tiles (`decode_attention_amx.c`) and on
VNNI int16 products (`decode_attention_i16.c`) against float64 attention over the dequantized
cache, and against the float32 AVX-512 kernel they stand in for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from inferline.models.kv_layout import cache_of, read_rows
from inferline.models.native import NativeKernels

# SmolLM2 (3 heads a kv head), Qwen2.5-0.5B (7), head_dim 128, and 16 heads a kv head (more
# than a tile's 8: the AVX-512 kernel's)
SHAPES = [(9, 3, 64, 16), (14, 2, 64, 16), (8, 2, 128, 32), (16, 1, 64, 16)]
# one key, part of a tile, a whole span, a span and one key, several spans, one block short
CONTEXTS = [1, 9, 64, 65, 300, 128 + 15]


@pytest.fixture
def amx(kernels: NativeKernels) -> Iterator[NativeKernels]:
    """The kernels with AMX decode attention on (skips where the CPU has none); the
    setting restored after."""
    default = kernels.amx_decode
    if not kernels.amx_decode_on(True):
        pytest.skip("no AMX int8 on this CPU, build or OS")
    yield kernels
    kernels.amx_decode_on(default)


def attend(kernels: NativeKernels, on: bool, q, cache, tables, lens, block_size) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """decode_attention with AMX on or off: every sequence's query in row s."""
    assert kernels.amx_decode_on(on) == on
    out = torch.zeros(q.shape[0], q.shape[1] * q.shape[2])
    kernels.decode_attention(q, cache, tables, lens, torch.arange(q.shape[0]), block_size, out)
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_amx_decode_attention_keeps_float32_accuracy(
    amx: NativeKernels, shape: tuple[int, int, int, int]
) -> None:
    """Queries and weights split into an int8 high part and remainder (~2^-16 of their
    row's largest value) stay within 5e-4 of float64 over the cache's own (dequantized)
    rows with sharp softmaxes (queries x 4: up to 2.3e-4 measured; the int8 rows' own
    rounding moves them by 0.04-0.11); the AVX-512 kernel's float32 within 1e-5.
    Layouts with more than 8 heads a kv head take the AVX-512 kernel: the same bits."""
    heads, kv_heads, head_dim, block_size = shape
    gen = torch.Generator().manual_seed(11)
    cache = cache_of(torch.randn(2, 64 * block_size, kv_heads, head_dim, generator=gen), torch.int8)
    lens = torch.tensor(CONTEXTS, dtype=torch.int32)
    tables = torch.stack([torch.randperm(64, generator=gen)[:20] for _ in CONTEXTS]).int()
    q = torch.randn(len(CONTEXTS), heads, head_dim, generator=gen) * 4
    on, off = (attend(amx, flag, q, cache, tables, lens, block_size) for flag in (True, False))
    if heads // kv_heads > 8:
        assert torch.equal(on, off)
        return
    assert not torch.equal(on, off)  # the two kernels ran
    for s, n in enumerate(CONTEXTS):
        positions = torch.arange(n)
        slots = tables[s].long()[positions // block_size] * block_size + positions % block_size
        k, v = (read_rows(cache[i], slots, torch.float32).transpose(0, 1).double() for i in (0, 1))
        expected = F.scaled_dot_product_attention(
            q[s].double().unsqueeze(1), k, v, enable_gqa=True
        ).reshape(-1)
        torch.testing.assert_close(on[s].double(), expected, rtol=0, atol=5e-4)
        torch.testing.assert_close(off[s].double(), expected, rtol=0, atol=1e-5)


def test_amx_decode_attention_of_a_sequence_does_not_depend_on_the_batch(
    amx: NativeKernels,
) -> None:
    """A sequence's spans and their quantized queries and weights are its own."""
    gen = torch.Generator().manual_seed(12)
    cache = cache_of(torch.randn(2, 64 * 16, 3, 64, generator=gen), torch.int8)
    lens = torch.tensor([700, 5, 300, 64], dtype=torch.int32)
    tables = torch.stack([torch.randperm(64, generator=gen)[:44] for _ in range(4)]).int()
    q = torch.randn(4, 9, 64, generator=gen)
    together = attend(amx, True, q, cache, tables, lens, 16)
    for s in range(4):
        alone = attend(amx, True, q[s : s + 1], cache, tables[s : s + 1], lens[s : s + 1], 16)
        assert torch.equal(alone[0], together[s])


@pytest.fixture
def i16(kernels: NativeKernels) -> Iterator[NativeKernels]:
    """The kernels with VNNI int16 decode attention on and AMX off (skips where the build
    has no AVX-512 VNNI); the settings restored after."""
    default = kernels.i16_decode, kernels.amx_decode
    kernels.amx_decode_on(False)
    if not kernels.i16_decode_on(True):
        kernels.amx_decode_on(default[1])
        pytest.skip("no AVX-512 VNNI in this build")
    yield kernels
    kernels.i16_decode_on(default[0]), kernels.amx_decode_on(default[1])


@pytest.mark.parametrize("shape", SHAPES)
def test_i16_decode_attention_keeps_float32_accuracy(
    i16: NativeKernels, shape: tuple[int, int, int, int]
) -> None:
    """Queries and weighted values rounded to int16 (2^-16 of their row's largest value),
    keys and values the cache's own integers: within 5e-4 of float64 over the dequantized
    cache with sharp softmaxes, as the AMX kernel; odd span lengths (9, 65, 143) pair a key
    with nothing. Layouts with more than 8 heads a kv head take the float32 kernel."""
    heads, kv_heads, head_dim, block_size = shape
    gen = torch.Generator().manual_seed(11)
    cache = cache_of(torch.randn(2, 64 * block_size, kv_heads, head_dim, generator=gen), torch.int8)
    lens = torch.tensor(CONTEXTS, dtype=torch.int32)
    tables = torch.stack([torch.randperm(64, generator=gen)[:20] for _ in CONTEXTS]).int()
    q = torch.randn(len(CONTEXTS), heads, head_dim, generator=gen) * 4
    outs = []
    for flag in (True, False):
        assert i16.i16_decode_on(flag) == flag
        outs.append(attend(i16, False, q, cache, tables, lens, block_size))
    on, off = outs
    if heads // kv_heads > 8:
        assert torch.equal(on, off)
        return
    assert not torch.equal(on, off)  # the two kernels ran
    for s, n in enumerate(CONTEXTS):
        positions = torch.arange(n)
        slots = tables[s].long()[positions // block_size] * block_size + positions % block_size
        k, v = (read_rows(cache[i], slots, torch.float32).transpose(0, 1).double() for i in (0, 1))
        expected = F.scaled_dot_product_attention(
            q[s].double().unsqueeze(1), k, v, enable_gqa=True
        ).reshape(-1)
        torch.testing.assert_close(on[s].double(), expected, rtol=0, atol=5e-4)
        assert (on[s].double() - expected).abs().mean() < 5e-5  # rounding, not a bias


def test_i16_decode_attention_of_a_sequence_does_not_depend_on_the_batch(
    i16: NativeKernels,
) -> None:
    """A sequence's spans and their rounded queries and weights are its own."""
    gen = torch.Generator().manual_seed(12)
    cache = cache_of(torch.randn(2, 64 * 16, 3, 64, generator=gen), torch.int8)
    lens = torch.tensor([700, 5, 300, 64], dtype=torch.int32)
    tables = torch.stack([torch.randperm(64, generator=gen)[:44] for _ in range(4)]).int()
    q = torch.randn(4, 9, 64, generator=gen)
    together = attend(i16, False, q, cache, tables, lens, 16)
    for s in range(4):
        alone = attend(i16, False, q[s : s + 1], cache, tables[s : s + 1], lens[s : s + 1], 16)
        assert torch.equal(alone[0], together[s])
