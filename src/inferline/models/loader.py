"""Load a model by short name, ``.gguf`` path or Hugging Face directory."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from inferline.core.errors import ModelLoadError, UnknownModelError
from inferline.models.config import ModelConfig
from inferline.models.gguf_file import read_gguf
from inferline.models.hf_dir import is_hf_dir, read_hf_dir
from inferline.models.registry import ARCHITECTURES
from inferline.models.sources import MODEL_SOURCES
from inferline.models.tokenizer import Tokenizer

DEFAULT_MODEL = "smollm2-135m"


@dataclass
class LoadedModel:
    """A model ready to run, with its tokenizer and where it came from."""

    name: str
    path: Path
    config: ModelConfig
    model: nn.Module
    tokenizer: Tokenizer
    load_time_s: float


def resolve_model_path(name: str, cache_dir: Path) -> Path:
    """Turns a short name, a ``.gguf`` path or an HF directory into a path on disk."""
    if name in MODEL_SOURCES:
        return MODEL_SOURCES.get(name)(cache_dir)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if is_hf_dir(path):
        return path
    raise UnknownModelError(name, MODEL_SOURCES.names())


def _build(config: ModelConfig, weights: dict[str, torch.Tensor], device: str) -> nn.Module:
    cls = ARCHITECTURES.get(config.architecture)
    model = cls(config)  # storage uninitialised: weights are assigned below
    model.load_hf_weights(weights)  # type: ignore[operator]
    return model.to(device).eval()


def load_model(name: str = DEFAULT_MODEL, *, cache_dir: Path, device: str = "cpu") -> LoadedModel:
    """Loads weights (dequantized to float32) and the tokenizer of ``name``."""
    start = time.perf_counter()
    path = resolve_model_path(name, cache_dir)
    if path.is_dir():
        hf = read_hf_dir(path)
        config, weights = hf.config, hf.weights
        tokenizer = Tokenizer.from_hf_files(
            hf.tokenizer_json, hf.tokenizer_config, hf.generation_config
        )
    else:
        contents = read_gguf(path)
        config, weights = contents.config, contents.weights
        tokenizer = Tokenizer.from_gguf(contents.tokenizer)
    if tokenizer.vocab_size > config.vocab_size:
        raise ModelLoadError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
        )
    model = _build(config, weights, device)
    return LoadedModel(name, path, config, model, tokenizer, time.perf_counter() - start)
