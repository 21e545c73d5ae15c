"""Our 4-bit weight matmul (``native/q4_gemm.c``): its math, on every code path, row by row."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from inferline.models.native import COMPILE_FLAGS, SOURCES, NativeKernels, Q4Weight
from inferline.models.native.build import compiled, compiler
from inferline.models.quant import Q4_PROBE_ROWS, probe_int4_max_rows

SHAPES = [(40, 64), (960, 576), (17, 96), (16, 32)]  # (out, in): partial tiles, one group


def reference(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The format's math in float64: per column and group of 32, fp16 ``d = (max - min) / 15``
    and ``m = min``, codes ``round((w - m) / d)``; activations per row and group as int8
    with scale ``max|x| / 127``; a group adds ``d * s * sum(q * x_q) + m * sum(x)``."""
    out_features, in_features = weight.shape
    groups = weight.view(out_features, -1, 32)
    low, high = groups.amin(-1), groups.amax(-1)
    d = ((high - low) / 15).half().float()
    m = low.half().float()
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    codes = torch.round((groups - m[..., None]) * inv[..., None]).clamp(0, 15)
    x_groups = x.view(x.shape[0], -1, 32)
    top = x_groups.abs().amax(-1, keepdim=True)
    x_codes = torch.round(x_groups * torch.where(top > 0, 127 / top, torch.zeros_like(top)))
    x_scale = (top / 127).squeeze(-1)  # [rows, groups]
    dots = torch.einsum("rgi,ogi->rog", x_codes.double(), codes.double())  # [rows, out, groups]
    scaled = dots * d.double()[None] * x_scale.double()[:, None]
    sums = x_groups.double().sum(-1)  # [rows, groups]
    return (scaled + m.double()[None] * sums[:, None]).sum(-1).float()


def check(kernels: NativeKernels, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for out_features, in_features in SHAPES:
        weight = torch.randn(out_features, in_features, generator=gen) * 0.05
        packed = kernels.pack_q4(weight)
        x = torch.randn(13, in_features, generator=gen)  # more than one block of 8 rows
        got = packed.matmul(x)
        expected = reference(weight, x)
        assert got.shape == (13, out_features)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # the rows of a call are computed alone: any batch gives each row the same bits
        for rows in (1, 3, 8, 9, 13):
            assert torch.equal(packed.matmul(x[:rows]), got[:rows])
        assert torch.equal(packed.matmul(x[5:6]), got[5:6])


def test_q4_computes_the_format_math_row_by_row(kernels: NativeKernels) -> None:
    check(kernels)


def test_q4_is_close_to_the_float_product(kernels: NativeKernels) -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(576, 1536, generator=gen) * 0.02
    x = torch.randn(4, 1536, generator=gen)
    got = kernels.pack_q4(weight).matmul(x)
    exact = x @ weight.t()
    relative = (got - exact).norm() / exact.norm()
    assert relative < 0.1  # 4-bit weights, 8-bit activations: 7.9 % on these Gaussian weights


def test_q4_is_exact_for_weights_on_its_grid(kernels: NativeKernels) -> None:
    """Q4_1 GGUF weights (codes 0..15 spanning each group, fp16 scale and minimum) pack
    without loss: only the activations' int8 rounding remains."""
    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (48, 128), generator=gen).float()
    codes[:, ::32], codes[:, 1::32] = 0, 15
    d = (torch.rand(48, 4, generator=gen) * 0.01 + 0.001).half().float()
    m = (-torch.rand(48, 4, generator=gen) * 0.05).half().float()
    weight = codes * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)
    x = torch.randint(-127, 128, (2, 128), generator=gen).float()
    x[:, ::32] = 127  # each group's max is 127: its int8 codes are the values themselves
    got = kernels.pack_q4(weight).matmul(x)
    torch.testing.assert_close(
        got, (x.double() @ weight.double().t()).float(), rtol=1e-5, atol=1e-3
    )


def test_q4_takes_bf16_rows_and_refuses_partial_groups(kernels: NativeKernels) -> None:
    weight = torch.randn(32, 64)
    packed = kernels.pack_q4(weight)
    x = torch.randn(3, 64).bfloat16()
    assert torch.equal(packed.matmul(x), packed.matmul(x.float()))
    with pytest.raises(ValueError, match="groups of 32"):
        kernels.pack_q4(torch.randn(8, 48))
    with pytest.raises(ValueError, match="inputs"):
        packed.matmul(torch.randn(1, 32))


@pytest.mark.parametrize("march", ["haswell", "x86-64"])
def test_each_code_path_computes_the_same_math(march: str, tmp_path: Path) -> None:
    """The AVX2 and plain C paths (the AVX-512 one is the native build on these machines)."""
    cc = compiler()
    if cc is None or platform.machine() != "x86_64":
        pytest.skip("needs an x86-64 C compiler")
    if march == "haswell" and "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("this CPU has no AVX2")
    flags = tuple(f"-march={march}" if f == "-march=native" else f for f in COMPILE_FLAGS)
    kernels = NativeKernels(compiled(SOURCES, flags, tmp_path, cc))
    assert kernels.q4_path == {"haswell": "avx2", "x86-64": "plain-c"}[march]
    check(kernels, seed=3)


def test_the_q4_probe_returns_a_measured_crossover(kernels: NativeKernels) -> None:
    assert probe_int4_max_rows(576, 3072, repeats=1, q4=kernels) in (0, *Q4_PROBE_ROWS)


def test_model_layers_run_q4_with_the_native_kernels(kernels: NativeKernels) -> None:
    from inferline.models.llama import Linear

    weight = torch.randn(64, 128)
    linear = Linear(128, 64)
    linear.weight.data = weight.clone()
    linear.quantize("mixed", int4_max_rows=16, q4=kernels)
    assert isinstance(linear.int4, Q4Weight) and linear.int8 is not None
    assert linear.input_dtype(16) == torch.float32 and linear.input_dtype(17) == torch.int8
    x = torch.randn(16, 128)
    assert torch.equal(linear(x), linear.int4.matmul(x))
    assert torch.equal(linear.matmul(x), linear.int4.matmul(x))
