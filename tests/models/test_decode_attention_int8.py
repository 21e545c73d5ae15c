"""Decode attention over an int8 cache on AMX int8 tiles (`decode_attention_amx.c`) and on
VNNI byte products (`decode_attention_i16.c`) against float64 attention over the dequantized
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


def sharp_case(
    shape: tuple[int, int, int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(queries x 4: sharp softmaxes, a random int8 cache, block tables, CONTEXTS)."""
    heads, kv_heads, head_dim, block_size = shape
    gen = torch.Generator().manual_seed(11)
    cache = cache_of(torch.randn(2, 64 * block_size, kv_heads, head_dim, generator=gen), torch.int8)
    lens = torch.tensor(CONTEXTS, dtype=torch.int32)
    tables = torch.stack([torch.randperm(64, generator=gen)[:20] for _ in CONTEXTS]).int()
    q = torch.randn(len(CONTEXTS), heads, head_dim, generator=gen) * 4
    return q, cache, tables, lens


def float64_outputs(q, cache, tables, block_size) -> list[torch.Tensor]:  # type: ignore[no-untyped-def]
    """Each sequence's attention output in float64 over the cache's dequantized rows."""
    outputs = []
    for s, n in enumerate(CONTEXTS):
        positions = torch.arange(n)
        slots = tables[s].long()[positions // block_size] * block_size + positions % block_size
        k, v = (read_rows(cache[i], slots, torch.float32).transpose(0, 1).double() for i in (0, 1))
        expected = F.scaled_dot_product_attention(q[s].double().unsqueeze(1), k, v, enable_gqa=True)
        outputs.append(expected.reshape(-1))
    return outputs


@pytest.fixture
def i16(kernels: NativeKernels) -> Iterator[NativeKernels]:
    """The kernels with VNNI decode attention on and AMX off (skips where the build
    has no AVX-512 VNNI); the settings restored after."""
    default = kernels.i16_decode, kernels.amx_decode
    kernels.amx_decode_on(False)
    if not kernels.i16_decode_on(True):
        kernels.amx_decode_on(default[1])
        pytest.skip("no AVX-512 VNNI in this build")
    yield kernels
    kernels.i16_decode_on(default[0]), kernels.amx_decode_on(default[1])


def attend_with(kernels: NativeKernels, kind: str, on: bool, *args) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """`attend` with the ``kind`` kernel (amx or i16) on or off (off: the float32 kernel)."""
    if kind == "i16":
        assert kernels.i16_decode_on(on) == on
        return attend(kernels, False, *args)
    return attend(kernels, on, *args)


@pytest.mark.parametrize("kind", ["amx", "i16"])
@pytest.mark.parametrize("shape", SHAPES)
def test_int8_decode_attention_keeps_float32_accuracy(
    kind: str, shape: tuple[int, int, int, int], request: pytest.FixtureRequest
) -> None:
    """AMX: queries and weights split into an int8 high part and remainder (~2^-16 of
    their row's largest value): within 5e-4 of float64 over the cache's own (dequantized)
    rows with sharp softmaxes (queries x 4; up to 2.3e-4 measured). i16 (VNNI bytes):
    queries rounded to int8 and weighted values to bytes, as llama.cpp's q8_0 queries and
    weights against a q8_0 cache: within 0.08 (up to 0.047 measured, values up to ~4.8),
    1e-2 on average a sequence (<= 4.7e-3 measured), and no bias. The int8 rows' own
    rounding moves outputs by 0.04-0.11. The float32 kernel within 1e-5; odd span lengths
    (9, 65, 143) fill a quad of keys with nothing. Layouts with more than 8 heads a kv head
    take the float32 kernel: the same bits."""
    kernels = request.getfixturevalue(kind)  # skips where this kernel is not built
    heads, kv_heads, head_dim, block_size = shape
    q, cache, tables, lens = sharp_case(shape)
    on, off = (
        attend_with(kernels, kind, flag, q, cache, tables, lens, block_size)
        for flag in (True, False)
    )
    if heads // kv_heads > 8:
        assert torch.equal(on, off)
        return
    assert not torch.equal(on, off)  # the two kernels ran
    errors = []
    for s, expected in enumerate(float64_outputs(q, cache, tables, block_size)):
        torch.testing.assert_close(
            on[s].double(), expected, rtol=0, atol=5e-4 if kind == "amx" else 0.08
        )
        torch.testing.assert_close(off[s].double(), expected, rtol=0, atol=1e-5)
        errors.append(on[s].double() - expected)
        if kind == "i16":
            assert errors[-1].abs().mean() < 1e-2  # a few outliers, not a spread
    assert abs(torch.cat(errors).mean()) < 1e-3  # rounding, not a bias


@pytest.mark.parametrize("kind", ["amx", "i16"])
def test_decode_attention_of_a_sequence_does_not_depend_on_the_batch(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A sequence's spans and their quantized (AMX) or rounded (int16) queries and weights
    are its own."""
    kernels = request.getfixturevalue(kind)  # skips where this kernel is not built
    gen = torch.Generator().manual_seed(12)
    cache = cache_of(torch.randn(2, 64 * 16, 3, 64, generator=gen), torch.int8)
    lens = torch.tensor([700, 5, 300, 64], dtype=torch.int32)
    tables = torch.stack([torch.randperm(64, generator=gen)[:44] for _ in range(4)]).int()
    q = torch.randn(4, 9, 64, generator=gen)
    on = kind == "amx"
    together = attend(kernels, on, q, cache, tables, lens, 16)
    for s in range(4):
        alone = attend(kernels, on, q[s : s + 1], cache, tables[s : s + 1], lens[s : s + 1], 16)
        assert torch.equal(alone[0], together[s])
