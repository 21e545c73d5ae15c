"""Experiments and judges reach the models the way clients do: chat requests to a running
inferline server (so its routes, prompts, keys, budgets, checks and traces all apply), one
non-streaming request per item, never retried here (the router is the retry loop)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx


@dataclass(frozen=True)
class Reply:
    """What came back for one request: the answer's text (a tool call's JSON when it
    called tools), or the error; measured wall time; the server's cost and usage."""

    status_code: int  # 0: no HTTP answer (connection refused, timed out)
    text: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    cost_usd: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    request_id: str | None = None
    decision: str | None = None  # what the route's checks decided (x-inferline-decision)
    confidence: float | None = None  # the answer's mean token logprob (asked with logprobs)
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """An answer came back (200)."""
        return self.status_code == 200 and self.text is not None


class Gateway(Protocol):
    """Sends one chat request."""

    async def chat(self, body: dict[str, Any]) -> Reply:
        """The reply to ``body`` (a ``/v1/chat/completions`` request)."""
        ...


class HttpGateway:
    """A `Gateway` over HTTP to an inferline server."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        headers = dict(headers or {})
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, trust_env=False
        )

    async def chat(self, body: dict[str, Any]) -> Reply:
        """Posts ``body``; a transport failure is a reply with status 0."""
        start = time.perf_counter()
        try:
            response = await self.client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            return Reply(0, error=f"{type(exc).__name__}: {exc}",
                         latency_s=time.perf_counter() - start)  # fmt: skip
        return reply_of(response, time.perf_counter() - start)

    async def aclose(self) -> None:
        """Closes the connections."""
        await self.client.aclose()


class InProcessGateway:
    """A `Gateway` into the server's own app (the rollouts' judges): every request takes a
    client's path (routes, prompts, traces, costs) at batch priority, behind live traffic.
    Usable once `bind` has pointed it at the app."""

    def __init__(self, api_key: str | None) -> None:
        self.headers = {"x-inferline-priority": "batch", "cache-control": "no-store"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.client: httpx.AsyncClient | None = None

    def bind(self, app: Any) -> None:
        """Points it at the (ASGI) app, which exists only after the gateway is built."""
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                        base_url="http://inferline", headers=self.headers,
                                        timeout=300.0)  # fmt: skip

    async def chat(self, body: dict[str, Any]) -> Reply:
        """The reply to ``body`` from the app itself."""
        if self.client is None:
            return Reply(0, error="the in-process gateway is not bound to an app yet")
        start = time.perf_counter()
        response = await self.client.post("/v1/chat/completions", json=body)
        return reply_of(response, time.perf_counter() - start)


def reply_of(response: httpx.Response, latency_s: float) -> Reply:
    """A `Reply` from a chat completion response (or an OpenAI-shaped error)."""
    headers = response.headers
    common = {"latency_s": latency_s, "request_id": headers.get("x-request-id"),
              "cost_usd": float(headers.get("x-inferline-cost-usd") or 0.0),
              "decision": headers.get("x-inferline-decision")}  # fmt: skip
    try:
        body = response.json()
    except ValueError:
        return Reply(response.status_code, error=response.text[:500], **common)
    if response.status_code != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        return Reply(response.status_code, error=str(message or body)[:2000], body=body, **common)
    message = body["choices"][0]["message"]
    text = message.get("content")
    if text is None and message.get("tool_calls"):
        text = json.dumps([c["function"] for c in message["tool_calls"]])
    usage = body.get("usage") or {}
    tokens = ((body["choices"][0].get("logprobs") or {}).get("content")) or []
    confidence = sum(t["logprob"] for t in tokens) / len(tokens) if tokens else None
    return Reply(200, text=text if text is not None else "", body=body, confidence=confidence,
                 prompt_tokens=usage.get("prompt_tokens"),
                 completion_tokens=usage.get("completion_tokens"), **common)  # fmt: skip
