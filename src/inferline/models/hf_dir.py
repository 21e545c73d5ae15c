"""Read a Hugging Face model directory: config.json, *.safetensors, tokenizer.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from inferline.core.errors import ModelLoadError
from inferline.models.config import ModelConfig

_HF_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


@dataclass
class HFDirContents:
    """A model directory's config, float32 weights and tokenizer files."""

    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer_json: Path
    tokenizer_config: dict[str, Any]
    generation_config: dict[str, Any]


def is_hf_dir(path: Path) -> bool:
    """True when ``path`` looks like a Hugging Face model directory."""
    return path.is_dir() and (path / "config.json").is_file()


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _model_config(raw: dict[str, Any], path: Path) -> ModelConfig:
    hf_arch = (raw.get("architectures") or ["?"])[0]
    if hf_arch not in _HF_ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: architecture {hf_arch!r} is not supported "
            f"(supported: {', '.join(_HF_ARCHITECTURES)})"
        )
    arch = _HF_ARCHITECTURES[hf_arch]
    num_heads = int(raw["num_attention_heads"])
    hidden = int(raw["hidden_size"])
    rope = raw.get("rope_parameters") or {}
    return ModelConfig(
        architecture=arch,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=int(raw["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or hidden // num_heads),
        rope_theta=float(raw.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=arch == "qwen2" or bool(raw.get("attention_bias", False)),
        name=str(raw.get("_name_or_path") or path.name),
    )


def read_hf_dir(path: Path) -> HFDirContents:
    """Loads config and all ``*.safetensors`` shards of ``path`` as float32."""
    config = _model_config(_read_json(path / "config.json"), path)
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise ModelLoadError(f"{path}: no *.safetensors files")
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        weights.update({k: v.float() for k, v in load_file(shard).items()})
    tokenizer_json = path / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise ModelLoadError(f"{path}: no tokenizer.json")
    tokenizer_config = _read_json(path / "tokenizer_config.json")
    template_file = path / "chat_template.jinja"
    if "chat_template" not in tokenizer_config and template_file.is_file():
        tokenizer_config["chat_template"] = template_file.read_text(encoding="utf-8")
    return HFDirContents(
        config,
        weights,
        tokenizer_json,
        tokenizer_config,
        _read_json(path / "generation_config.json"),
    )


def fused_weights(weights: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """HF-named ``weights`` under the model's own parameter names (q/k/v and gate/up
    concatenated per layer), one at a time, each popped from ``weights`` as it goes: once
    a projection is quantized (`inferline.models.assemble`), nothing holds its floats."""
    layers = sorted(
        {int(name.split(".")[2]) for name in weights if name.startswith("model.layers.")}
    )
    for i in layers:
        prefix = f"model.layers.{i}."
        for kind in ("weight", "bias"):
            names = [f"{prefix}self_attn.{p}_proj.{kind}" for p in "qkv"]
            if all(n in weights for n in names):
                yield f"{prefix}qkv_proj.{kind}", torch.cat([weights.pop(n) for n in names])
        gate_up = [f"{prefix}mlp.gate_proj.weight", f"{prefix}mlp.up_proj.weight"]
        if all(n in weights for n in gate_up):
            yield f"{prefix}gate_up_proj.weight", torch.cat([weights.pop(n) for n in gate_up])
        for src, dst in (("self_attn.o_proj", "o_proj"), ("mlp.down_proj", "down_proj")):
            if f"{prefix}{src}.weight" in weights:
                yield f"{prefix}{dst}.weight", weights.pop(f"{prefix}{src}.weight")
    while weights:  # the rest keep their names (norms, embeddings, head)
        name = next(iter(weights))
        yield name, weights.pop(name)
