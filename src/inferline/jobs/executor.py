"""How a batch line reaches the model: through the server's own endpoint, in process.

Every batch path (the Batches API runner, ``inferline batch run`` locally and on Ray) runs
its lines through `AppExecutor`, so a line gets exactly a live request's handling
(validation, routing, errors, request log, metrics) at batch priority, behind live traffic.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

PRIORITY_HEADER = "x-inferline-priority"


@dataclass(frozen=True)
class LineResponse:
    """What one line got: the HTTP status, the JSON body, and Retry-After if any."""

    status_code: int
    body: dict[str, Any]
    retry_after_s: float | None = None

    @property
    def error_code(self) -> str | None:
        """``error.code`` of an error body (e.g. ``engine_dead``), else None."""
        error = self.body.get("error")
        return error.get("code") if isinstance(error, dict) else None


# (url, body) -> the line's response
LineExecutor = Callable[[str, dict[str, Any]], Awaitable[LineResponse]]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class AppExecutor:
    """Runs a batch line through an app's own endpoint, in process, at batch priority."""

    def __init__(self, api_key: str | None) -> None:
        self.headers = {PRIORITY_HEADER: "batch"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.client: httpx.AsyncClient | None = None

    def bind(self, app: Any) -> None:
        """Points the executor at the (ASGI) app, which is built after the runner."""
        transport = httpx.ASGITransport(app=app)
        self.client = httpx.AsyncClient(
            transport=transport, base_url="http://inferline", timeout=None
        )

    async def __call__(self, url: str, body: dict[str, Any]) -> LineResponse:
        """The response to one request."""
        assert self.client is not None, "bind() was not called"
        response = await self.client.post(url, json=body, headers=self.headers)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": {"message": response.text[:500], "type": "server_error"}}
        return LineResponse(response.status_code, payload, _retry_after(response))
