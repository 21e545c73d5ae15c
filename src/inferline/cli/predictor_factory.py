"""Builds and sets up the micro-batched models of a models file (`inferline serve --config`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from inferline.cli.models_file import PredictorSpec
from inferline.core.errors import InvalidParameterError, ModelLoadError
from inferline.core.predictor import Predictor
from inferline.server.predictors import PredictorEntry

_OPTIONS = {
    "sentence-embeddings": set(),
    "onnx": {"threads", "feature_names", "class_names"},
    "sklearn": {"threads"},
    "torch": {"num_features", "outputs", "feature_names", "class_names"},
    "noop": {"num_features", "feature_names"},
}


def build_predictors(
    specs: list[PredictorSpec], cache_dir: Path, *, trust_pickle: bool
) -> list[PredictorEntry]:
    """Every model loaded and set up (slow), in the file's order."""
    entries = []
    for spec in specs:
        unknown = sorted(set(spec.options) - _OPTIONS[spec.kind])
        if unknown:
            raise InvalidParameterError(
                f"{spec.name}: a {spec.kind} model takes no option {unknown[0]!r}", unknown[0]
            )
        predictor = _BUILDERS[spec.kind](spec, cache_dir, trust_pickle)
        predictor.setup()
        entries.append(PredictorEntry(predictor, spec.batching))
    return entries


def _embeddings(spec: PredictorSpec, _: Path, __: bool) -> Predictor:
    from inferline.predictors import SentenceEmbedder

    return SentenceEmbedder(spec.name, spec.source or "all-minilm-l6-v2")


def _onnx(spec: PredictorSpec, cache_dir: Path, _: bool) -> Predictor:
    from inferline.predictors import OnnxPredictor

    return OnnxPredictor(spec.name, _source_path(spec, cache_dir), **spec.options)


def _sklearn(spec: PredictorSpec, _: Path, trust_pickle: bool) -> Predictor:
    from inferline.predictors.sklearn_model import load_pickled_estimator

    return load_pickled_estimator(
        spec.name, Path(spec.source), trust_pickle=trust_pickle, **spec.options
    )


def _torch(spec: PredictorSpec, _: Path, __: bool) -> Predictor:
    from inferline.predictors.torch_module import TorchModulePredictor

    return TorchModulePredictor(spec.name, Path(spec.source), **spec.options)


def _noop(spec: PredictorSpec, _: Path, __: bool) -> Predictor:
    from inferline.predictors import NoopPredictor

    return NoopPredictor(
        spec.name, int(spec.options.get("num_features", 30)), spec.options.get("feature_names")
    )


def _source_path(spec: PredictorSpec, cache_dir: Path) -> Path:
    if spec.source.startswith("example:"):
        from inferline.predictors.examples import EXAMPLES, risk_classifier_path

        example = spec.source.removeprefix("example:")
        if example not in EXAMPLES:
            raise ModelLoadError(f"{spec.name}: no example {example!r} ({', '.join(EXAMPLES)})")
        return risk_classifier_path(cache_dir)
    path = Path(spec.source)
    if not path.is_file():
        raise ModelLoadError(f"{spec.name}: no file at {path}")
    return path


_BUILDERS: dict[str, Callable[[PredictorSpec, Path, bool], Any]] = {
    "sentence-embeddings": _embeddings,
    "onnx": _onnx,
    "sklearn": _sklearn,
    "torch": _torch,
    "noop": _noop,
}
