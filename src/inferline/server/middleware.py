"""ASGI middleware: API keys (admin and virtual), body size limit, draining, and per-route
status counters."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from inferline.server.errors import APIError, anthropic_error_body, is_anthropic_path
from inferline.server.metrics import Metrics
from inferline.tenants import Identity, Tenants

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPEN_PATHS = ("/health", "/ready")  # probes work without a key
_KNOWN_ROUTES = frozenset(
    (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/routes",
        "/v1/files",
        "/v1/batches",
        "/admin/reload",
        "/admin/keys",
        "/health",
        "/ready",
        "/metrics",
        "/tokenize",
        "/detokenize",
    )
)
_ROUTE_PREFIXES = (  # paths with an id: one label per route, not per id
    ("/v1/models/", "/v1/models/{model}"),
    ("/v1/predict/", "/v1/predict/{model}"),
    ("/v1/files/", "/v1/files/{file_id}"),
    ("/v1/batches/", "/v1/batches/{batch_id}"),
    ("/admin/keys/", "/admin/keys/{key_id}"),
)


async def _send_error(send: Send, error: APIError, path: str) -> None:
    shaped = anthropic_error_body(error) if is_anthropic_path(path) else error.body()
    body = json.dumps(shaped).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Checks, in order: API key (401), draining (503), body size (413).

    Keys are compared in constant time and never logged. The body is read (up to the limit)
    before the app sees it, so a chunked upload cannot exceed the limit either.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        tenants: Tenants,
        max_body_bytes: int,
        is_draining: Callable[[], bool],
        metrics: Metrics,
        max_file_bytes: int,
    ) -> None:
        self.app = app
        self.tenants = tenants
        self.max_body_bytes = max_body_bytes
        self.max_file_bytes = max_file_bytes  # uploads to /v1/files (batch inputs)
        self.is_draining = is_draining
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        send = self._counting(path, send)
        error = self._check_key(scope) or self._check_draining(path)
        if error is not None:
            await _send_error(send, error, path)
            return
        body, error = await self._read_body(scope, receive)
        if error is not None:
            await _send_error(send, error, path)
            return
        await self.app(scope, _replay(body, receive), send)

    def _check_key(self, scope: Scope) -> APIError | None:
        """Who is calling goes into ``scope["state"]["identity"]`` (the key's policy, never
        its secret); ``/admin/`` needs an admin key once keys are in use."""
        path = scope["path"]
        if path == "/ui" or path.startswith("/ui/"):  # the dashboard signs in with a cookie
            scope.setdefault("state", {})["identity"] = Identity()  # nobody, until its session
            return None
        if path in _OPEN_PATHS or not self.tenants.requires_auth:
            scope.setdefault("state", {})["identity"] = Identity(is_admin=True)
            return None
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        token = token or headers.get(b"x-api-key", b"").strip()  # how Anthropic's SDK sends it
        identity = self.tenants.identify(token.decode("latin-1")) if token else None
        if identity is None:
            return APIError(
                401,
                "Missing or invalid API key. Send 'Authorization: Bearer <key>' "
                "(or 'x-api-key: <key>').",
                type="authentication_error",
                code="invalid_api_key",
            )
        if path.startswith("/admin/") and not identity.is_admin:
            return APIError(
                403,
                "This API key may not use the admin API.",
                type="permission_error",
                code="permission_denied",
            )
        scope.setdefault("state", {})["identity"] = identity
        return None

    def _check_draining(self, path: str) -> APIError | None:
        if path.startswith("/v1/") and self.is_draining():
            return APIError(
                503,
                "The server is shutting down; retry on another instance.",
                type="server_error",
                code="shutting_down",
                headers={"Retry-After": "5"},
            )
        return None

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, APIError | None]:
        limit = self.max_file_bytes if scope["path"] == "/v1/files" else self.max_body_bytes
        too_large = APIError(
            413,
            f"The request body exceeds the {limit} byte limit.",
            code="request_too_large",
        )
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return b"", too_large
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return b"", None  # disconnected before the body arrived
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks), None

    def _counting(self, path: str, send: Send) -> Send:
        # bounded label values: a fuzzer's random paths must not grow the metric without end
        route = path if path in _KNOWN_ROUTES else "other"
        for prefix, label in _ROUTE_PREFIXES:
            if path.startswith(prefix):
                route = label

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.http_requests.labels(route, str(message["status"])).inc()
            await send(message)

        return counting_send


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that first returns the already-read body, then the real stream (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
