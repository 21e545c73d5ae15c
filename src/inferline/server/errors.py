"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

``code`` is a string or null, never an integer. Bad input is always a 4xx naming the field;
a 500 means a bug in inferline, never a bad request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferline.core.errors import (
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineDeadError,
    InferlineError,
    InvalidParameterError,
    LimitExceededError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    UnknownModelError,
    UpstreamError,
)

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error the server answers with as is."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code, self.message, self.type = status_code, message, type
        self.param, self.code, self.headers = param, code, headers or {}
        self.is_logged = False  # set once the request log has a row for this request

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": error}

    def response(self, path: str = "") -> JSONResponse:
        """The HTTP response (in Anthropic's shape on ``/v1/messages``)."""
        body = anthropic_error_body(self) if is_anthropic_path(path) else self.body()
        return JSONResponse(body, status_code=self.status_code, headers=self.headers)


def is_anthropic_path(path: str) -> bool:
    """The Anthropic Messages API's paths answer errors in Anthropic's shape."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


_ANTHROPIC_TYPES = {
    "insufficient_quota": "rate_limit_error",
    "server_error": "api_error",
    "timeout_error": "timeout_error",
}


def anthropic_error_body(error: APIError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``: Anthropic's error envelope
    (its SDK maps the status to its exception class; the type says why)."""
    kind = _ANTHROPIC_TYPES.get(error.type, error.type)
    if error.code == "request_too_large":
        kind = "request_too_large"
    message = error.message
    if error.param and error.param not in message:
        message = f"{error.param}: {message}"
    return {"type": "error", "error": {"type": kind, "message": message}}


def api_error_from(exc: Exception) -> APIError:
    """Maps inferline's own exceptions to HTTP errors."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, UnknownModelError):
        return APIError(
            404, exc.message, type="not_found_error", param="model", code="model_not_found"
        )
    if isinstance(exc, NotFoundError):
        return APIError(404, exc.message, type="not_found_error", param=exc.param, code="not_found")
    if isinstance(exc, ContextLengthExceededError):
        return APIError(400, exc.message, param=exc.param, code="context_length_exceeded")
    if isinstance(exc, InvalidParameterError):
        return APIError(400, exc.message, param=exc.param, code=exc.code or "invalid_value")
    if isinstance(exc, InferlineError):
        return _serving_error(exc)
    logger.exception("unexpected error", exc_info=exc)
    return APIError(500, "internal server error", type="server_error", code="internal_error")


def _serving_error(exc: InferlineError) -> APIError:
    """Errors of the generator or its upstreams: overload, death, deadlines, upstreams."""
    if isinstance(exc, OverloadedError):
        headers = {"Retry-After": str(exc.retry_after_s)}
        return APIError(503, str(exc), type="overloaded_error", code="overloaded", headers=headers)
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), type="server_error", code="engine_dead")
    if isinstance(exc, DeadlineExceededError):
        return APIError(504, str(exc), type="timeout_error", code="deadline_exceeded")
    if isinstance(exc, PermissionDeniedError):
        return APIError(403, exc.message, type="permission_error", param=exc.param,
                        code="permission_denied")  # fmt: skip
    if isinstance(exc, LimitExceededError):
        headers = dict(exc.headers)
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        quota = "insufficient_quota" if exc.code == "insufficient_quota" else "rate_limit_error"
        return APIError(429, exc.message, type=quota, code=exc.code, headers=headers)
    if isinstance(exc, UpstreamError):
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        kind = _TYPES.get(exc.status_code, "server_error" if exc.status_code >= 500 else None)
        return APIError(
            exc.status_code,
            exc.message,
            type=kind or "invalid_request_error",
            param=exc.param,
            code=exc.code,
            headers=headers,
        )
    logger.exception("unexpected error", exc_info=exc)
    return APIError(500, "internal server error", type="server_error", code="internal_error")


_TYPES = {429: "rate_limit_error", 401: "authentication_error", 403: "permission_error"}


def _field_path(location: tuple[Any, ...]) -> str | None:
    parts = [p for p in location if p != "body"]
    if not parts:
        return None
    path = str(parts[0])
    for part in parts[1:]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validation_error(exc: RequestValidationError) -> APIError:
    """The first pydantic error as a 400 naming the field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(
            400,
            "We could not parse the JSON body of your request. Send a valid JSON object.",
            code="invalid_json",
        )
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, InvalidParameterError):  # a model validator's, naming its field
        return APIError(400, str(cause), param=cause.param, code="invalid_value")
    param = _field_path(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if param is None and first.get("type") in ("model_attributes_type", "dict_type"):
        message = "The request body must be a JSON object."
    return APIError(
        400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
    )


OnRejected = Callable[[Request, APIError], None]


def install_error_handlers(app: FastAPI, on_rejected: OnRejected) -> None:
    """Routes every error through the OpenAI envelope.

    ``on_rejected`` sees each error of a request that was refused before generation
    started (bad body, unknown model), so the request log has a row for it too.
    """

    def reject(request: Request, error: APIError) -> JSONResponse:
        if not error.is_logged and request.url.path.startswith("/v1/"):
            on_rejected(request, error)
        return error.response(request.url.path)

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        return reject(request, api_error_from(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return reject(request, validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type=kind).response(request.url.path)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for cls in (APIError, InferlineError, Exception):
        app.add_exception_handler(cls, on_api_error)
