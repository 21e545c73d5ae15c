"""Load a model by short name, ``.gguf`` path or Hugging Face directory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from inferline.core.errors import InvalidParameterError, ModelLoadError, UnknownModelError
from inferline.models import quant_native
from inferline.models.assemble import Tables, assemble
from inferline.models.block_rows import from_gguf
from inferline.models.config import ModelConfig
from inferline.models.generation_config import gguf_sampling_defaults, hf_sampling_defaults
from inferline.models.gguf_file import open_gguf
from inferline.models.hf_dir import fused_weights, is_hf_dir, read_hf_dir
from inferline.models.native import NativeKernels, load_kernels
from inferline.models.quant import WEIGHT_FORMATS, WeightFormat, probe_int4_max_rows
from inferline.models.registry import ARCHITECTURES
from inferline.models.sources import MODEL_SOURCES
from inferline.models.tokenizer import Tokenizer

DEFAULT_MODEL = "smollm2-135m"
KERNELS = ("auto", "native", "torch")


@dataclass
class LoadedModel:
    """A model ready to run, with its tokenizer and where it came from."""

    name: str
    path: Path
    config: ModelConfig
    model: nn.Module
    tokenizer: Tokenizer
    load_time_s: float
    weight_format: WeightFormat = "fp32"
    kernels: str = "torch"  # "native" when the layers run on the fused C kernels
    # the model's own sampling defaults (`generation_config`); empty when it has none
    sampling_defaults: dict[str, float] = field(default_factory=dict)


def resolve_weight_format(weight_format: str, device: str) -> WeightFormat:
    """``auto`` -> mixed on the CPU (int4 and W8A8, chosen per batch size), fp32 elsewhere."""
    if weight_format == "auto":
        return "mixed" if device == "cpu" else "fp32"
    if weight_format not in WEIGHT_FORMATS:
        raise InvalidParameterError(
            f"weight_format must be auto or one of {', '.join(WEIGHT_FORMATS)}, "
            f"got {weight_format!r}",
            "weight_format",
        )
    if weight_format != "fp32" and device != "cpu":
        raise InvalidParameterError(
            f"weight_format {weight_format} runs on the CPU only; use fp32 on {device}",
            "weight_format",
        )
    return weight_format


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


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    cache_dir: Path,
    device: str = "cpu",
    weight_format: str = "fp32",
    kernels: str = "auto",
) -> LoadedModel:
    """Loads weights and the tokenizer of ``name``; projections in ``weight_format``.

    Weights are decoded to float32 and (for ``int8``/``int4``/``mixed``) requantized one
    projection at a time (`assemble`) into the formats of the kernels; on the CPU both
    steps run in C (`quant_native`, the same values as the torch code). ``kernels``:
    ``auto`` runs the layers on the fused C kernels where they can be built (CPU only),
    ``native`` insists on them, ``torch`` never uses them.
    """
    if kernels not in KERNELS:
        raise InvalidParameterError(
            f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}", "kernels"
        )
    resolved = resolve_weight_format(weight_format, device)
    start = time.perf_counter()
    path = resolve_model_path(name, cache_dir)
    if device == "cpu":
        quant_native.enable(cache_dir)  # C decoding/quantizing: same values, ~10x faster
    native = _native_kernels(kernels, device, cache_dir)
    checkpoint = _open_checkpoint(path, resolved, native)
    if checkpoint.tokenizer.vocab_size > checkpoint.config.vocab_size:
        raise ModelLoadError(
            f"tokenizer has {checkpoint.tokenizer.vocab_size} tokens "
            f"but the model only {checkpoint.config.vocab_size}"
        )
    model = ARCHITECTURES.get(checkpoint.config.architecture)(checkpoint.config)
    # storage uninitialised: `assemble` assigns every weight, quantizing each projection as
    # it arrives, so the floats of the whole model never exist at once
    assemble(model, checkpoint.weights, resolved, native, checkpoint.tables)
    model = model.to(device).eval()
    model.use_native(native)
    used = "native" if model.native is not None else "torch"
    if (active := quant_native.active()) is not None:
        active.release_scratch()
    _release_free_memory()
    elapsed = time.perf_counter() - start
    return LoadedModel(
        name, path, checkpoint.config, model, checkpoint.tokenizer, elapsed, resolved, used,
        checkpoint.sampling_defaults,
    )  # fmt: skip


@dataclass
class _Checkpoint:
    """An opened checkpoint: what is known before its weights are read, and its weights
    as a lazy stream (for `assemble`)."""

    config: ModelConfig
    tokenizer: Tokenizer
    sampling_defaults: dict[str, float]
    weights: Iterator[tuple[str, torch.Tensor]]
    tables: Tables = (None, None)


def _open_checkpoint(
    path: Path, weight_format: WeightFormat, q4: NativeKernels | None
) -> _Checkpoint:
    """A GGUF file or an HF directory, opened. From a GGUF file a quantized model keeps
    its embedding and head tables as `BlockRows` (never decoded whole) and reads its
    projections through one scratch buffer (`GGUFModelFile.weights`).

    In ``mixed``, runs the 4-bit/W8A8 probe (`probe_int4_max_rows`, on our 4-bit kernel
    with ``q4``; cached for `assemble`) before reading weights, so its 64 MiB
    cache-evicting buffer never coexists with them.
    """
    if path.is_dir():
        hf = read_hf_dir(path)
        if weight_format == "mixed":
            _probe(hf.config, q4)
        tokenizer = Tokenizer.from_hf_files(
            hf.tokenizer_json, hf.tokenizer_config, hf.generation_config
        )
        defaults = hf_sampling_defaults(hf.generation_config)
        return _Checkpoint(hf.config, tokenizer, defaults, fused_weights(hf.weights))
    opened = open_gguf(path)
    if weight_format == "mixed":
        _probe(opened.config, q4)
    tokenizer = Tokenizer.from_gguf(opened.tokenizer())
    defaults = gguf_sampling_defaults(opened.header.fields)
    if weight_format == "fp32":
        return _Checkpoint(opened.config, tokenizer, defaults, opened.weights())
    header = opened.header
    tables = (from_gguf(header, "token_embd.weight"), from_gguf(header, "output.weight"))
    names = ("model.embed_tokens.weight", "lm_head.weight")
    skip = frozenset(name for name, table in zip(names, tables, strict=True) if table)
    weights = opened.weights(scratch=True, skip=skip)
    return _Checkpoint(opened.config, tokenizer, defaults, weights, tables)


def _probe(config: ModelConfig, q4: NativeKernels | None) -> None:
    for shape in config.projection_shapes().values():  # each projection's own crossover
        probe_int4_max_rows(*shape, q4=q4)


def _release_free_memory() -> None:
    """Hands freed heap pages back to the OS (glibc keeps them after loading: measured
    1.12 GB resident after loading SmolLM2 in the mixed format, 0.6 GB after the trim)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _native_kernels(kernels: str, device: str, cache_dir: Path) -> NativeKernels | None:
    """The native kernels when asked and possible (None: the torch path and its int4)."""
    if kernels == "torch" or device != "cpu":
        if kernels == "native":
            raise InvalidParameterError("native kernels run on the CPU only", "kernels")
        return None
    native = load_kernels(cache_dir)
    if native is None and kernels == "native":
        raise ModelLoadError("native kernels were asked for but could not be built (see log)")
    return native
