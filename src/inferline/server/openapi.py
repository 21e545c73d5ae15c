"""``/openapi.json`` lists every status each route can return, in the OpenAI error shape.

FastAPI documents only 200 and its own 422 (which this server never sends: a bad body is a
400). The statuses come from one table here, by what a route does: every route but
``/health`` may answer 401 (API keys), every ``/v1/`` route 503 while draining, every POST
400 and 413, generation routes 403 (a key's routes), 404 (unknown model), 429 (a key's
limits, upstreams), 502, 503 and 504 (upstreams, deadlines), the admin API 403 (a virtual
key), routes with an id in the path 404, a review already decided 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_DESCRIPTIONS = {
    400: "The request is invalid: the message names the field.",
    401: "Missing or invalid API key.",
    403: "The API key may not do this (a route it is not given, the admin API; revoked).",
    404: "Unknown model, route, file, batch or stored response.",
    409: "The review was decided already (by another reviewer, or its deadline).",
    413: "The request body is over the size limit.",
    429: "Rate limited: retry after the Retry-After header.",
    500: "A bug in inferline (never caused by the request).",
    502: "An upstream failed, or a stream could not be completed.",
    503: "Overloaded, draining, every target down, or the engine stopped.",
    504: "The request's deadline passed before an answer.",
}
_GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


_BY_PATH: tuple[tuple[Any, set[int]], ...] = (
    (lambda p, m: p != "/health", {401}),
    (lambda p, m: p.startswith("/v1/"), {503}),
    (lambda p, m: p in ("/health", "/ready"), {503}),
    (lambda p, m: m == "post", {400, 413}),
    (lambda p, m: "{" in p, {404}),
    (lambda p, m: p in _GENERATION, {403, 404, 429, 502, 503, 504}),
    (lambda p, m: p.startswith("/admin/"), {400, 403}),
    (lambda p, m: p in ("/v1/embeddings", "/v1/predict/{model}"), {404, 503}),
    (lambda p, m: p in ("/v1/files", "/v1/batches") and m == "get", {400}),
    (lambda p, m: p.startswith(("/v1/traces", "/v1/tasks")), {400}),
    (lambda p, m: p.startswith("/v1/prompts"), {400, 404}),
    (lambda p, m: p.startswith("/v1/prompts") and m == "post", {403}),
    (lambda p, m: p.startswith(("/v1/reviews", "/v1/checks")), {400, 403}),
    (lambda p, m: p.startswith("/v1/reviews/") and m == "post", {409}),
    (lambda p, m: p.startswith("/v1/responses/"), {400}),  # no database to keep them in
)


def statuses(path: str, method: str) -> list[int]:
    """The error statuses ``method path`` may return."""
    codes = {500}
    for applies, more in _BY_PATH:
        if applies(path, method):
            codes |= more
    return sorted(codes)


def _document(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    components["ErrorResponse"] = _ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for code in statuses(path, method):
                responses.setdefault(
                    str(code),
                    {
                        "description": _DESCRIPTIONS[code],
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    return schema


def install_openapi(app: FastAPI) -> None:
    """Replaces the app's schema generator by one that documents every error status."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            app.openapi_schema = _document(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
