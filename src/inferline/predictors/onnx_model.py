"""ONNX models through onnxruntime: the portable format for classic ML.

The model takes one 2-D float input ``[rows, features]``. Its outputs are read the way
skl2onnx writes classifiers (a label tensor ``[rows]`` and a probability tensor
``[rows, classes]``) or regressors (one value tensor); any other model's first output is
returned as ``prediction``. Feature and class names come from the model's metadata
(``feature_names``, ``class_names``: JSON lists) or from the config file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferline.core.errors import ModelLoadError
from inferline.predictors.tabular import TabularOutput, TabularPredictor

_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


class OnnxPredictor(TabularPredictor):
    """A tabular ONNX model on onnxruntime's CPU provider."""

    def __init__(
        self,
        name: str,
        model: str | Path | bytes,
        *,
        threads: int = 1,
        feature_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        import onnxruntime  # a large import, deferred until a model needs it

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        source = str(model) if isinstance(model, Path) else model
        try:
            self.session = onnxruntime.InferenceSession(
                source, options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{name}: onnxruntime cannot load the model: {error}") from error
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 2 or inputs[0].type not in _FLOAT_TYPES:
            described = [(i.name, i.shape, i.type) for i in inputs]
            raise ModelLoadError(
                f"{name}: expected one 2-D float input [rows, features], got {described}"
            )
        self.input_name = inputs[0].name
        self.input_dtype = _FLOAT_TYPES[inputs[0].type]
        num_features = inputs[0].shape[1]
        if not isinstance(num_features, int):
            raise ModelLoadError(f"{name}: the input's feature dimension must be fixed")
        meta = self.session.get_modelmeta().custom_metadata_map
        super().__init__(
            name,
            num_features,
            feature_names or _json_list(meta.get("feature_names")),
            class_names or _json_list(meta.get("class_names")),
        )
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.probability_index = self._find_probabilities()

    def _find_probabilities(self) -> int | None:
        outputs = self.session.get_outputs()
        for index, output in enumerate(outputs):
            if index > 0 and len(output.shape) == 2 and output.type in _FLOAT_TYPES:
                return index
        if any(o.type.startswith("seq(map") for o in outputs):
            raise ModelLoadError(
                f"{self.name}: probabilities come as a ZipMap; convert with "
                "options={'zipmap': False}"
            )
        return None

    def infer(self, features: np.ndarray) -> TabularOutput:
        """Runs the session on one batch."""
        outputs = self.session.run(None, {self.input_name: features.astype(self.input_dtype)})
        probabilities = None
        if self.probability_index is not None:
            probabilities = np.asarray(outputs[self.probability_index])
        predictions = np.asarray(outputs[0])
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        return TabularOutput(predictions, probabilities)

    def describe(self) -> dict[str, Any]:
        """The tabular schemas plus the runtime."""
        return {**super().describe(), "runtime": "onnxruntime"}


def _json_list(text: str | None) -> list[str] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None
