"""A real server with an embedding model and the example classifier beside the LLM."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferline.predictors import OnnxPredictor
from inferline.predictors.examples import train_risk_classifier
from tests.e2e.conftest import ServerProcess, start_server, stop_server

pytestmark = pytest.mark.e2e

MODELS_FILE = """
models:
  - name: all-minilm-l6-v2
    kind: sentence-embeddings
    batching: {max_batch_size: 8, max_wait_ms: 20}
  - name: risk-classifier
    kind: onnx
    source: example:risk-classifier
    batching: {max_batch_size: 64, max_wait_ms: 5}
"""
SENTENCES = [f"Sentence number {i} says something about topic {i % 5}." for i in range(24)]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[ServerProcess]:  # type: ignore[no-untyped-def]
    directory: Path = tmp_path_factory.mktemp("micro")
    (directory / "models.yaml").write_text(MODELS_FILE)
    running = start_server(directory, "--config", str(directory / "models.yaml"))
    yield running
    stop_server(running)


def test_sdk_embeddings_equal_sentence_transformers(server: ServerProcess) -> None:
    from openai import OpenAI

    sentence_transformers = pytest.importorskip("sentence_transformers")
    from inferline.predictors.embeddings import resolve_model_dir

    client = OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    response = client.embeddings.create(model="all-minilm-l6-v2", input=SENTENCES[:5])
    reference = sentence_transformers.SentenceTransformer(
        str(resolve_model_dir("all-minilm-l6-v2")), device="cpu"
    )
    expected = reference.encode(SENTENCES[:5])
    got = np.array([d.embedding for d in response.data])  # the SDK asked for base64
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert response.usage.prompt_tokens > 5


def test_concurrent_requests_share_batches_and_are_logged(server: ServerProcess) -> None:
    def embed(text: str) -> httpx.Response:
        return httpx.post(
            f"{server.base_url}/v1/embeddings",
            json={"model": "all-minilm-l6-v2", "input": text},
            timeout=60,
        )

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(embed, SENTENCES))
    assert all(r.status_code == 200 for r in responses)
    sizes = httpx.get(f"{server.base_url}/metrics").text
    count = _sample(sizes, 'inferline:batch_size_rows_count{model_name="all-minilm-l6-v2"}')
    total = _sample(sizes, 'inferline:batch_size_rows_sum{model_name="all-minilm-l6-v2"}')
    assert total >= 24 and count < total  # some batches held more than one request
    from inferline.store import RequestLog, connect

    log = RequestLog(connect(server.database_url))
    rows = [r for r in log.recent(limit=100, model="all-minilm-l6-v2") if r["status_code"] == 200]
    assert rows and all(r["batch_ids"] for r in rows)


def test_predictions_equal_the_offline_model(server: ServerProcess, tmp_path: Path) -> None:
    _, data = train_risk_classifier()
    rows = data.data[:40].tolist()
    body = httpx.post(
        f"{server.base_url}/v1/predict/risk-classifier", json={"instances": rows}, timeout=60
    ).json()
    from inferline.predictors.examples import risk_classifier_path

    offline = OnnxPredictor("offline", risk_classifier_path(tmp_path))
    assert body["predictions"] == offline.predict([offline.decode(r, "x") for r in rows])
    bad = httpx.post(
        f"{server.base_url}/v1/predict/risk-classifier", json={"instances": [rows[0][:3]]}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "instances[0]"
    models = {m["id"]: m["task"] for m in httpx.get(f"{server.base_url}/v1/models").json()["data"]}
    assert models == {
        "smollm2-135m": "generate",
        "all-minilm-l6-v2": "embeddings",
        "risk-classifier": "predict",
    }


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)
