"""Tabular predictors: the example classifier, ONNX, scikit-learn pickles and torch modules."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from inferline.core.errors import InvalidParameterError, ModelLoadError
from inferline.predictors import OnnxPredictor
from inferline.predictors.examples import risk_classifier_path, train_risk_classifier
from inferline.predictors.sklearn_model import UntrustedPickleError, load_pickled_estimator
from inferline.predictors.torch_module import TorchModulePredictor


@pytest.fixture(scope="module")
def classifier_path(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    return risk_classifier_path(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def classifier(classifier_path) -> OnnxPredictor:  # type: ignore[no-untyped-def]
    return OnnxPredictor("risk-classifier", classifier_path)


def test_served_predictions_equal_the_models_own(classifier, classifier_path) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime

    model, data = train_risk_classifier()
    rows = data.data.astype(np.float32)
    served = classifier.predict([classifier.decode(row.tolist(), "x") for row in rows])
    session = onnxruntime.InferenceSession(str(classifier_path))
    labels, probabilities = session.run(None, {session.get_inputs()[0].name: rows})
    assert [r["prediction"] for r in served] == labels.tolist()
    got = np.array(
        [[r["probabilities"]["malignant"], r["probabilities"]["benign"]] for r in served]
    )
    np.testing.assert_array_equal(got, probabilities)
    # and the exported model agrees with scikit-learn itself
    assert (labels == model.predict(rows)).mean() >= 0.995
    np.testing.assert_allclose(probabilities, model.predict_proba(rows), atol=1e-4)
    assert {r["label"] for r in served} == {"malignant", "benign"}


def test_rows_by_feature_name_equal_rows_by_position(classifier) -> None:  # type: ignore[no-untyped-def]
    _, data = train_risk_classifier()
    row = data.data[0].tolist()
    named = dict(zip(classifier.feature_names, row, strict=True))
    assert classifier.decode(named, "x") == classifier.decode(row, "x")
    assert classifier.feature_names[0] == "mean radius" and classifier.num_features == 30


def test_bad_rows_name_the_feature(classifier) -> None:  # type: ignore[no-untyped-def]
    row = [1.0] * 30
    with pytest.raises(InvalidParameterError, match="expected 30 features, got 29"):
        classifier.decode(row[:29], "instances[0]")
    with pytest.raises(InvalidParameterError) as error:
        classifier.decode({**dict.fromkeys(classifier.feature_names[1:], 1.0)}, "instances[3]")
    assert error.value.param == "instances[3].mean radius"
    with pytest.raises(InvalidParameterError) as error:
        classifier.decode([*row[:5], float("nan"), *row[6:]], "instances[1]")
    assert error.value.param == "instances[1][5]"


def test_a_pickle_needs_trust(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, data = train_risk_classifier()
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(model))
    with pytest.raises(UntrustedPickleError, match="--trust-pickle"):
        load_pickled_estimator("m", path, trust_pickle=False)
    predictor = load_pickled_estimator("m", path, trust_pickle=True)
    rows = data.data[:50].astype(np.float32)
    served = predictor.predict([r.tolist() for r in rows])
    assert [r["prediction"] for r in served] == model.predict(rows).tolist()
    assert predictor.class_names == ["0", "1"]


def test_zipmap_outputs_are_refused_with_the_fix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from skl2onnx import to_onnx

    model, data = train_risk_classifier()
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(to_onnx(model, data.data[:1].astype(np.float32)).SerializeToString())
    with pytest.raises(ModelLoadError, match="zipmap"):
        OnnxPredictor("z", path)


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def test_torchscript_and_exported_programs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = _Net().eval()
    rows = torch.randn(5, 4)
    expected = net(rows).softmax(-1).detach()
    torch.jit.save(torch.jit.script(net), tmp_path / "net.pt")
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (rows,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "net.pt2")
    with pytest.raises(ModelLoadError, match="num_features"):
        TorchModulePredictor("t", tmp_path / "net.pt", outputs="logits")
    scripted = TorchModulePredictor(
        "t", tmp_path / "net.pt", num_features=4, outputs="logits", class_names=["a", "b", "c"]
    )
    exported = TorchModulePredictor("t", tmp_path / "net.pt2", outputs="logits")
    assert exported.num_features == 4
    for predictor in (scripted, exported):
        results = predictor.predict(rows.tolist())
        got = np.array([list(r["probabilities"].values()) for r in results])
        np.testing.assert_allclose(got, expected.numpy(), atol=1e-6)
        assert [r["prediction"] for r in results] == expected.argmax(-1).tolist()
    assert scripted.predict([[0.0] * 4])[0]["label"] in {"a", "b", "c"}
