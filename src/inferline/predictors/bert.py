"""A BERT encoder (post-norm, absolute positions, GELU) read from a Hugging Face directory.

Enough of BERT for sentence-embedding models such as all-MiniLM-L6-v2: ``config.json`` and
``model.safetensors`` in, last hidden states out. Padded rows are masked out of attention,
so a sentence gets the same vector alone or in a batch of longer ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from inferline.core.errors import ModelLoadError


@dataclass(frozen=True)
class BertConfig:
    """The fields of ``config.json`` the forward pass uses."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float
    pad_token_id: int

    @classmethod
    def read(cls, model_dir: Path) -> BertConfig:
        """Reads ``config.json``; only BERT-style models with GELU are accepted."""
        raw = json.loads((model_dir / "config.json").read_text())
        if raw.get("model_type") != "bert" or raw.get("hidden_act", "gelu") != "gelu":
            raise ModelLoadError(
                f"{model_dir}: only BERT models with GELU are supported "
                f"(model_type={raw.get('model_type')!r}, hidden_act={raw.get('hidden_act')!r})"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelLoadError(f"{model_dir}: only absolute position embeddings are supported")
        return cls(
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_positions=raw["max_position_embeddings"],
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            pad_token_id=raw.get("pad_token_id", 0),
        )


class BertEncoder:
    """Token ids -> last hidden states, in float32, no gradients."""

    def __init__(self, config: BertConfig, weights: dict[str, torch.Tensor]) -> None:
        self.config = config
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        self.w = {k[len(prefix) :]: v.float().contiguous() for k, v in weights.items()}
        missing = [k for k in self._required() if k not in self.w]
        if missing:
            raise ModelLoadError(f"the BERT checkpoint lacks {', '.join(missing[:5])}")

    @classmethod
    def load(cls, model_dir: Path) -> BertEncoder:
        """Reads ``config.json`` and ``model.safetensors`` from ``model_dir``."""
        path = model_dir / "model.safetensors"
        if not path.is_file():
            raise ModelLoadError(f"{model_dir} holds no model.safetensors")
        return cls(BertConfig.read(model_dir), load_file(str(path)))

    def _required(self) -> list[str]:
        names = [
            "embeddings.word_embeddings.weight",
            "embeddings.position_embeddings.weight",
            "embeddings.token_type_embeddings.weight",
        ]
        for i in range(self.config.num_layers):
            names += [f"encoder.layer.{i}.{part}.weight" for part in _LAYER_PARTS]
        return names

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, seq] ids and 0/1 mask -> [batch, seq, hidden] states."""
        c, w = self.config, self.w
        seq = input_ids.shape[1]
        x = (
            w["embeddings.word_embeddings.weight"][input_ids]
            + w["embeddings.position_embeddings.weight"][:seq]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._norm(x, "embeddings.LayerNorm")
        keep = attention_mask.bool()[:, None, None, :]  # [batch, 1, 1, seq]
        for i in range(c.num_layers):
            x = self._layer(x, keep, f"encoder.layer.{i}.")
        return x

    def _layer(self, x: torch.Tensor, keep: torch.Tensor, p: str) -> torch.Tensor:
        c = self.config
        batch, seq, hidden = x.shape
        heads, head_dim = c.num_heads, hidden // c.num_heads

        def project(name: str) -> torch.Tensor:
            y = self._linear(x, p + f"attention.self.{name}")
            return y.view(batch, seq, heads, head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            project("query"), project("key"), project("value"), attn_mask=keep
        )
        attended = attended.transpose(1, 2).reshape(batch, seq, hidden)
        x = self._norm(
            self._linear(attended, p + "attention.output.dense") + x,
            p + "attention.output.LayerNorm",
        )
        inner = F.gelu(self._linear(x, p + "intermediate.dense"))
        return self._norm(self._linear(inner, p + "output.dense") + x, p + "output.LayerNorm")

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(
            x,
            (x.shape[-1],),
            self.w[name + ".weight"],
            self.w[name + ".bias"],
            self.config.layer_norm_eps,
        )


_LAYER_PARTS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)
