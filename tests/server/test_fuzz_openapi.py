"""schemathesis fuzzes every operation of our own /openapi.json (the Batches API's too):
bad input is never a 500, and every status returned is documented for its route."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import status_code_conformance

from inferline.cli.jobs_factory import jobs_extension
from inferline.server import ServerConfig, create_app
from inferline.store import connect, migrate
from tests.server.fakes import EchoGenerator

_data = Path(tempfile.mkdtemp(prefix="inferline-fuzz-"))
_database = connect(f"sqlite:///{_data / 'fuzz.db'}")
migrate(_database)
app = create_app(
    EchoGenerator(),
    ServerConfig(),
    extensions=[jobs_extension(_database, _data, None, max_in_flight=4)],
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_document_lists_the_batches_api_and_no_422() -> None:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        document = client.get("/openapi.json").json()
    assert {"/v1/files", "/v1/batches", "/v1/routes", "/admin/reload", "/v1/messages",
            "/v1/messages/count_tokens"} <= set(document["paths"])  # fmt: skip
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "429", "502", "503", "504"} <= set(chat)
    assert not any("422" in op["responses"] for ops in document["paths"].values()
                   for op in ops.values())  # fmt: skip


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text[:300])
    case.validate_response(response, checks=[status_code_conformance])
    if response.status_code >= 400 and case.path.startswith("/v1/messages"):
        body = response.json()  # Anthropic's shape on the Messages API's paths
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    elif response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] is None or isinstance(error["code"], str)


@pytest.mark.parametrize("body", [b"", b"null", b'"text"', b"{}", b'{"model": 5}', b"\xff\xfe"])
def test_odd_bodies_are_400(body: bytes) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, (path, body, response.text)
