"""`LayerStack` (a step's layers in one native call) against `fused_forward`,
which makes the same kernel calls one by one from Python: the results are bit for bit equal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import inferline.models.fused_forward as fused_forward_module
from inferline import SamplingParams
from inferline.engine import EngineConfig, LLMEngine, SchedulerConfig
from inferline.models import assemble as assemble_module
from inferline.models import load_model
from inferline.models.assemble import assemble
from inferline.models.attention import AttentionMetadata, DecodeBatch, PrefillBatch
from inferline.models.config import ModelConfig
from inferline.models.fused_forward import fused_forward
from inferline.models.kv_layout import cache_of
from inferline.models.layer_stack import LayerStack, layer_stack_of
from inferline.models.llama import DecoderForCausalLM
from inferline.models.native import NativeKernels
from inferline.models.quant import Int8Weight, WeightFormat
from inferline.models.row_choice import kernels_chosen_for
from tests.conftest import PARITY_PROMPTS, run_to_completion

BLOCK = 16


# mixed: each projection's int4/W8A8 crossover, so that a 4-row step runs both kernels
CROSSOVERS = {"qkv_proj": 8, "o_proj": 2, "gate_up_proj": 3, "down_proj": 4}


def tiny_qwen(
    kernels: NativeKernels,
    weight_format: WeightFormat = "int4",
    monkeypatch: pytest.MonkeyPatch | None = None,
) -> DecoderForCausalLM:
    """A random two-layer model with Qwen2's qkv bias and grouped kv heads: all in q4
    (``int4``), all packed int8 (``int8``), or both with `CROSSOVERS` (``mixed``)."""
    config = ModelConfig(
        architecture="qwen2", vocab_size=320, hidden_size=256, intermediate_size=512,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64, rope_theta=10000.0,
        rms_norm_eps=1e-6, max_position_embeddings=256, tie_word_embeddings=True,
        attention_bias=True,
    )  # fmt: skip
    model = DecoderForCausalLM(config)
    gen = torch.Generator().manual_seed(7)
    weights = [
        (name, torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if "norm" in name else 0.0))
        for name, p in model.named_parameters()
    ]
    if weight_format == "mixed":
        assert monkeypatch is not None
        shapes = {shape: name for name, shape in config.projection_shapes().items()}
        assert len(shapes) == len(CROSSOVERS), "two projections of one shape"
        monkeypatch.setattr(
            assemble_module, "probe_int4_max_rows", lambda *shape, q4: CROSSOVERS[shapes[shape]]
        )
    assemble(model, weights, weight_format, kernels)
    model.use_native(kernels)
    return model


Step = tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata]


def decode_step(kv_dtype: torch.dtype) -> Step:
    """Four single-token queries, in shuffled rows: three sequences, one with a drafted
    second query (two queries of one sequence, as speculative verification runs them)."""
    gen = torch.Generator().manual_seed(3)
    caches = [cache_of(torch.randn(2, 12 * BLOCK, 2, 64, generator=gen), kv_dtype) for _ in "ab"]
    tables = torch.tensor([[3, 0, 0], [5, 1, 7], [2, 9, 0], [2, 9, 0]], dtype=torch.int32)
    context_lens = torch.tensor([5, 40, 17, 18], dtype=torch.int32)
    token_rows = torch.tensor([2, 0, 3, 1])
    positions, slots = torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64)
    for table, n, row in zip(tables, context_lens.tolist(), token_rows.tolist(), strict=True):
        positions[row] = n - 1
        slots[row] = table[(n - 1) // BLOCK] * BLOCK + (n - 1) % BLOCK
    decode = DecodeBatch(token_rows, tables, context_lens, BLOCK)
    input_ids = torch.tensor([11, 200, 37, 5])
    return input_ids, positions, torch.stack(caches), AttentionMetadata(slots, [], decode)


def mixed_step(kv_dtype: torch.dtype, with_decodes: bool = True) -> Step:
    """Two single-token queries (rows 0, 1; without them: none) beside two prefill chunks: 20
    tokens at positions 5-24 of a sequence with 5 cached, 9 tokens of a new one."""
    gen = torch.Generator().manual_seed(4)
    caches = [cache_of(torch.randn(2, 12 * BLOCK, 2, 64, generator=gen), kv_dtype) for _ in "ab"]
    decode_tables = torch.tensor([[3, 0], [5, 1]], dtype=torch.int32)
    context_lens = torch.tensor([5, 30], dtype=torch.int32)
    chunk_tables = torch.tensor([[2, 9], [4, 0]], dtype=torch.int32)
    spans = [(5, 20), (0, 9)]  # first position, token count
    decodes = 2 if with_decodes else 0
    positions = [n - 1 for n in context_lens.tolist()][:decodes]
    tables = list(decode_tables)[:decodes]
    chunks = []
    for (start, count), table in zip(spans, chunk_tables, strict=True):
        chunks.append([len(positions), start, count])
        positions += range(start, start + count)
        tables += [table] * count
    position = torch.tensor(positions)
    slots = torch.stack(tables).long()[torch.arange(len(positions)), position // BLOCK] * BLOCK
    slots += position % BLOCK
    decode = DecodeBatch(torch.arange(2), decode_tables, context_lens, BLOCK) if decodes else None
    prefill = PrefillBatch(torch.tensor(chunks), chunk_tables, BLOCK)
    input_ids = torch.randint(0, 320, (len(positions),), generator=gen)
    metadata = AttentionMetadata(slots, [], decode, prefill)
    return input_ids, position, torch.stack(caches), metadata


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.int8])
@pytest.mark.parametrize("weight_format", ["int8", "mixed"])
@pytest.mark.parametrize("with_decodes", [True, False])
def test_a_step_with_prefill_chunks_is_bit_for_bit_the_layer_by_layer_one(
    kernels: NativeKernels,
    kv_dtype: torch.dtype,
    weight_format: WeightFormat,
    with_decodes: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefill chunks alone and beside decodes (29 or 31 rows: the W8A8 kernels, AMX
    where the CPU has it): hidden states and every layer's cache as `fused_forward`'s."""
    if not kernels.i8_path:
        pytest.skip("no packed int8 kernel on this CPU: W8A8 stays with torch")
    model = tiny_qwen(kernels, weight_format, monkeypatch)
    stack = model.layer_stack
    assert stack is not None
    input_ids, positions, caches, metadata = mixed_step(kv_dtype, with_decodes)
    assert stack.runs(input_ids.shape[0], metadata)
    ours_cache, reference_cache = caches.clone(), caches.clone()
    ours = fused_forward(model, kernels, input_ids, positions, ours_cache, metadata)
    model.layer_stack = None
    reference = fused_forward(model, kernels, input_ids, positions, reference_cache, metadata)
    assert torch.equal(ours, reference)
    assert torch.equal(ours_cache, reference_cache)
    assert not torch.equal(ours_cache, caches)


@pytest.mark.parametrize("kv_dtype", [torch.bfloat16, torch.int8])
@pytest.mark.parametrize("weight_format", ["int8", "mixed"])
@pytest.mark.parametrize(
    "wanted",
    [[21, 30, 1], [30], [0, 1], [], [5, 0, 21, 1, 30, 12], [30, *range(31)], [30, 30, 4]],
    ids=[
        "chunk-ends-and-a-decode",
        "one-row",
        "decodes",
        "none",
        "scattered",
        "sampled-and-every-prompt-row",
        "repeated",
    ],  # fmt: skip
)
def test_wanted_rows_alone_through_the_last_layer_are_bit_for_bit(
    kernels: NativeKernels,
    kv_dtype: torch.dtype,
    weight_format: WeightFormat,
    wanted: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the rows whose logits are wanted (each chunk's last row, decodes, any order,
    none, repeated, all of them after a sampled one: prompt logprobs), the stack computes
    the last layer's attention and MLP for those rows alone: the same hidden states as the
    whole step's, bit for bit, in their order, and every row's keys and values in every
    layer's cache."""
    if not kernels.i8_path:
        pytest.skip("no packed int8 kernel on this CPU: W8A8 stays with torch")
    model = tiny_qwen(kernels, weight_format, monkeypatch)
    input_ids, positions, caches, metadata = mixed_step(kv_dtype)
    rows = torch.tensor(wanted, dtype=torch.int64)
    ours_cache, reference_cache = caches.clone(), caches.clone()
    ours = fused_forward(model, kernels, input_ids, positions, ours_cache, metadata, rows)
    model.layer_stack = None
    reference = fused_forward(model, kernels, input_ids, positions, reference_cache, metadata)
    assert ours.shape == (len(wanted), reference.shape[1])
    assert torch.equal(ours, reference[rows])
    assert torch.equal(ours_cache, reference_cache)


@pytest.mark.parametrize("compact", [None, torch.bfloat16])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize(("weight_format", "choice_rows"), [
    ("int4", None), ("int8", None), ("mixed", None), ("mixed", 1), ("mixed", 3)
])  # fmt: skip
def test_a_decode_step_is_bit_for_bit_the_layer_by_layer_one(
    kernels: NativeKernels,
    kv_dtype: torch.dtype,
    weight_format: WeightFormat,
    choice_rows: int | None,
    compact: torch.dtype | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Hidden states and the K/V written to every layer's cache, with bias and grouped
    heads; 4-bit, packed int8, or both in one step (a projection's kernel chosen by the
    step's rows, or by the rows `kernels_chosen_for` says, as speculative steps run);
    gate/up products as int32 sums or bf16 (`fused_forward.COMPACT`)."""
    if weight_format != "int4" and not kernels.i8_path:
        pytest.skip("no packed int8 kernel on this CPU: W8A8 stays with torch")
    monkeypatch.setattr(fused_forward_module, "COMPACT", compact)  # read as the stack is built
    model = tiny_qwen(kernels, weight_format, monkeypatch)
    stack = model.layer_stack
    assert stack is not None
    input_ids, positions, caches, metadata = decode_step(kv_dtype)
    assert stack.runs(4, metadata)
    ours_cache, reference_cache = caches.clone(), caches.clone()
    with kernels_chosen_for(choice_rows or 4):
        ours = fused_forward(model, kernels, input_ids, positions, ours_cache, metadata)
        model.layer_stack = None
        reference = fused_forward(model, kernels, input_ids, positions, reference_cache, metadata)
    assert torch.equal(ours, reference)
    assert torch.equal(ours_cache, reference_cache)
    assert not torch.equal(ours_cache, caches)  # the step wrote its K/V


def test_steps_it_does_not_cover_go_layer_by_layer(kernels: NativeKernels) -> None:
    """Rows left to torch's SDPA (a head layout the prefill kernel does not handle), and
    models with a projection on a torch kernel."""
    model = tiny_qwen(kernels)
    stack = model.layer_stack
    assert stack is not None
    input_ids, _, _, metadata = mixed_step(torch.float32)
    assert stack.runs(input_ids.shape[0], metadata)
    metadata.groups = [object()]  # type: ignore[list-item]  # some rows for SDPA
    assert not stack.runs(input_ids.shape[0], metadata)
    down = model.layers[1].down_proj
    down.int8 = Int8Weight(torch.zeros(512, 256, dtype=torch.int8), torch.ones(256))
    down.int4_max_rows = 2  # torch's W8A8 above 2 rows
    assert layer_stack_of(model, kernels) is None


def test_a_model_whose_norms_differ_in_epsilon_has_none(kernels: NativeKernels) -> None:
    """The C stack normalizes with one epsilon; a model with another in some layer keeps
    the layer-by-layer path."""
    model = tiny_qwen(kernels)
    assert layer_stack_of(model, kernels) is not None
    model.layers[1].post_attention_layernorm.eps = 1e-5
    assert layer_stack_of(model, kernels) is None


@pytest.fixture(scope="module")
def smollm_mixed(cache_dir: Path):  # type: ignore[no-untyped-def]
    """SmolLM2 as served by default: q4 up to each projection's probed crossover, W8A8 above."""
    return load_model("smollm2-135m", cache_dir=cache_dir, weight_format="mixed")


def test_engine_outputs_are_the_same_with_and_without_it(smollm_mixed, cache_dir, monkeypatch):  # type: ignore[no-untyped-def]
    """Speculative drafts, and prefill chunks beside decodes: the same tokens and
    logprobs, and the stack ran some of the steps."""
    stack = smollm_mixed.model.layer_stack
    assert stack is not None
    steps = []
    run_stack = LayerStack.run
    monkeypatch.setattr(LayerStack, "run", lambda *a: steps.append(1) or run_stack(*a))
    params = SamplingParams(max_tokens=16, temperature=0, logprobs=3)
    config = EngineConfig(
        cache_dir=cache_dir, scheduler=SchedulerConfig(max_num_batched_tokens=64)
    )  # chunked prefill beside decodes

    def run() -> list:  # type: ignore[type-arg]
        engine = LLMEngine(config, loaded=smollm_mixed)  # fresh: no prefix cache shared
        return run_to_completion(engine, PARITY_PROMPTS + ["1, 2, 3, 4, 5, 6, 7,"], params)

    ours = run()
    assert steps
    monkeypatch.setattr(smollm_mixed.model, "layer_stack", None)
    reference = run()
    for a, b in zip(ours, reference, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert [p.logprob for p in a.outputs[0].logprobs] == [
            p.logprob for p in b.outputs[0].logprobs
        ]
