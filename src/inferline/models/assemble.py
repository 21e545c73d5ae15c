"""Fill a `DecoderForCausalLM` from a stream of named float weights, quantizing as they come.

A checkpoint's weights arrive one tensor at a time, under the model's own parameter names
(`GGUFModelFile.weights`, or `hf_dir.fused_weights`). Each decoder projection is quantized as
soon as it arrives, so the float copy of the whole model never exists: from a GGUF file every
projection is decoded into one reused scratch buffer, and the embedding and head tables stay
in their blocks (`BlockRows`), quantized for the fast head a few thousand rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from inferline.core.errors import ModelLoadError
from inferline.models.block_rows import BlockRows
from inferline.models.head import INT4_MAX_ROWS, ApproximateThenExactHead
from inferline.models.key_balance import KeyBalancer
from inferline.models.llama import DecoderForCausalLM, Linear
from inferline.models.native import NativeKernels
from inferline.models.quant import WeightFormat, probe_int4_max_rows

Tables = tuple[BlockRows | None, BlockRows | None]  # embedding, head (a GGUF file's blocks)


def assemble(
    model: DecoderForCausalLM,
    weights: Iterable[tuple[str, torch.Tensor]],
    weight_format: WeightFormat,
    q4: NativeKernels | None = None,
    tables: Tables = (None, None),
) -> None:
    """Assigns every parameter of ``model`` from ``weights`` (the model's storage is never
    initialised; a missing or misshapen weight is a `ModelLoadError`), quantizing each
    decoder projection in ``weight_format`` as it arrives (`quantize` says how), then
    builds the fast head and installs ``tables`` (whose weights ``weights`` may omit).

    A projection's tensor may be a scratch buffer reused for the next one: it is quantized
    before the next item is read, and no reference to it is kept (a q/k/v weight waiting
    for its bias is copied). Each q/k/v projection's keys are balanced per channel first
    (`key_balance`: exact in every product; for the int8 KV cache's roundings).
    """
    config = model.config
    crossovers = _crossovers(model, weight_format, q4)
    expected = dict(model.named_parameters(remove_duplicate=False))
    embed_table, head_table = tables
    if config.tie_word_embeddings:
        head_table = embed_table
    filled = {"embed_tokens.weight"} if embed_table is not None else set()
    balancer = KeyBalancer(
        config.num_heads, config.num_kv_heads, config.head_dim, config.attention_bias
    )
    if head_table is not None:
        filled.add("lm_head.weight")
    for name, tensor in weights:
        key = name.removeprefix("model.")
        if key not in expected or (config.tie_word_embeddings and key == "lm_head.weight"):
            continue  # not a parameter of ours (e.g. a checkpoint's rotary table)
        if expected[key].shape != tensor.shape:
            raise ModelLoadError(
                f"{key}: checkpoint shape {tuple(tensor.shape)} != {tuple(expected[key].shape)}"
            )
        module_name, _, attr = key.rpartition(".")
        for name, value in balancer.arrive(module_name, attr, tensor):
            _assign(model, module_name, name, value, weight_format, crossovers.get, q4)
            filled.add(f"{module_name}.{name}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
        if "embed_tokens.weight" in filled:
            filled.add("lm_head.weight")
    balancer.finish()
    missing = sorted(set(expected) - filled)
    if missing:
        raise ModelLoadError(f"weights missing from the checkpoint: {missing[:5]}")
    if weight_format != "fp32":
        head_rows = model.int4_max_rows if weight_format == "mixed" else INT4_MAX_ROWS
        model.fast_head = _fast_head(model, head_table, q4, head_rows)
    _install_tables(model, embed_table, head_table)


def _assign(
    model: DecoderForCausalLM,
    module_name: str,
    attr: str,
    value: torch.Tensor,
    weight_format: WeightFormat,
    crossover: Callable[[str], int | None],
    q4: NativeKernels | None,
) -> None:
    """Sets one parameter; a decoder projection's weight is quantized at once
    (``crossover(projection)``: its int4/W8A8 crossover, None for what is not one)."""
    module = model.get_submodule(module_name)
    setattr(module, attr, nn.Parameter(value, requires_grad=False))
    rows = crossover(module_name.rpartition(".")[2])
    if isinstance(module, Linear) and attr == "weight" and rows is not None:
        module.quantize(weight_format, rows, q4)


def _crossovers(
    model: DecoderForCausalLM, weight_format: WeightFormat, q4: NativeKernels | None
) -> dict[str, int]:
    """Each projection's int4/W8A8 crossover in ``mixed`` (probed on its own shape, so a
    layer where int4 never wins keeps one copy), 0 otherwise; sets the model's own (the
    MLP's) for the head."""
    shapes = model.config.projection_shapes()
    crossovers = dict.fromkeys(shapes, 0)
    if weight_format == "mixed":
        crossovers = {name: probe_int4_max_rows(*shape, q4=q4) for name, shape in shapes.items()}
    model.int4_max_rows = crossovers["gate_up_proj"]
    return crossovers


def _fast_head(
    model: DecoderForCausalLM, table: BlockRows | None, q4: NativeKernels | None, rows: int
) -> ApproximateThenExactHead:
    """The quantized head: from the compact table when there is one (its float rows a few
    thousand at a time), else from the float weight.

    int4 or W8A8 heads cost SmolLM2 2-6 % perplexity, and torch's int8 weight-only kernel
    returns bf16 logits (ties and ~0.1 logprob errors), so the head keeps full precision
    for each row's best candidates (`ApproximateThenExactHead`).
    """
    if table is not None:
        return ApproximateThenExactHead.from_table(table, q4=q4, q4_max_rows=rows)
    return ApproximateThenExactHead(model.lm_head.weight.data, q4=q4, q4_max_rows=rows)


def _install_tables(
    model: DecoderForCausalLM, embed: BlockRows | None, head: BlockRows | None
) -> None:
    """Keeps the embedding and head floats as compact `BlockRows`: every row they give is
    bit for bit the float table's, at ~1.1 bytes a value instead of 4 (SmolLM2: 113 MB ->
    32 MB)."""
    empty = nn.Parameter(torch.empty(0), requires_grad=False)
    if embed is not None:
        model.embed_tokens.table, model.embed_tokens.weight = embed, empty
    if head is not None:
        model.head_table = head
        model.lm_head.weight = empty
