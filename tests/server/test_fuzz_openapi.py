"""schemathesis fuzzes every operation of our own /openapi.json: bad input is never a 500."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from inferline.server import ServerConfig, create_app
from tests.server.fakes import EchoGenerator

app = create_app(EchoGenerator(), ServerConfig())
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case) -> None:  # type: ignore[no-untyped-def]
    response = case.call()
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] is None or isinstance(error["code"], str)


@pytest.mark.parametrize("body", [b"", b"null", b'"text"', b"{}", b'{"model": 5}', b"\xff\xfe"])
def test_odd_bodies_are_400(body: bytes) -> None:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        for path in ("/v1/chat/completions", "/v1/completions"):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 400, (path, body, response.text)
