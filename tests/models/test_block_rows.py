"""`BlockRows`: a table kept in its GGUF blocks' size decodes to the exact floats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from inferline.models import block_rows
from inferline.models.block_rows import SUPPORTED, from_blocks
from tests.models.test_load_kernels import same_bits, synthetic_blocks


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda q: q.name)
def test_rows_are_the_decoded_tables_rows(qtype, monkeypatch, quant_kernels) -> None:  # type: ignore[no-untyped-def]
    """On the torch code and on the C kernels (`quant_kernels`): the same fields."""
    monkeypatch.setattr(block_rows, "_CHUNK_BLOCKS", 7)  # several chunks, a ragged last one
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rows, cols = 40, 2 * 256  # whole blocks of every format per row
    raw = synthetic_blocks(qtype, rows * cols // block_size, seed=7 + int(qtype))
    table = torch.from_numpy(
        gguf_dequantize(raw.reshape(-1, type_size), qtype).astype(np.float32).reshape(rows, cols)
    )
    stored = from_blocks(raw, qtype, (rows, cols))
    ids = torch.tensor([[0, 39, 5], [5, 17, 1]])
    assert same_bits(stored.rows(ids), table[ids])
    assert same_bits(stored.dequantize(chunk_rows=16), table)
    assert stored.nbytes <= 1.25 * rows * cols + 2 * rows * cols / 16


def test_other_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="F16"):
        from_blocks(np.zeros(8, np.uint8), GGMLQuantizationType.F16, (2, 2))


def test_the_real_embedding_table(cache_dir) -> None:  # type: ignore[no-untyped-def]
    from inferline.models import resolve_model_path
    from inferline.models.gguf_file import _dequantize
    from inferline.models.gguf_header import read_gguf_header

    header = read_gguf_header(resolve_model_path("smollm2-135m", cache_dir))
    stored = block_rows.from_gguf(header, "token_embd.weight")  # Q8_0 [49152, 576]
    assert stored is not None and stored.shape == (49152, 576)
    table = torch.from_numpy(
        _dequantize(header, next(t for t in header.tensors if t.name == "token_embd.weight"))
    )
    ids = torch.tensor([0, 1, 2, 100, 49151])
    assert same_bits(stored.rows(ids), table[ids])
    assert stored.nbytes < table.nbytes / 3.5  # 1.125 bytes a value against 4
    assert block_rows.from_gguf(header, "output_norm.weight") is None  # F32: kept as floats
