"""scikit-learn models: converted to ONNX with skl2onnx and run on onnxruntime.

A fitted estimator saved with pickle or joblib can run code when it is loaded, so a pickle is
read only when the server was started with ``--trust-pickle``. The safe route is to convert
the model to ONNX where it was trained (`to_onnx` below does it) and serve the ``.onnx``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from inferline.core.errors import ModelLoadError
from inferline.predictors.onnx_model import OnnxPredictor


class UntrustedPickleError(ModelLoadError):
    """A pickle was named without ``--trust-pickle``."""


def to_onnx(
    estimator: Any, feature_names: list[str] | None = None, class_names: list[str] | None = None
) -> bytes:
    """A fitted scikit-learn estimator (or pipeline) -> ONNX bytes with float32 input.

    Classifiers get a plain probability tensor (no ZipMap); feature and class names are
    stored in the model's metadata, where `OnnxPredictor` finds them.
    """
    from skl2onnx import to_onnx as convert

    num_features = getattr(estimator, "n_features_in_", None)
    if num_features is None:
        raise ModelLoadError("the estimator is not fitted (it has no n_features_in_)")
    if feature_names is None and hasattr(estimator, "feature_names_in_"):
        feature_names = [str(n) for n in estimator.feature_names_in_]
    import numpy as np

    sample = np.zeros((1, num_features), dtype=np.float32)
    options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
    try:
        model = convert(estimator, sample, options=options, target_opset=17)
    except Exception as error:  # skl2onnx raises many kinds for unsupported estimators
        raise ModelLoadError(
            f"skl2onnx cannot convert {type(estimator).__name__}: {error}"
        ) from error
    if class_names is None and hasattr(estimator, "classes_"):
        class_names = [str(c) for c in estimator.classes_]
    for key, value in (("feature_names", feature_names), ("class_names", class_names)):
        if value:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, json.dumps(list(value))
    return bytes(model.SerializeToString())


def load_pickled_estimator(
    name: str, path: Path, *, trust_pickle: bool, threads: int = 1
) -> OnnxPredictor:
    """Unpickles a fitted estimator (only if trusted) and serves it through ONNX."""
    if not trust_pickle:
        raise UntrustedPickleError(
            f"{name}: {path} is a pickle, and loading a pickle runs code from the file. "
            "Convert it to ONNX (inferline.predictors.sklearn_model.to_onnx) or start the "
            "server with --trust-pickle if you trust its origin."
        )
    try:
        if path.suffix == ".joblib":
            import joblib

            estimator = joblib.load(path)
        else:
            with path.open("rb") as file:
                estimator = pickle.load(file)  # noqa: S301 - explicitly trusted by the operator
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise ModelLoadError(f"{name}: cannot read {path}: {error}") from error
    return OnnxPredictor(name, to_onnx(estimator), threads=threads)
