"""Read a GGUF file: model config, dequantized weights (HF names) and tokenizer metadata.

The header is parsed by `inferline.models.gguf_header` (the ``gguf`` package's own reader
builds a numpy view per vocabulary string, which costs seconds); weights are decoded to
float32 by `inferline.models.gguf_quants` (the ``gguf`` package's values, bit for bit, ten
times faster; in C where `quant_native` is enabled), fused projections straight into one
buffer. Llama-architecture files have their q/k
rows permuted by llama.cpp's converter (so its adjacent-pair RoPE matches HF's
``rotate_half``); we undo that here so one RoPE serves every architecture.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGMLQuantizationType

from inferline.core.errors import ModelLoadError
from inferline.models.config import ModelConfig
from inferline.models.gguf_header import GGUFHeader, GGUFTensorInfo, read_gguf_header
from inferline.models.gguf_quants import dequantize_into, tensor_bytes

# The model's fused projections (``model.layers.N.<name>``, as `DecoderForCausalLM` names its
# parameters) and the GGUF tensors (``blk.N.<part>``) whose rows they concatenate, in order.
_FUSED_LAYER_TENSORS = {
    "qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "o_proj": ("attn_output",),
    "gate_up_proj": ("ffn_gate", "ffn_up"),
    "down_proj": ("ffn_down",),
}
_LAYER_NORM_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
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
    weights: dict[str, torch.Tensor]  # the model's parameter names (fused q/k/v, gate/up), float32
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


def _tensor_bytes(header: GGUFHeader, tensor: GGUFTensorInfo) -> np.ndarray:
    """The tensor's raw bytes in the file, ``[rows, bytes per row]`` uint8 (a view)."""
    qtype = GGMLQuantizationType(tensor.type_id)
    num_bytes = tensor_bytes(qtype, int(np.prod(tensor.shape)))
    raw = header.data[tensor.offset : tensor.offset + num_bytes]
    num_rows = int(np.prod(tensor.shape[1:]))
    return raw.reshape(num_rows, num_bytes // num_rows)


def decode_into(
    header: GGUFHeader, tensor: GGUFTensorInfo, out: torch.Tensor, unpermute_heads: int = 0
) -> torch.Tensor:
    """Decodes ``tensor`` into float32 ``out`` (its numpy-order shape or rows of a fused
    weight); with ``unpermute_heads``, undoes llama.cpp's q/k row permutation first (on the
    raw rows, which are independent blocks, so it costs bytes, not floats)."""
    raw = _tensor_bytes(header, tensor)
    if unpermute_heads:
        raw = np.ascontiguousarray(unpermute_qk_rows(raw, unpermute_heads))
    dequantize_into(raw.reshape(-1), GGMLQuantizationType(tensor.type_id), out)
    header.release_pages(tensor.offset, raw.size)
    return out


def _dequantize(header: GGUFHeader, tensor: GGUFTensorInfo) -> np.ndarray:
    """The tensor as float32 in numpy order (GGUF dims reversed)."""
    shape = tuple(reversed(tensor.shape))
    return decode_into(header, tensor, torch.empty(shape)).numpy()


class _Scratch:
    """One float32 buffer reused for every projection: `take` views its start, valid until
    the next `take` (the consumer quantizes each projection before asking for the next)."""

    def __init__(self) -> None:
        self.buffer = torch.empty(0)

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        size = int(np.prod(shape))
        if self.buffer.numel() < size:
            self.buffer = torch.empty(size)
        return self.buffer[:size].view(shape)


def _weights(
    header: GGUFHeader, config: ModelConfig, scratch: _Scratch | None, skip: frozenset[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every weight but ``skip`` as float32 under the model's own parameter names, one at a
    time: each fused weight (q/k/v, gate/up) decoded straight into its rows of one buffer
    (no float copy of a projection exists twice); with ``scratch``, the projections'
    buffers are its reused views."""
    tensors = {t.name: t for t in header.tensors}
    permute = config.architecture in _PERMUTED_QK_ARCHITECTURES
    heads = {"attn_q": config.num_heads, "attn_k": config.num_kv_heads} if permute else {}
    for gguf_name, name in _GLOBAL_TENSOR_NAMES.items():
        if gguf_name in tensors and name not in skip:
            yield name, _decode_parts(header, [tensors[gguf_name]], {})
    for i in range(config.num_layers):
        for gguf_name, name in _LAYER_NORM_NAMES.items():
            yield (
                f"model.layers.{i}.{name}",
                _decode_parts(header, [tensors[f"blk.{i}.{gguf_name}"]], {}),
            )
        for kind in ("bias", "weight"):
            for fused, parts in _FUSED_LAYER_TENSORS.items():
                names = [f"blk.{i}.{part}.{kind}" for part in parts]
                if all(name in tensors for name in names):
                    part_heads = {n: heads.get(p, 0) for n, p in zip(names, parts, strict=True)}
                    infos = [tensors[name] for name in names]
                    into = scratch if kind == "weight" else None
                    yield (
                        f"model.layers.{i}.{fused}.{kind}",
                        _decode_parts(header, infos, part_heads, into),
                    )


def _decode_parts(
    header: GGUFHeader,
    infos: list[GGUFTensorInfo],
    heads: dict[str, int],
    scratch: _Scratch | None = None,
) -> torch.Tensor:
    """``infos`` decoded one after the other into the rows of one float32 tensor (new, or
    a view of ``scratch``)."""
    shapes = [tuple(reversed(info.shape)) for info in infos]  # numpy order: [rows, cols]
    shape = (sum(shape[0] for shape in shapes), *shapes[0][1:])
    out = scratch.take(shape) if scratch is not None else torch.empty(shape)
    start = 0
    for info, part in zip(infos, shapes, strict=True):
        decode_into(header, info, out[start : start + part[0]], heads.get(info.name, 0))
        start += part[0]
    return out


@dataclass
class GGUFModelFile:
    """An opened GGUF file: its config at once, its weights when asked (so a caller can
    act on the config before the weights take memory)."""

    path: Path
    header: GGUFHeader
    config: ModelConfig

    def weights(
        self, *, scratch: bool = False, skip: frozenset[str] = frozenset()
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The weights but ``skip`` as float32, one at a time, under the model's parameter
        names (fused q/k/v and gate/up). With ``scratch``, each projection's floats are a
        view of one reused buffer, valid until the next item: the caller quantizes it
        first (`inferline.models.assemble`), so the whole model's floats never exist."""
        return _weights(self.header, self.config, _Scratch() if scratch else None, skip)

    def tokenizer(self) -> TokenizerMetadata:
        """The tokenizer's metadata."""
        return _read_tokenizer(self.header)

    def read(self) -> GGUFContents:
        """Decodes every weight to float32 (the model's parameter names) and the tokenizer."""
        return GGUFContents(self.config, dict(self.weights()), self.tokenizer())


def open_gguf(path: Path) -> GGUFModelFile:
    """Parses ``path``'s header and model config; reads no weight yet."""
    header = read_gguf_header(path)
    return GGUFModelFile(path, header, _read_config(header, path))


def read_gguf(path: Path) -> GGUFContents:
    """Parses ``path`` and decodes every weight to float32 (the model's parameter names)."""
    return open_gguf(path).read()
