"""Our BERT forward + mean pooling against sentence-transformers on all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from inferline.core.errors import InvalidParameterError
from inferline.predictors import SentenceEmbedder

SENTENCES = [
    "The cat sits on the mat.",
    "A fraud score comes from one forward pass over the transaction's features.",
    "Привет, мир! 你好，世界。 naïve café — emojis 🙂 too",
    "short",
    "",
    "word " * 120,
]


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    model = SentenceEmbedder("all-minilm-l6-v2")
    model.setup()
    return model


def test_vectors_equal_sentence_transformers(embedder) -> None:  # type: ignore[no-untyped-def]
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(embedder.model_dir), device="cpu")
    expected = reference.encode(SENTENCES, batch_size=len(SENTENCES), normalize_embeddings=False)
    ours = np.stack(embedder.predict([embedder.decode(s, "input") for s in SENTENCES]))
    assert ours.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_a_sentence_gets_the_same_vector_alone_or_padded_in_a_batch(embedder) -> None:  # type: ignore[no-untyped-def]
    rows = [embedder.decode(s, "input") for s in SENTENCES]
    batched = embedder.predict(rows)
    for row, vector in zip(rows, batched, strict=True):
        np.testing.assert_allclose(embedder.predict([row])[0], vector, atol=1e-5)


def test_token_ids_are_accepted_and_checked(embedder) -> None:  # type: ignore[no-untyped-def]
    ids = embedder.decode("The cat sits on the mat.", "input")
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    assert embedder.decode(ids, "input") == ids
    with pytest.raises(InvalidParameterError, match=r"input\[2\]: token ids"):
        embedder.decode([101, 10**6], "input[2]")
    with pytest.raises(InvalidParameterError, match="string or a list of token ids"):
        embedder.decode({"text": "x"}, "input")


def test_inputs_over_the_limit_are_refused_not_truncated(embedder) -> None:  # type: ignore[no-untyped-def]
    assert embedder.max_input_tokens == 256
    embedder.decode("word " * 254, "input")  # 254 + [CLS] + [SEP]
    with pytest.raises(InvalidParameterError, match="at most 256 tokens") as error:
        embedder.decode("word " * 255, "input[7]")
    assert error.value.param == "input[7]"
