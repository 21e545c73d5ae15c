"""The predictor contract: one-pass models (embeddings, classifiers) served in batches.

A predictor is set up once, then called with batches of decoded rows. Decoding happens per
request, before any batching, so bad input is refused with a 400 naming the field and never
reaches the model:

    predictor.setup()                      # load weights, open the session (slow, once)
    row = predictor.decode(raw, "input[3]")  # validate one JSON row -> model input
    results = predictor.predict([row, ...])  # one result, or an exception, per row

``predict`` runs on the batcher's worker thread, one batch at a time. A row that the model
cannot handle may come back as an exception in its place; the other rows still succeed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Task = Literal["embeddings", "predict"]


@dataclass(frozen=True)
class Feature:
    """One named input column of a tabular model (numbers only)."""

    name: str
    dtype: str = "float32"


class Predictor(ABC):
    """A model that answers in one forward pass.

    Attributes:
        name: the name clients use (``model`` in requests).
        task: ``"embeddings"`` (served on ``/v1/embeddings``) or ``"predict"``
            (``/v1/predict/{name}``).
    """

    name: str
    task: Task

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Loads what the model needs; called once before the first batch."""

    @abstractmethod
    def decode(self, raw: Any, field: str) -> Any:
        """Validates one JSON row and turns it into model input.

        Raises:
            InvalidParameterError: naming ``field`` (or a sub-field of it).
        """

    @abstractmethod
    def predict(self, batch: list[Any]) -> Sequence[Any]:
        """One result per decoded row, in order (an exception in place of a failed row)."""

    def describe(self) -> dict[str, Any]:
        """Input and output schemas (JSON Schema) and settings, for ``/v1/models``."""
        return {}


class Embedder(Predictor):
    """A predictor whose rows are token ids and whose results are unit vectors."""

    task: Task = "embeddings"
    dimensions: int
    max_input_tokens: int

    @abstractmethod
    def decode(self, raw: Any, field: str) -> list[int]:
        """Text (or the model's own token ids) -> token ids within ``max_input_tokens``."""
