"""One-pass models served by micro-batching: sentence embeddings and tabular models.

Each class implements `inferline.core.predictor.Predictor`: `SentenceEmbedder` (our own BERT
forward pass), `OnnxPredictor` (onnxruntime), scikit-learn estimators through
`sklearn_model` (converted to ONNX), `TorchModulePredictor` (TorchScript or exported
programs) and `NoopPredictor` (the server's own ceiling, for benchmarks).
"""

from inferline.predictors.embeddings import SentenceEmbedder
from inferline.predictors.onnx_model import OnnxPredictor
from inferline.predictors.tabular import NoopPredictor, TabularOutput, TabularPredictor

__all__ = [
    "NoopPredictor",
    "OnnxPredictor",
    "SentenceEmbedder",
    "TabularOutput",
    "TabularPredictor",
]
