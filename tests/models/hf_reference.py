"""Hugging Face transformers as the reference implementation (test dependency only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Reference:
    """A transformers model and tokenizer loaded from the same GGUF file as ours."""

    model: Any
    tokenizer: Any


def load_reference(gguf_path: Path) -> Reference:
    """Loads ``gguf_path`` with transformers (dequantized to float32)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return Reference(model.eval(), tokenizer)


@torch.inference_mode()
def greedy_with_logprobs(
    model: Any, prompt_ids: list[int], num_steps: int
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding with the reference's own KV cache; log-softmax of every step."""
    tokens, logprobs = [], []
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    for _ in range(num_steps):
        step_logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        token = int(step_logprobs.argmax())
        tokens.append(token)
        logprobs.append(step_logprobs)
        out = model(torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, logprobs


def save_as_hf_directory(reference: Reference, directory: Path) -> None:
    """Writes config.json + model.safetensors + tokenizer.json for our HF-directory loader.

    transformers keeps a GGUF "quantizer" attached to a dequantized model and then refuses
    ``save_pretrained``; the weights are plain float tensors, so it is detached first.
    """
    model = reference.model
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(directory, safe_serialization=True)
    reference.tokenizer.save_pretrained(directory)
