"""The native kernels' int8 rows: rows quantized for a W8A8 projection out of the row-wise
kernels' one-pass AVX-512 form, and attention outputs left in an int8 cache's rotated basis
for them (split from test_native.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inferline.models import rotation
from inferline.models.native import NativeKernels
from inferline.models.quant import Int8Rows, Int32Product
from tests.models.test_native import random_cache


@pytest.mark.parametrize("source", ["float32", "bfloat16", "int32"])
def test_int8_rows_out_of_norm_and_silu_are_the_quantized_float_rows(
    kernels: NativeKernels, source: str
) -> None:
    """add_rms_norm and silu_mul into int8 rows (their one-pass AVX-512 form: rotate, max
    and quantize per 64 values) give the rows quantize_rows gives their float32 outputs:
    scales to 1e-5, codes off by at most one and rarely (a sum of squares in another
    order, silu's polynomial)."""
    gen = torch.Generator().manual_seed(9)
    rows, hidden, inter = 70, 576, 1536  # 70 rows: the threaded branch too

    def activation(width: int) -> torch.Tensor | Int32Product:
        values = torch.randn(rows, width, generator=gen) * 3
        if source == "int32":
            ints = (values * 1000).round().int()
            return Int32Product(
                ints, torch.rand(rows, 1, generator=gen) / 1000, torch.rand(width, generator=gen)
            )
        return values.to(getattr(torch, source))

    def close(ours: Int8Rows, expected: Int8Rows) -> None:
        torch.testing.assert_close(ours.scales, expected.scales, rtol=1e-5, atol=0)
        differ = ours.values.int() - expected.values.int()
        assert differ.abs().max() <= 1 and (differ != 0).float().mean() < 0.01

    residual, weight = (
        torch.randn(rows, hidden, generator=gen),
        torch.rand(hidden, generator=gen) + 0.5,
    )
    delta = activation(hidden)
    floats = kernels.add_rms_norm(residual.clone(), delta, weight, 1e-5, torch.float32)
    ours = kernels.add_rms_norm(residual.clone(), delta, weight, 1e-5, torch.int8)
    assert isinstance(ours, Int8Rows) and isinstance(floats, torch.Tensor)
    close(ours, kernels.quantize_rows(floats))
    gate_up = activation(2 * inter)
    silu = kernels.silu_mul(gate_up, torch.int8)
    assert isinstance(silu, Int8Rows)
    if isinstance(gate_up, Int32Product):
        values = gate_up.values.float() * (gate_up.row_scales * gate_up.col_scales)
    else:
        values = gate_up.float()
    gate, up = values.chunk(2, dim=-1)
    close(silu, kernels.quantize_rows(F.silu(gate) * up))


@pytest.mark.parametrize("amx", [True, False])
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8])
def test_attention_outputs_left_in_the_cache_basis_quantize_as_the_plain_ones(
    kernels: NativeKernels, cache_dtype: torch.dtype, amx: bool
) -> None:
    """in_cache_basis over an int8 cache: the outputs rotated (H, per 64 values), and
    quantize_rows(rotated=True) of them gives the int8 rows quantize_rows gives the plain
    outputs (its own rotation skipped, not applied twice); over a bf16 cache the flag
    changes nothing. Decode and prefill kernels, AMX tiles and AVX-512."""
    heads, kv_heads, head_dim, block_size = 9, 3, 64, 16
    default = kernels.amx_attention, kernels.amx_decode
    gen = torch.Generator().manual_seed(11)
    cache = random_cache(48 * block_size, kv_heads, head_dim, cache_dtype, gen)
    chunks = torch.tensor([[0, 0, 70], [70, 150, 40]])
    tables = torch.stack([torch.randperm(48, generator=gen)[:16] for _ in range(2)]).int()
    q = torch.randn(112, heads, head_dim, generator=gen) * 3
    lens, token_rows = torch.tensor([190, 33], dtype=torch.int32), torch.tensor([110, 111])
    outs = []
    try:
        kernels.amx_attention_on(amx), kernels.amx_decode_on(amx)
        for basis in (False, True):
            out = torch.zeros(112, heads * head_dim)
            assert kernels.prefill_attention(q, cache, chunks, tables, block_size, out, basis)
            kernels.decode_attention(q, cache, tables, lens, token_rows, block_size, out, basis)
            outs.append(out)
    finally:
        kernels.amx_attention_on(default[0]), kernels.amx_decode_on(default[1])
    plain, kept = outs
    if cache_dtype != torch.int8:
        assert torch.equal(plain, kept)
        return
    expected = rotation.rotated(plain.reshape(-1, head_dim)).reshape(plain.shape)
    torch.testing.assert_close(kept, expected, rtol=0, atol=1e-5)
    ours, theirs = kernels.quantize_rows(kept, rotated=True), kernels.quantize_rows(plain)
    torch.testing.assert_close(ours.scales, theirs.scales, rtol=1e-5, atol=0)
    assert (ours.values.int() - theirs.values.int()).abs().max() <= 1  # rounding at .5 only
    assert (ours.values != theirs.values).float().mean() < 1e-3
