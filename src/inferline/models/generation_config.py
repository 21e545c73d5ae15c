"""A model's own sampling defaults: ``generation_config.json`` of a Hugging Face directory, or
the ``general.sampling.*`` keys a GGUF file may carry (llama.cpp's names).

Only the fields vLLM takes from a generation config (``--generation-config auto``) are read:
temperature, top_p, top_k, min_p, repetition_penalty. ``do_sample`` is ignored, as vLLM
does. A value our `SamplingParams` would refuse is dropped with a warning (never a 400 for a
field the client did not send).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.core.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

_HF_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
}
_GGUF_KEYS = {
    "temperature": "general.sampling.temp",
    "top_p": "general.sampling.top_p",
    "top_k": "general.sampling.top_k",
    "min_p": "general.sampling.min_p",
    "repetition_penalty": "general.sampling.penalty_repeat",
}


def hf_sampling_defaults(generation_config: Mapping[str, Any]) -> dict[str, float]:
    """The sampling defaults in a ``generation_config.json`` (empty when it has none)."""
    return _valid({name: generation_config.get(key) for name, key in _HF_KEYS.items()})


def gguf_sampling_defaults(fields: Mapping[str, Any]) -> dict[str, float]:
    """The sampling defaults in a GGUF file's metadata (empty when it has none)."""
    return _valid({name: fields.get(key) for name, key in _GGUF_KEYS.items()})


def _valid(values: Mapping[str, Any]) -> dict[str, float]:
    defaults: dict[str, float] = {}
    for name, value in values.items():
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        value = int(value) if name == "top_k" else float(value)
        field: dict[str, Any] = {name: value}
        try:
            SamplingParams(**field)
        except InvalidParameterError as error:
            logger.warning("ignoring the model's default %s: %s", name, error)
            continue
        defaults[name] = value
    return defaults
