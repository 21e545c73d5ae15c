"""The packed int8 matmul (``native/i8_gemm.c``): the same integers as ``torch._int_mm``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from inferline.models.native import NativeKernels, PackedInt8Weight
from inferline.models.quant import (
    Int8Rows,
    Int8Weight,
    int8_linear,
    quantize_in_chunks,
    quantize_int8,
)

# (out, in): partial panels and tiles (40, 200, 1000), one tile (16), whole panels (576, 1536)
SHAPES = [(40, 64), (576, 576), (200, 1536), (1000, 96), (16, 4), (1536, 576)]


def needs_vnni(kernels: NativeKernels) -> None:
    if not kernels.i8_path:
        pytest.skip("this CPU has no AVX-512 VNNI: the torch W8A8 kernel stays")


@contextmanager
def amx_int8(kernels: NativeKernels) -> Iterator[None]:
    """AMX int8 from one row inside the block (skips where the CPU, build or OS has none);
    the default row count restored after."""
    needs_vnni(kernels)
    default = kernels.amx_rows
    if not kernels.amx_from(1):
        kernels.amx_from(default)
        pytest.skip("no AMX int8 on this CPU (or the OS refused the tile state)")
    try:
        yield
    finally:
        kernels.amx_from(default)


def extreme_rows(rows: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    """int8 rows with every value -128..127 represented, -128 and 127 runs included (the u8
    shift and the compensation must hold at both ends)."""
    x = torch.randint(-128, 128, (rows, in_features), dtype=torch.int8, generator=gen)
    x[0] = 127
    if rows > 1:
        x[1] = -128
    return x


@pytest.mark.parametrize(("out_features", "in_features"), SHAPES)
def test_packed_int8_matches_int_mm_bit_for_bit(
    kernels: NativeKernels, out_features: int, in_features: int
) -> None:
    needs_vnni(kernels)
    gen = torch.Generator().manual_seed(out_features + in_features)
    w8_t = torch.randint(-127, 128, (in_features, out_features), dtype=torch.int8, generator=gen)
    w8_t[:, 0] = 127  # a column at the largest sums
    weight = Int8Weight(w8_t, torch.rand(out_features, generator=gen))
    packed = kernels.pack_int8(weight)
    assert isinstance(packed, PackedInt8Weight)
    x = extreme_rows(45, in_features, gen)  # 7 full blocks of 6 rows and a partial one
    got = packed.matmul(Int8Rows(x, torch.rand(45, 1, generator=gen)))
    expected = torch._int_mm(x, w8_t)
    assert got.values.dtype == torch.int32
    assert torch.equal(got.values, expected)
    assert got.col_scales is weight.scale
    # each row alone: the same integers whatever else is in the call
    for rows in (0, 1, 2, 5, 6, 7, 13, 32):
        part = packed.matmul(Int8Rows(x[:rows].contiguous(), torch.ones(rows, 1)))
        assert torch.equal(part.values, expected[:rows])


@pytest.mark.parametrize(("out_features", "in_features"), [(1536, 576), (200, 1536), (40, 64)])
def test_products_dequantized_in_the_store_equal_the_int32_ones(
    kernels: NativeKernels, out_features: int, in_features: int
) -> None:
    """float32: values * (row scale * column scale), as torch computes it; bf16: that value
    rounded to nearest even. At 1-3 rows (VNNI) and 45 (AMX where the CPU has it)."""
    needs_vnni(kernels)
    gen = torch.Generator().manual_seed(out_features)
    w8_t = torch.randint(-127, 128, (in_features, out_features), dtype=torch.int8, generator=gen)
    packed = kernels.pack_int8(Int8Weight(w8_t, torch.rand(out_features, generator=gen) / 100))
    assert isinstance(packed, PackedInt8Weight)
    for rows in (1, 3, 45):
        x = Int8Rows(extreme_rows(rows, in_features, gen), torch.rand(rows, 1, generator=gen))
        product = packed.matmul(x)
        expected = product.values.float() * (product.row_scales * product.col_scales)
        assert torch.equal(packed.scaled(x, torch.float32), expected)
        bf16 = packed.scaled(x, torch.bfloat16)
        assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, expected.bfloat16())


def test_int8_linear_is_unchanged_by_packing(kernels: NativeKernels) -> None:
    needs_vnni(kernels)
    gen = torch.Generator().manual_seed(3)
    weight = quantize_int8(torch.randn(300, 128, generator=gen))
    x = torch.randn(33, 128, generator=gen)
    assert torch.equal(int8_linear(x, kernels.pack_int8(weight)), int8_linear(x, weight))


def test_chunked_quantization_packs_the_same_weight(kernels: NativeKernels) -> None:
    """The head's weight is quantized a chunk of rows at a time: the packed chunks put
    together are the packing of the whole weight."""
    needs_vnni(kernels)
    gen = torch.Generator().manual_seed(4)
    weight = torch.randn(64 * 5 + 23, 96, generator=gen)
    _, chunked = quantize_in_chunks(lambda ids: weight[ids], weight.shape[0], 128, q4=kernels)
    whole = kernels.pack_int8(quantize_int8(weight))
    assert isinstance(chunked, PackedInt8Weight) and isinstance(whole, PackedInt8Weight)
    assert torch.equal(chunked.packed, whole.packed)
    assert torch.equal(chunked.comp, whole.comp)
    assert torch.equal(chunked.scale, whole.scale)
    assert chunked.out_features == weight.shape[0]


def test_weights_the_kernel_cannot_take_stay_with_torch(kernels: NativeKernels) -> None:
    weight = Int8Weight(torch.zeros(6, 8, dtype=torch.int8), torch.ones(8))  # 6 inputs
    assert kernels.pack_int8(weight) is weight
    packed = kernels.pack_int8(Int8Weight(torch.zeros(8, 8, dtype=torch.int8), torch.ones(8)))
    if kernels.i8_path:
        assert isinstance(packed, PackedInt8Weight)
        with pytest.raises(ValueError, match="inputs"):
            packed.matmul(Int8Rows(torch.zeros(2, 12, dtype=torch.int8), torch.ones(2, 1)))


@pytest.mark.parametrize(
    ("out_features", "in_features"), [(960, 576), (3072, 576), (4864, 896), (200, 1536), (96, 128)]
)
def test_amx_prefill_orders_give_the_exact_integers(
    kernels: NativeKernels, out_features: int, in_features: int
) -> None:
    """Prefill-sized steps (4+ row blocks) run AMX in one of three orders by weight size:
    each thread over its own rows (<= 1 MB: 960 x 576), over its own columns row block by
    row block (3072 x 576), by half panel (4864 x 896); all the exact int32 sums and the
    same dequantized bf16 products (compact gate/up) at 97 .. 512 rows, partial blocks and
    half panels (200 columns) included, and a last half panel wholly past the columns (96:
    its tiles must not be stored)."""
    with amx_int8(kernels):
        gen = torch.Generator().manual_seed(out_features)
        w8_t = torch.randint(
            -128, 128, (in_features, out_features), dtype=torch.int8, generator=gen
        )
        scale = torch.rand(out_features, generator=gen)
        packed = kernels.pack_int8(Int8Weight(w8_t, scale))
        assert isinstance(packed, PackedInt8Weight)
        x = extreme_rows(512, in_features, gen)
        expected = torch._int_mm(x, w8_t)
        for rows in (97, 130, 300, 512):
            part = Int8Rows(x[:rows].contiguous(), torch.rand(rows, 1, generator=gen))
            assert torch.equal(packed.matmul(part).values, expected[:rows])
            bf16 = packed.scaled(part, torch.bfloat16)
            floats = expected[:rows].float() * (part.scales * scale)
            assert torch.equal(bf16, floats.bfloat16())


@pytest.mark.parametrize(("out_features", "in_features"), [(1536, 576), (200, 1536), (40, 64)])
def test_amx_gives_the_same_integers_as_vnni(
    kernels: NativeKernels, out_features: int, in_features: int
) -> None:
    """AMX tiles (signed by signed, no compensation) and the VNNI kernel: the same int32
    sums and the same dequantized floats, at every row count around the 16-row tiles and
    32-row blocks, partial half panels included (200 and 40 columns)."""
    with amx_int8(kernels):
        gen = torch.Generator().manual_seed(in_features)
        w8_t = torch.randint(
            -128, 128, (in_features, out_features), dtype=torch.int8, generator=gen
        )
        packed = kernels.pack_int8(Int8Weight(w8_t, torch.rand(out_features, generator=gen)))
        assert isinstance(packed, PackedInt8Weight)
        x = extreme_rows(70, in_features, gen)
        floats = torch.randn(70, in_features, generator=gen)
        expected = torch._int_mm(x, w8_t)
        for rows in (1, 2, 7, 15, 16, 17, 31, 32, 33, 48, 63, 70):
            part = Int8Rows(x[:rows].contiguous(), torch.ones(rows, 1))
            kernels.amx_from(1)
            amx, amx_linear = packed.matmul(part).values, packed.linear(floats[:rows])
            kernels.amx_from(0)
            vnni, vnni_linear = packed.matmul(part).values, packed.linear(floats[:rows])
            assert torch.equal(amx, expected[:rows]) and torch.equal(vnni, expected[:rows])
            assert torch.equal(amx_linear, vnni_linear)


@pytest.mark.parametrize(("inter", "in_features"), [(1536, 576), (1088, 1024), (96, 128)])
def test_gate_up_with_silu_on_amx_gives_silu_mul_of_the_products_bit_for_bit(
    kernels: NativeKernels, inter: int, in_features: int
) -> None:
    """SiLU in gate/up's AMX epilogue (`PackedInt8Weight.gate_up_silu`): the int8 rows and
    scales silu_mul gives the int32 products, bit for bit, in both orders (1536 x 576: row
    block by row block; 1088 x 1024, 2.2 MB: column group by column group), at 1 .. 300
    rows (partial 32-row blocks, several blocks whose epilogues overlap the next's
    products); 96 columns: not a multiple of 64, not taken (None)."""
    with amx_int8(kernels):
        gen = torch.Generator().manual_seed(inter)
        w8_t = torch.randint(-128, 128, (in_features, 2 * inter), dtype=torch.int8, generator=gen)
        packed = kernels.pack_int8(Int8Weight(w8_t, torch.rand(2 * inter, generator=gen) / 1e2))
        assert isinstance(packed, PackedInt8Weight)
        x = extreme_rows(300, in_features, gen)
        scales = torch.rand(300, 1, generator=gen) / 1e3
        for rows in (1, 31, 33, 97, 300):
            part = Int8Rows(x[:rows].contiguous(), scales[:rows].contiguous())
            fused = packed.gate_up_silu(part)
            if inter % 64:
                assert fused is None
                continue
            expected = kernels.silu_mul(packed.matmul(part), torch.int8)
            assert isinstance(fused, Int8Rows) and isinstance(expected, Int8Rows)
            assert torch.equal(fused.values, expected.values)
            assert torch.equal(fused.scales, expected.scales)
            assert fused.values.abs().max() == 127  # not all zeros: the rows are used
