"""Our GGUF header parser against the gguf package's reader; error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

from inferline.core import ModelLoadError, UnknownModelError
from inferline.models import resolve_model_path
from inferline.models.gguf_file import _dequantize, unpermute_qk_rows
from inferline.models.gguf_header import read_gguf_header


@pytest.fixture(scope="module")
def smollm_path(cache_dir) -> Path:  # type: ignore[no-untyped-def]
    return resolve_model_path("smollm2-135m", cache_dir)


def test_header_matches_the_gguf_package(smollm_path) -> None:  # type: ignore[no-untyped-def]
    ours = read_gguf_header(smollm_path)
    reference = GGUFReader(smollm_path)
    for key in ("llama.block_count", "llama.rope.freq_base", "tokenizer.chat_template"):
        assert ours.fields[key] == reference.fields[key].contents()
    assert (
        ours.fields["tokenizer.ggml.tokens"] == reference.fields["tokenizer.ggml.tokens"].contents()
    )
    assert (
        ours.fields["tokenizer.ggml.merges"][:100]
        == (reference.fields["tokenizer.ggml.merges"].contents()[:100])
    )
    assert [t.name for t in ours.tensors] == [t.name for t in reference.tensors]
    # one tensor of each stored type decodes to the same floats
    for name in ("token_embd.weight", "blk.0.ffn_down.weight", "blk.0.attn_norm.weight"):
        ours_tensor = next(t for t in ours.tensors if t.name == name)
        ref_tensor = next(t for t in reference.tensors if t.name == name)
        expected = dequantize(ref_tensor.data, ref_tensor.tensor_type)
        np.testing.assert_array_equal(_dequantize(ours, ours_tensor), expected)


def test_unpermute_inverts_llama_cpp_permute() -> None:
    heads, head_dim, width = 3, 8, 5
    hf = np.arange(heads * head_dim * width, dtype=np.float32).reshape(heads * head_dim, width)
    # llama.cpp's convert_hf_to_gguf permute
    gguf = hf.reshape(heads, 2, head_dim // 2, width).swapaxes(1, 2).reshape(hf.shape)
    np.testing.assert_array_equal(unpermute_qk_rows(gguf, heads), hf)


def test_not_a_gguf_file_is_a_load_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        read_gguf_header(bogus)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (5).to_bytes(8, "little"))
    with pytest.raises(ModelLoadError, match="corrupt"):
        read_gguf_header(truncated)


def test_unknown_names_and_paths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnknownModelError):
        resolve_model_path("gpt-17", tmp_path)
    with pytest.raises(UnknownModelError):
        resolve_model_path(str(tmp_path / "missing.gguf"), tmp_path)
    with pytest.raises(UnknownModelError):
        resolve_model_path(str(tmp_path), tmp_path)  # a directory without config.json
