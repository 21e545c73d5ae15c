"""Architectures by name: ``ARCHITECTURES.get("qwen2")`` -> the model class."""

from __future__ import annotations

from inferline.core.registry import Registry
from inferline.models.llama import DecoderForCausalLM

ARCHITECTURES: Registry[type[DecoderForCausalLM]] = Registry("architecture")
# Qwen2 is Llama with q/k/v biases; the config's attention_bias says which.
ARCHITECTURES.add("llama", DecoderForCausalLM)
ARCHITECTURES.add("qwen2", DecoderForCausalLM)
