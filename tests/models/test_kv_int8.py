"""The int8 KV cache (`kv_layout`): rotated rows within half a step of their values, the same
answers from the native kernels and the torch path, and the model's perplexity kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inferline import SamplingParams
from inferline.models.kv_layout import SCALE_BYTES, read_rows, row_width, write_rows
from inferline.models.rotation import rotated
from tests.conftest import PARITY_PROMPTS, on_torch_path, run_to_completion


def test_int8_rows_round_trip_within_half_a_step() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(6, 3, 64, generator=gen) * torch.tensor([1e-3, 1.0, 300.0])[:, None]
    values[2, 1] = 0.0  # an all-zero row: scale floor, zeros back, no NaN
    cache = torch.zeros(10, 3, row_width(64, torch.int8), dtype=torch.int8)
    slots = torch.tensor([9, 0, 4, 5, 2, 7])
    write_rows(cache, slots, values)
    back = read_rows(cache, slots, torch.float32)
    turned = rotated(values.view(-1, 64)).view(values.shape)  # the int8 rows' basis
    step = turned.abs().amax(-1, keepdim=True) / 127
    stored = rotated(back.view(-1, 64)).view(values.shape)
    assert ((stored - turned).abs() <= step * 0.5001 + 1e-6 * step).all()
    # in the values' own basis the same error, turned: its length at most sqrt(64) half steps
    assert ((back - values).norm(dim=-1) <= (step * 0.5001 * 8).squeeze(-1)).all()
    assert (back[2, 1] == 0).all()
    scales = cache[slots][..., 64:].contiguous().view(torch.float32).squeeze(-1)
    torch.testing.assert_close(scales, step.squeeze(-1).clamp(min=1e-30 / 127))
    assert cache[1].abs().sum() == 0 and cache.shape[-1] == 64 + SCALE_BYTES
    assert read_rows(cache, slots[:2].view(2, 1), torch.bfloat16).shape == (2, 1, 3, 64)


def test_native_and_torch_paths_agree_on_an_int8_cache(make_engine, smollm) -> None:  # type: ignore[no-untyped-def]
    """Prefill chunks beside decodes: the kernels read what the torch path reads.

    Same tokens up to a near tie; logprobs within 0.1, not 1e-4 as with a float cache: the
    paths' K values differ by ~1e-6 (RoPE), which flips a few int8 roundings by a whole step
    (max|row| / 127). Measured: 0.008-0.048 between the paths, against 0.055-0.18 between an
    int8 and a float32 cache on either path (and one of the three prompts diverging there).
    Where the two best tokens are closer than that, the paths may choose differently: with
    AMX prefill attention "9" -1.9993 / "8" -2.0019 here, "8" -2.0000 / "9" -2.0009 on the
    torch path; with balanced keys (`key_balance`) ":" -2.372 / " in" -2.382 here, " in"
    -2.368 / ":" -2.400 there. A sequence is compared up to the first token the paths
    choose differently, and that choice must be within 0.05 of the torch path's best."""
    assert smollm.model.native is not None
    params = SamplingParams(max_tokens=12, temperature=0, logprobs=3)

    def run() -> list:  # type: ignore[type-arg]
        engine = make_engine(max_num_batched_tokens=64, kv_cache_dtype="int8")
        assert engine.kv_cache.tensor.dtype == torch.int8
        return run_to_completion(engine, PARITY_PROMPTS, params)

    native = run()
    reference = on_torch_path(smollm, run)
    diffs = []
    for ours, theirs in zip(native, reference, strict=True):
        for a, b in zip(ours.outputs[0].logprobs, theirs.outputs[0].logprobs, strict=True):
            if a.token_id != b.token_id:
                alternatives = {token: logprob for token, _, logprob in b.top}
                assert b.logprob - alternatives.get(a.token_id, -1e9) < 0.05, (a, b)
                break
            diffs.append(abs(a.logprob - b.logprob))
    assert len(diffs) >= 24 and max(diffs) <= 0.1, (len(diffs), max(diffs))  # of 36


def test_int8_cache_keeps_the_float_caches_perplexity(make_engine) -> None:  # type: ignore[no-untyped-def]
    """fp32 weights, 512 tokens of a fixed text: the cache's rounding alone."""
    from inferline.engine.evaluate import perplexity

    text = (Path(__file__).parent / "data" / "perplexity_text.md").read_text()
    float_engine = make_engine(kv_cache_dtype="float32")
    ids = float_engine.loaded.tokenizer.encode(text)[:512]
    reference = perplexity(float_engine, ids)
    int8 = perplexity(make_engine(kv_cache_dtype="int8"), ids)
    assert int8 == pytest.approx(reference, rel=0.01), (int8, reference)
