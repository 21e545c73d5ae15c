"""The example model that ships with inferline: ``risk-classifier``.

A logistic regression (standardised features) trained on scikit-learn's bundled breast cancer
dataset (569 rows, 30 features, classes malignant / benign), exported to ONNX with its feature
and class names. It is built once, by ``scripts/bootstrap`` or on first use, into the cache
directory; training is deterministic, so every machine builds the same model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

EXAMPLES = ("risk-classifier",)


def risk_classifier_path(cache_dir: Path) -> Path:
    """The ONNX file, built first if it is not there yet."""
    import sklearn

    path = cache_dir / "examples" / f"risk-classifier-sklearn{sklearn.__version__}.onnx"
    if not path.is_file():
        build_risk_classifier(path)
    return path


def train_risk_classifier() -> tuple[Any, Any]:
    """The fitted pipeline and the dataset it was trained on (sklearn's ``Bunch``)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_breast_cancer()
    x_train, _, y_train, _ = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(x_train.astype("float32"), y_train)
    return model, data


def build_risk_classifier(path: Path) -> dict[str, Any]:
    """Trains, checks and writes the ONNX model to ``path``; returns its test metrics."""
    from sklearn.model_selection import train_test_split

    from inferline.predictors.sklearn_model import to_onnx

    model, data = train_risk_classifier()
    _, x_test, _, y_test = train_test_split(
        data.data, data.target, test_size=0.25, random_state=0, stratify=data.target
    )
    accuracy = float(model.score(x_test.astype("float32"), y_test))
    onnx_bytes = to_onnx(
        model,
        feature_names=[str(n) for n in data.feature_names],
        class_names=[str(n) for n in data.target_names],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_bytes(onnx_bytes)
    partial.replace(path)  # atomic: a concurrent reader sees the whole file or none
    metrics = {"test_accuracy": accuracy, "num_test_rows": len(y_test)}
    path.with_suffix(".json").write_text(json.dumps(metrics))
    return metrics
