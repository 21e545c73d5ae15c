"""`/v1/embeddings` and `/v1/predict/{model}` against fake predictors: shapes, errors, log."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from inferline.batching import BatcherConfig
from inferline.core.errors import InvalidParameterError
from inferline.predictors import NoopPredictor
from inferline.server import ServerConfig, create_app
from inferline.server.predictors import PredictorEntry
from inferline.store import RequestLog, RequestLogWriter, migrate
from tests.server.fakes import EchoGenerator, WordCountEmbedder
from tests.server.test_app import assert_error

FEATURES = ["age", "income", "score"]


def make_app(embedder: WordCountEmbedder, log: RequestLog | None = None):  # type: ignore[no-untyped-def]
    entries = [
        PredictorEntry(embedder, BatcherConfig(max_batch_size=4, max_wait_ms=20)),
        PredictorEntry(NoopPredictor("scorer", 3, FEATURES), BatcherConfig(max_batch_size=8)),
    ]
    writer = RequestLogWriter(log, flush_interval_s=0.05) if log is not None else None
    config = ServerConfig()
    return create_app(EchoGenerator(), config, log_writer=writer, predictors=entries)


@pytest.fixture
def embedder() -> WordCountEmbedder:
    return WordCountEmbedder()


@pytest.fixture
def client(embedder):  # type: ignore[no-untyped-def]
    with TestClient(make_app(embedder)) as c:
        yield c


def test_embeddings_shape_usage_and_order(client) -> None:  # type: ignore[no-untyped-def]
    body = client.post(
        "/v1/embeddings", json={"model": "fake-embed", "input": ["a bb", "ccc", "a a a"]}
    ).json()
    assert body["object"] == "list" and body["model"] == "fake-embed"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 8 for d in body["data"])
    assert body["data"][1]["embedding"][2] == pytest.approx(1.0)
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


def test_base64_decodes_to_the_float_vectors(client) -> None:  # type: ignore[no-untyped-def]
    floats = client.post("/v1/embeddings", json={"model": "fake-embed", "input": "a bb"}).json()
    encoded = client.post(
        "/v1/embeddings",
        json={"model": "fake-embed", "input": "a bb", "encoding_format": "base64"},
    ).json()
    vector = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert vector.tolist() == pytest.approx(floats["data"][0]["embedding"], abs=0)


def test_requests_larger_than_a_batch_are_split(client, embedder) -> None:  # type: ignore[no-untyped-def]
    inputs = ["x" * (1 + i % 3) for i in range(10)]
    body = client.post("/v1/embeddings", json={"model": "fake-embed", "input": inputs}).json()
    assert len(body["data"]) == 10
    assert max(embedder.batches) <= 4


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        ({"model": "fake-embed", "input": []}, 400, "input"),
        ({"model": "fake-embed", "input": ["ok", 3]}, 400, "input"),
        ({"model": "fake-embed", "input": "w " * 17}, 400, "input[0]"),
        ({"model": "fake-embed", "input": "ok", "dimensions": 4}, 400, "dimensions"),
        ({"model": "fake-embed", "input": "ok", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": "nope", "input": "ok"}, 404, "model"),
        ({"model": "scorer", "input": "ok"}, 400, "model"),
        ({"model": "echo", "input": "ok"}, 404, "model"),
    ],
)
def test_embedding_errors_name_the_field(client, payload, status, param) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.post("/v1/embeddings", json=payload), status, param)


def test_a_failing_row_fails_its_request_only(client) -> None:  # type: ignore[no-untyped-def]
    failed = client.post("/v1/embeddings", json={"model": "fake-embed", "input": "boom"})
    assert failed.status_code == 500
    ok = client.post("/v1/embeddings", json={"model": "fake-embed", "input": "all good"})
    assert ok.status_code == 200


def test_predict_takes_lists_and_named_objects(client) -> None:  # type: ignore[no-untyped-def]
    rows = [[1, 2.5, 3], {"age": 1, "income": 2, "score": 3}]
    body = client.post("/v1/predict/scorer", json={"instances": rows}).json()
    assert body["model"] == "scorer"
    assert body["predictions"] == [{"prediction": 0}, {"prediction": 0}]


@pytest.mark.parametrize(
    ("instances", "param"),
    [
        ([[1, 2]], "instances[0]"),
        ([[1, 2, 3], [1, "x", 3]], "instances[1][1]"),
        ([[1, True, 3]], "instances[0][1]"),
        ([{"age": 1, "income": 2}], "instances[0].score"),
        ([{"age": 1, "income": 2, "score": 3, "zip": 4}], "instances[0]"),
        ([], "instances"),
        ("rows", "instances"),
    ],
)
def test_predict_schema_errors_are_400s_naming_the_field(client, instances, param) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/v1/predict/scorer", json={"instances": instances})
    assert_error(response, 400, param)


def test_models_lists_the_llm_and_the_predictors(client) -> None:  # type: ignore[no-untyped-def]
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["echo"]["task"] == "generate"
    assert cards["fake-embed"]["task"] == "embeddings"
    scorer = client.get("/v1/models/scorer").json()
    assert scorer["task"] == "predict" and scorer["feature_names"] == FEATURES
    assert scorer["input_schema"]["oneOf"][1]["required"] == FEATURES


def test_batch_metrics_are_exported(client) -> None:  # type: ignore[no-untyped-def]
    client.post("/v1/predict/scorer", json={"instances": [[1, 2, 3]] * 3})
    text = client.get("/metrics").text
    assert 'inferline:batch_size_rows_sum{model_name="scorer"} 3.0' in text
    assert 'inferline:batch_compute_seconds_count{model_name="scorer"} 1.0' in text
    assert 'inferline:predicted_rows_total{model_name="scorer"} 3.0' in text


def test_each_request_is_logged_with_its_batch_ids(tmp_path, embedder) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    migrate(engine)
    log = RequestLog(engine)
    with TestClient(make_app(embedder, log)) as client:
        client.post("/v1/embeddings", json={"model": "fake-embed", "input": ["a"] * 6})
        client.post("/v1/predict/scorer", json={"instances": [[1, 2]]})
    deadline = time.monotonic() + 5
    while len(rows := log.recent()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    by_endpoint = {r["endpoint"]: r for r in rows}
    embedded = by_endpoint["/v1/embeddings"]
    assert embedded["status_code"] == 200 and embedded["batch_ids"] == "0,1"
    assert embedded["prompt_tokens"] == 6 and embedded["prompt"] == "\x1e".join(["a"] * 6)
    refused = by_endpoint["/v1/predict"]
    assert refused["status_code"] == 400 and refused["model"] == "scorer"
    assert refused["batch_ids"] is None


def test_a_predictor_may_not_reuse_the_llm_name() -> None:
    entry = PredictorEntry(WordCountEmbedder("echo"), BatcherConfig())
    with pytest.raises(InvalidParameterError, match="served twice"):
        create_app(EchoGenerator(), ServerConfig(), predictors=[entry])
