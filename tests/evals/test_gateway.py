"""The evals' gateways against a small ASGI app: what they send (key, batch priority, no
cache) and what they read back (text or tool calls, cost, usage, logprobs, errors)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from inferline.evals.gateway import InProcessGateway

pytestmark = pytest.mark.anyio


def _app(seen: list[dict[str, Any]]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append({"headers": dict(request.headers), "body": body})
        headers = {"x-request-id": "r1", "x-inferline-cost-usd": "0.00012500",
                   "x-inferline-decision": "allow"}  # fmt: skip
        if body["model"] == "missing":
            error = {"message": "no model 'missing'", "type": "invalid_request_error"}
            return JSONResponse({"error": error}, status_code=404, headers=headers)
        message: dict[str, Any] = {"role": "assistant", "content": "Paris"}
        if body["model"] == "tools":
            call = {"function": {"name": "f", "arguments": "{}"}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        logprobs = {
            "content": [{"token": "Par", "logprob": -0.5}, {"token": "is", "logprob": -1.5}]
        }
        choice = {"index": 0, "message": message, "logprobs": logprobs}
        usage = {"prompt_tokens": 7, "completion_tokens": 2}
        return JSONResponse({"choices": [choice], "usage": usage}, headers=headers)

    return app


async def test_the_in_process_gateway() -> None:
    seen: list[dict[str, Any]] = []
    gateway = InProcessGateway("sk-admin")
    assert (await gateway.chat({"model": "m"})).status_code == 0  # not bound yet
    gateway.bind(_app(seen))
    reply = await gateway.chat({"model": "m", "messages": []})
    assert (reply.ok, reply.text, reply.cost_usd, reply.request_id) == (
        True,
        "Paris",
        0.000125,
        "r1",
    )
    assert (reply.prompt_tokens, reply.completion_tokens, reply.decision) == (7, 2, "allow")
    assert reply.confidence == pytest.approx(-1.0)
    headers = seen[0]["headers"]
    assert headers["authorization"] == "Bearer sk-admin"
    assert (headers["x-inferline-priority"], headers["cache-control"]) == ("batch", "no-store")
    tools = await gateway.chat({"model": "tools"})
    assert tools.text == '[{"name": "f", "arguments": "{}"}]'
    missing = await gateway.chat({"model": "missing"})
    assert (missing.ok, missing.status_code, missing.error) == (False, 404, "no model 'missing'")
