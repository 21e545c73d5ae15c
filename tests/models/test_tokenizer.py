"""Tokenizer behaviour that needs no reference implementation."""

from __future__ import annotations

import pytest

from inferline.core import InvalidParameterError
from inferline.models import IncrementalDetokenizer, Tokenizer

MULTIBYTE = "日本語のテキスト 🚀🔥 👩‍👩‍👧 Ελληνικά ﬁ ½"


@pytest.fixture(scope="module")
def tokenizer(smollm) -> Tokenizer:  # type: ignore[no-untyped-def]
    return smollm.tokenizer


def test_incremental_detokenizer_never_emits_broken_utf8(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode(MULTIBYTE)
    # the case we care about exists: some single tokens are partial characters
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    detokenizer = IncrementalDetokenizer(tokenizer)
    deltas = [detokenizer.add([i]) for i in ids] + [detokenizer.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == MULTIBYTE


def test_incremental_detokenizer_skips_special_tokens(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode("<|im_start|>assistant\nHello<|im_end|>")
    kept = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    skipped = IncrementalDetokenizer(tokenizer, skip_special_tokens=True)
    assert "".join(kept.add([i]) for i in ids) + kept.flush() == (
        "<|im_start|>assistant\nHello<|im_end|>"
    )
    assert "".join(skipped.add([i]) for i in ids) + skipped.flush() == "assistant\nHello"


def test_special_token_markup_encodes_to_one_token(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer.encode("<|im_start|>")
    assert len(ids) == 1 and ids[0] in tokenizer.special_token_ids
    assert tokenizer.eos_token_ids == (2,)  # <|im_end|>


def test_digits_are_split_one_by_one_as_llama_cpp_does(tokenizer) -> None:  # type: ignore[no-untyped-def]
    # SmolLM2's GGUF says pre-tokenizer "smollm": every \p{N} character stands alone.
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("x=2024")]
    assert pieces[-4:] == ["2", "0", "2", "4"]


def with_template(tokenizer: Tokenizer, template: str | None) -> Tokenizer:
    """The same vocabulary with another chat template."""
    return Tokenizer(
        tokenizer._tokenizer,
        eos_token_ids=[2],
        bos_token_id=None,
        add_bos_token=False,
        chat_template=template,
    )


def test_chat_template_is_sandboxed(tokenizer) -> None:  # type: ignore[no-untyped-def]
    hostile = with_template(tokenizer, "{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidParameterError) as info:
        hostile.apply_chat_template([{"role": "user", "content": "x"}])
    assert info.value.param == "messages"


def test_template_can_raise_a_clear_error(tokenizer) -> None:  # type: ignore[no-untyped-def]
    strict = with_template(tokenizer, "{{ raise_exception('roles must alternate') }}")
    with pytest.raises(InvalidParameterError, match="roles must alternate"):
        strict.apply_chat_template([{"role": "user", "content": "x"}])


def test_model_without_template_says_so(tokenizer) -> None:  # type: ignore[no-untyped-def]
    bare = with_template(tokenizer, None)
    with pytest.raises(InvalidParameterError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "x"}])
