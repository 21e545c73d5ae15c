"""Read a GGUF file: model config, dequantized weights (HF names) and tokenizer metadata.

The header is parsed by `inferline.models.gguf_header` (the ``gguf`` package's own reader
builds a numpy view per vocabulary string, which costs seconds); weights are dequantized to
float32 with the ``gguf`` package's quant kernels. Llama-architecture files have their q/k
rows permuted by llama.cpp's converter (so its adjacent-pair RoPE matches HF's
``rotate_half``); we undo that here so one RoPE serves every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from inferline.core.errors import ModelLoadError
from inferline.models.config import ModelConfig
from inferline.models.gguf_header import GGUFHeader, GGUFTensorInfo, read_gguf_header

# GGUF tensor name (after "blk.N.") -> HF parameter name (after "model.layers.N.")
_LAYER_TENSOR_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
_PERMUTED_QK_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class TokenizerMetadata:
    """The tokenizer as GGUF stores it (``tokenizer.ggml.*`` and the chat template)."""

    model: str  # "gpt2" = byte-level BPE
    pre: str  # pre-tokenizer name, e.g. "smollm", "qwen2"
    tokens: list[str]
    token_types: list[int]  # 1 normal, 3 control, 4 user-defined, ...
    merges: list[str]
    bos_token_id: int | None
    eos_token_id: int | None
    add_bos_token: bool
    chat_template: str | None


@dataclass
class GGUFContents:
    """Everything needed to build a model and its tokenizer from one GGUF file."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]  # HF names, float32
    tokenizer: TokenizerMetadata


def _field_value(header: GGUFHeader, key: str, default: Any = None) -> Any:
    return header.fields.get(key, default)


def _read_config(header: GGUFHeader, path: Path) -> ModelConfig:
    arch = _field_value(header, "general.architecture")
    if arch not in _SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {arch!r} is not supported "
            f"(supported: {', '.join(_SUPPORTED_ARCHITECTURES)})"
        )
    hidden = int(_field_value(header, f"{arch}.embedding_length"))
    num_heads = int(_field_value(header, f"{arch}.attention.head_count"))
    tensor_names = {t.name for t in header.tensors}
    vocab_size = _field_value(header, f"{arch}.vocab_size")
    if vocab_size is None:
        vocab_size = len(header.fields["tokenizer.ggml.tokens"])
    return ModelConfig(
        architecture=arch,
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(_field_value(header, f"{arch}.feed_forward_length")),
        num_layers=int(_field_value(header, f"{arch}.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(_field_value(header, f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(_field_value(header, f"{arch}.rope.dimension_count", hidden // num_heads)),
        rope_theta=float(_field_value(header, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field_value(header, f"{arch}.attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(_field_value(header, f"{arch}.context_length")),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        name=str(_field_value(header, "general.name", path.stem)),
    )


def _read_tokenizer(header: GGUFHeader) -> TokenizerMetadata:
    if "tokenizer.ggml.tokens" not in header.fields:
        raise ModelLoadError("GGUF file has no tokenizer (tokenizer.ggml.tokens)")
    bos = _field_value(header, "tokenizer.ggml.bos_token_id")
    eos = _field_value(header, "tokenizer.ggml.eos_token_id")
    return TokenizerMetadata(
        model=str(_field_value(header, "tokenizer.ggml.model", "gpt2")),
        pre=str(_field_value(header, "tokenizer.ggml.pre", "default")),
        tokens=list(_field_value(header, "tokenizer.ggml.tokens")),
        token_types=[int(t) for t in _field_value(header, "tokenizer.ggml.token_type", [])],
        merges=list(_field_value(header, "tokenizer.ggml.merges", [])),
        bos_token_id=None if bos is None else int(bos),
        eos_token_id=None if eos is None else int(eos),
        add_bos_token=bool(_field_value(header, "tokenizer.ggml.add_bos_token", False)),
        chat_template=_field_value(header, "tokenizer.chat_template"),
    )


def unpermute_qk_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row permutation: rows [head, dim/2, 2] -> [head, 2, dim/2]."""
    rows = weight.shape[0]
    half = rows // num_heads // 2
    w = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return w.swapaxes(1, 2).reshape(weight.shape)


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_TENSOR_NAMES:
        return _GLOBAL_TENSOR_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_TENSOR_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_TENSOR_NAMES[parts[2]]}"
    return None


def _dequantize(header: GGUFHeader, tensor: GGUFTensorInfo) -> np.ndarray:
    """The tensor as float32 in numpy order (GGUF dims reversed)."""
    qtype = GGMLQuantizationType(tensor.type_id)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    num_elements = int(np.prod(tensor.shape))
    num_bytes = num_elements // block_size * type_size
    raw = header.data[tensor.offset : tensor.offset + num_bytes]
    shape = tuple(reversed(tensor.shape))
    if qtype == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(shape)
    if qtype == GGMLQuantizationType.F16:
        return raw.view(np.float16).astype(np.float32).reshape(shape)
    rows = raw.reshape(-1, tensor.shape[0] // block_size * type_size)
    return dequantize(rows, qtype).astype(np.float32, copy=False).reshape(shape)


def _read_weights(header: GGUFHeader, config: ModelConfig) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    permute = config.architecture in _PERMUTED_QK_ARCHITECTURES
    for tensor in header.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            continue  # e.g. rope_freqs: derived, not learned
        array = _dequantize(header, tensor)
        if permute and tensor.name.endswith(("attn_q.weight", "attn_q.bias")):
            array = unpermute_qk_rows(array, config.num_heads)
        elif permute and tensor.name.endswith(("attn_k.weight", "attn_k.bias")):
            array = unpermute_qk_rows(array, config.num_kv_heads)
        # Copy: the file is memory-mapped read-only and weights must own their storage.
        weights[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    return weights


def read_gguf(path: Path) -> GGUFContents:
    """Parses ``path`` and dequantizes every weight to float32 (HF parameter names)."""
    header = read_gguf_header(path)
    config = _read_config(header, path)
    return GGUFContents(config, _read_weights(header, config), _read_tokenizer(header))
