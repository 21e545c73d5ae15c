"""A loaded model's weights equal, bit for bit, what the old load path produced from the file.

The old path: the ``gguf`` package's numpy dequantizer per tensor, llama.cpp's q/k row
permutation undone in numpy, q/k/v and gate/up concatenated, then the whole-tensor torch
quantizers (`reference_int4` / `reference_int8`), q/k rows balanced by powers of two
(`key_balance`) before them. The kernels' inputs are therefore the same, and so is every
figure of the accuracy checks (perplexity, greedy agreement).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from inferline.models import load_model, resolve_model_path
from inferline.models.gguf_file import unpermute_qk_rows
from inferline.models.gguf_header import GGUFHeader, read_gguf_header
from inferline.models.gguf_quants import tensor_bytes
from inferline.models.key_balance import balance_keys
from inferline.models.native import NativeKernels, Q4Weight, load_kernels
from tests.models.test_load_kernels import assert_int4_equal, assert_int8_equal, same_bits

FUSED = {
    "qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "o_proj": ("attn_output",),
    "gate_up_proj": ("ffn_gate", "ffn_up"),
    "down_proj": ("ffn_down",),
}


def old_float(header: GGUFHeader, name: str, heads: int = 0) -> np.ndarray:
    """One tensor as the old loader decoded it (float32, numpy order)."""
    tensor = next(t for t in header.tensors if t.name == name)
    qtype = GGMLQuantizationType(tensor.type_id)
    num_bytes = tensor_bytes(qtype, int(np.prod(tensor.shape)))
    raw = np.array(header.data[tensor.offset : tensor.offset + num_bytes])
    shape = tuple(reversed(tensor.shape))
    if qtype == GGMLQuantizationType.F32:
        array = raw.view(np.float32).reshape(shape)
    else:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        rows = raw.reshape(-1, tensor.shape[0] // block_size * type_size)
        array = gguf_dequantize(rows, qtype).astype(np.float32).reshape(shape)
    return unpermute_qk_rows(array, heads) if heads else array


def old_fused(
    header: GGUFHeader, layer: int, parts: tuple[str, ...], heads: dict[str, int]
) -> torch.Tensor:
    arrays = [old_float(header, f"blk.{layer}.{p}.weight", heads.get(p, 0)) for p in parts]
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32))


def assert_4bit_equal(got: object, weight: torch.Tensor, q4: NativeKernels | None) -> None:
    """Torch's int4 as `assert_int4_equal` checks it, or our q4 as `pack_q4` packs
    ``weight``."""
    if q4 is None:
        assert_int4_equal(got, weight)  # type: ignore[arg-type]
        return
    assert isinstance(got, Q4Weight)
    assert torch.equal(got.packed, q4.pack_q4(weight).packed)


def check_model(name: str, cache_dir, layers: list[int] | None, kernels: str = "torch") -> None:  # type: ignore[no-untyped-def]
    """The weights of ``name`` loaded with ``kernels`` (streamed through `assemble`, one
    projection at a time) against the old path's, in ``layers`` (None: all)."""
    loaded = load_model(name, cache_dir=cache_dir, weight_format="mixed", kernels=kernels)
    model, config = loaded.model, loaded.config
    q4 = model.native
    header = read_gguf_header(resolve_model_path(name, cache_dir))
    permuted = config.architecture == "llama"
    heads = {"attn_q": config.num_heads, "attn_k": config.num_kv_heads} if permuted else {}
    embed = torch.from_numpy(np.ascontiguousarray(old_float(header, "token_embd.weight")))
    # quantized formats keep the tables as BlockRows: their rows are the floats, bit for bit
    assert same_bits(model.embed_tokens(torch.arange(config.vocab_size)), embed)
    checked_4bit = 0
    for layer in layers if layers is not None else range(config.num_layers):
        decoder = model.layers[layer]
        bias = None
        if config.attention_bias:
            biases = [
                old_float(header, f"blk.{layer}.{p}.bias", heads.get(p, 0))
                for p in FUSED["qkv_proj"]
            ]
            bias = torch.from_numpy(np.concatenate(biases))
        for fused, parts in FUSED.items():
            weight = old_fused(header, layer, parts, heads)
            if fused == "qkv_proj":  # then the keys balanced (`key_balance`), bias included
                balance_keys(weight, bias, config.num_heads, config.num_kv_heads, config.head_dim)
            linear = getattr(decoder, fused)
            if linear.int4 is not None:  # mixed keeps it where the probe saw it win
                assert_4bit_equal(linear.int4, weight, q4)
                checked_4bit += 1
            assert_int8_equal(linear.int8, weight)
        if bias is not None:
            assert same_bits(decoder.qkv_proj.bias.data, bias)
        norm = torch.from_numpy(old_float(header, f"blk.{layer}.attn_norm.weight").copy())
        assert same_bits(decoder.input_layernorm.weight.data, norm)
    head = (
        embed
        if config.tie_word_embeddings
        else torch.from_numpy(old_float(header, "output.weight").copy())
    )
    assert same_bits(model.fast_head.exact_rows(torch.arange(config.vocab_size)), head)
    assert checked_4bit > 0  # the MLP's 4-bit kernel wins at one row on every CPU seen
    assert_4bit_equal(model.fast_head.int4, head, q4)
    assert_int8_equal(model.fast_head.int8, head)


def test_smollm2_layers_equal_the_old_path(cache_dir) -> None:  # type: ignore[no-untyped-def]
    check_model("smollm2-135m", cache_dir, layers=[0, 29])


def test_native_4bit_copies_equal_packing_the_old_floats(cache_dir) -> None:  # type: ignore[no-untyped-def]
    if load_kernels(cache_dir) is None:
        pytest.skip("no native kernels on this machine")
    check_model("smollm2-135m", cache_dir, layers=[0, 29], kernels="native")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_every_weight_equals_the_old_path(name: str, cache_dir) -> None:  # type: ignore[no-untyped-def]
    check_model(name, cache_dir, layers=None)
    if load_kernels(cache_dir) is not None:
        check_model(name, cache_dir, layers=None, kernels="native")
