"""Load-time decoding and quantization: torch and C give the values of the reference path.

The reference is what the loader did before: the ``gguf`` package's numpy dequantizers, then
the whole-tensor torch quantizers kept below as they were. Every comparison is bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize

from inferline.models import quant, rotation
from inferline.models.gguf_quants import dequantize
from inferline.models.native import PackedInt8Weight

Q = GGMLQuantizationType
LEGACY_TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]  # the gguf package can encode these
K_TYPES = [Q.Q4_K, Q.Q5_K, Q.Q6_K]  # only decode: random blocks with valid float16 fields
# byte offsets of each K block's float16 fields (d, dmin; Q6_K: d last)
K_HALF_OFFSETS = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def reference_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quant.quantize_int8` as it was: whole-tensor torch ops (on the rotated rows)."""
    weight = rotation.rotated(weight)
    scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    w8 = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return w8.t().contiguous(), scale.float()


def reference_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quant.quantize_int4` as it was: whole-tensor torch ops, one pack call."""
    out_features, in_features = weight.shape
    groups = weight.float().view(out_features, in_features // 32, 32)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15.0).clamp(min=1e-8)
    q = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15)
    q = q.to(torch.int32).view(out_features, in_features)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    zero = low + 8.0 * scale
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
    return packed, scales_zeros.to(torch.bfloat16)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (so -0.0 != 0.0 and NaN == NaN would count)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        view = {2: torch.int16, 4: torch.int32}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


def assert_int4_equal(got: quant.Int4Weight, weight: torch.Tensor) -> None:
    packed, scales_zeros = reference_int4(weight)
    assert torch.equal(got.packed, packed)
    assert same_bits(got.scales_zeros, scales_zeros)


def assert_int8_equal(got: quant.W8A8Weight, weight: torch.Tensor) -> None:
    """``got`` holds the reference int8 of ``weight`` (packed for the native kernel, or not)."""
    w8_t, scale = reference_int8(weight)
    assert same_bits(got.scale, scale)
    if isinstance(got, PackedInt8Weight):
        expected = got.kernels.pack_int8(quant.Int8Weight(w8_t, scale))
        assert isinstance(expected, PackedInt8Weight)
        assert torch.equal(got.packed, expected.packed)
        assert torch.equal(got.comp, expected.comp)
    else:
        assert isinstance(got, quant.Int8Weight)
        assert torch.equal(got.w8_t, w8_t)


def synthetic_blocks(qtype: Q, num_blocks: int, seed: int) -> np.ndarray:
    """``num_blocks`` valid blocks of ``qtype`` as raw bytes (uint8)."""
    rng = np.random.default_rng(seed)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype in LEGACY_TYPES:
        values = rng.standard_normal((num_blocks, block_size)).astype(np.float32) * 0.05
        values[0] = 0.0  # an all-zero block (scale 0)
        values[1, :3] = [1e-7, -1e-7, 3e-8]  # tiny values: float16 subnormal scales
        return np.asarray(gguf_quantize(values, qtype), dtype=np.uint8).reshape(-1)
    blocks = rng.integers(0, 256, (num_blocks, type_size), dtype=np.uint8)
    for offset in K_HALF_OFFSETS[qtype]:
        halves = (rng.standard_normal(num_blocks) * 0.01).astype(np.float16)
        halves[0] = np.float16(3e-6)  # a subnormal float16
        blocks[:, offset : offset + 2] = halves.view(np.uint8).reshape(num_blocks, 2)
    return blocks.reshape(-1)


@pytest.mark.parametrize("qtype", LEGACY_TYPES + K_TYPES, ids=lambda q: q.name)
def test_decoding_matches_the_gguf_package(quant_kernels, qtype: Q) -> None:  # type: ignore[no-untyped-def]
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    num_blocks = 300  # several chunks of the torch decoder for 32-value blocks
    raw = synthetic_blocks(qtype, num_blocks, seed=int(qtype))
    expected = gguf_dequantize(raw.reshape(-1, type_size), qtype).reshape(-1)
    got = dequantize(raw, qtype, (num_blocks * block_size,))
    assert same_bits(got, torch.from_numpy(np.ascontiguousarray(expected, dtype=np.float32)))


@pytest.mark.parametrize(
    "shape", [(64, 96), (1024 + 64 * 3, 128), (2048 + 64, 64)], ids=lambda s: f"{s[0]}x{s[1]}"
)
def test_quantizers_match_the_whole_tensor_reference(quant_kernels, shape) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(sum(shape))
    weight = torch.randn(*shape) * 0.02
    weight[0] = 0.0  # a zero row: the 1e-8 scale floor
    weight[1, :32] = 1e-9  # a flat group
    weight[2, 5] = -0.0
    assert_int4_equal(quant.quantize_int4(weight), weight)
    assert_int8_equal(quant.quantize_int8(weight), weight)


def test_int4_chunks_pack_as_the_whole_weight() -> None:
    """The packer's layout is per 64 rows on this CPU, so row chunks concatenate."""
    q = torch.randint(0, 16, (quant._INT4_CHUNK_ROWS * 2 + 64, 96), dtype=torch.int32)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    step = quant._INT4_CHUNK_ROWS
    parts = [
        torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[i : i + step].contiguous(), 1)
        for i in range(0, q.shape[0], step)
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_the_probe_is_measured_once_per_shape() -> None:
    first = quant.probe_int4_max_rows(64, 256, repeats=1)
    assert quant.probe_int4_max_rows(64, 256, repeats=1) == first
    assert quant.probe_int4_max_rows.cache_info().hits >= 1


def test_decoding_after_the_pages_were_released(cache_dir: Path) -> None:
    """Dropping a tensor's mapped pages does not change what a later read decodes."""
    from inferline.models import resolve_model_path
    from inferline.models.gguf_file import _dequantize
    from inferline.models.gguf_header import read_gguf_header

    header = read_gguf_header(resolve_model_path("smollm2-135m", cache_dir))
    tensor = next(t for t in header.tensors if t.name == "blk.0.ffn_up.weight")
    first = _dequantize(header, tensor)  # releases its pages
    assert np.array_equal(_dequantize(header, tensor), first)


def test_quantizing_in_chunks_equals_the_whole_weight(quant_kernels) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    weight = torch.randn(64 * 5 + 16, 96)  # a last chunk of 80 rows
    int4, int8 = quant.quantize_in_chunks(weight.__getitem__, weight.shape[0], chunk_rows=128)
    assert_int4_equal(int4, weight)
    assert_int8_equal(int8, weight)
    with pytest.raises(ValueError, match="multiple of 64"):
        quant.quantize_in_chunks(weight.__getitem__, weight.shape[0], chunk_rows=100)


def test_our_4bit_packing_in_chunks_equals_the_whole_weight(kernels) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(4)
    weight = torch.randn(64 * 5 + 24, 96)  # a last chunk of 88 rows: a padded last tile
    q4, int8 = quant.quantize_in_chunks(weight.__getitem__, weight.shape[0], 128, q4=kernels)
    whole = kernels.pack_q4(weight)
    assert torch.equal(q4.packed, whole.packed)
    assert (q4.out_features, q4.in_features) == (whole.out_features, whole.in_features)
    x = torch.randn(3, 96)
    assert torch.equal(q4.matmul(x), whole.matmul(x))
    assert_int8_equal(int8, weight)
