"""Model architectures (plain PyTorch), weight loaders (GGUF, HF directories), tokenizers."""

from inferline.models.attention import AttentionGroup, AttentionMetadata, paged_attention
from inferline.models.config import ModelConfig
from inferline.models.loader import DEFAULT_MODEL, LoadedModel, load_model, resolve_model_path
from inferline.models.registry import ARCHITECTURES
from inferline.models.sources import MODEL_SOURCES
from inferline.models.tokenizer import IncrementalDetokenizer, Tokenizer

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MODEL",
    "MODEL_SOURCES",
    "AttentionGroup",
    "AttentionMetadata",
    "IncrementalDetokenizer",
    "LoadedModel",
    "ModelConfig",
    "Tokenizer",
    "load_model",
    "paged_attention",
    "resolve_model_path",
]
