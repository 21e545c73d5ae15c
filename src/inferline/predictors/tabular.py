"""Tabular models: rows of numeric features in, a prediction (and class probabilities) out.

A row is either a list of numbers in the model's feature order or an object keyed by feature
name (when the model knows its feature names). Every row is checked before it is batched:
the count of features, that each is a finite number, and that no name is unknown or missing;
the error names the row and the feature.

Each result is ``{"prediction": <the model's own label or value>}``; a classifier adds
``"label"`` (the class name, when known) and ``"probabilities"`` (class name -> probability).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferline.core.errors import InvalidParameterError
from inferline.core.predictor import Predictor, Task


@dataclass(frozen=True)
class TabularOutput:
    """What the model computed for a batch: one prediction per row, probabilities if any."""

    predictions: np.ndarray  # [rows] labels or values, or [rows, k] values
    probabilities: np.ndarray | None = None  # [rows, classes]


class TabularPredictor(Predictor):
    """Validates feature rows and formats results; subclasses implement `infer`.

    Args:
        name: the served name.
        num_features: columns per row.
        feature_names: names of the columns, if known (allows object rows).
        class_names: display names of the probability columns, in column order.
    """

    task: Task = "predict"

    def __init__(
        self,
        name: str,
        num_features: int,
        feature_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.num_features = num_features
        self.feature_names = list(feature_names) if feature_names else None
        if self.feature_names is not None and len(self.feature_names) != num_features:
            raise ValueError(f"{len(self.feature_names)} feature names for {num_features} inputs")
        self.class_names = list(class_names) if class_names else None

    @abstractmethod
    def infer(self, features: np.ndarray) -> TabularOutput:
        """[rows, num_features] float32 -> the model's outputs."""

    def decode(self, raw: Any, field: str) -> list[float]:
        """A list of numbers, or an object keyed by feature name -> the row's values."""
        if isinstance(raw, dict):
            return self._decode_object(raw, field)
        if not isinstance(raw, list):
            raise InvalidParameterError(
                f"{field}: expected a list of {self.num_features} numbers"
                + (" or an object keyed by feature name" if self.feature_names else ""),
                field,
            )
        if len(raw) != self.num_features:
            raise InvalidParameterError(
                f"{field}: expected {self.num_features} features, got {len(raw)}", field
            )
        return [_number(value, f"{field}[{i}]") for i, value in enumerate(raw)]

    def _decode_object(self, raw: dict[str, Any], field: str) -> list[float]:
        if self.feature_names is None:
            raise InvalidParameterError(
                f"{field}: this model has no feature names; send a list of "
                f"{self.num_features} numbers",
                field,
            )
        unknown = [key for key in raw if key not in self.feature_names]
        if unknown:
            raise InvalidParameterError(f"{field}: unknown feature {unknown[0]!r}", field)
        missing = [name for name in self.feature_names if name not in raw]
        if missing:
            raise InvalidParameterError(
                f"{field}: missing feature {missing[0]!r}", f"{field}.{missing[0]}"
            )
        return [_number(raw[name], f"{field}.{name}") for name in self.feature_names]

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        """One result object per row."""
        output = self.infer(np.asarray(batch, dtype=np.float32))
        results = []
        for row in range(len(batch)):
            result: dict[str, Any] = {"prediction": _plain(output.predictions[row])}
            if output.probabilities is not None:
                names = self._class_keys(output.probabilities.shape[1])
                probabilities = output.probabilities[row]
                result["label"] = names[int(np.argmax(probabilities))]
                result["probabilities"] = {
                    name: float(p) for name, p in zip(names, probabilities, strict=True)
                }
            results.append(result)
        return results

    def _class_keys(self, num_classes: int) -> list[str]:
        if self.class_names is not None and len(self.class_names) == num_classes:
            return self.class_names
        return [str(i) for i in range(num_classes)]

    def describe(self) -> dict[str, Any]:
        """JSON Schemas of a row and of a result."""
        row_schema: dict[str, Any] = {
            "type": "array",
            "items": {"type": "number"},
            "minItems": self.num_features,
            "maxItems": self.num_features,
        }
        if self.feature_names:
            row_schema = {
                "oneOf": [
                    row_schema,
                    {
                        "type": "object",
                        "properties": {n: {"type": "number"} for n in self.feature_names},
                        "required": self.feature_names,
                        "additionalProperties": False,
                    },
                ]
            }
        output: dict[str, Any] = {"prediction": {}}
        if self.class_names:
            output["label"] = {"enum": self.class_names}
            output["probabilities"] = {"type": "object"}
        return {
            "input_schema": row_schema,
            "output_schema": {"type": "object", "properties": output},
            "feature_names": self.feature_names,
            "class_names": self.class_names,
        }


class NoopPredictor(TabularPredictor):
    """Returns 0 for every row at no cost: the server's own ceiling, for benchmarks."""

    def infer(self, features: np.ndarray) -> TabularOutput:
        """Zeros."""
        return TabularOutput(np.zeros(len(features), dtype=np.int64))


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidParameterError(f"{field}: expected a number, got {value!r}", field)
    if not math.isfinite(value):
        raise InvalidParameterError(f"{field}: expected a finite number", field)
    return float(value)


def _plain(value: Any) -> Any:
    """A numpy scalar or array -> JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
