"""HTTP statuses and transport failures of an upstream -> inferline's typed errors.

The router retries and falls back on these types (the client never retries), so the
mapping decides what is retried: 429 and 5xx and connection failures are, 401/403/404 go
to another target but never retry here, a request the upstream rejected goes nowhere.
Every message is redacted (`redact`): no API key or header value ever reaches one.
"""

from __future__ import annotations

import email.utils
import http
import json
import re
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import aiohttp

from inferline.core.errors import (
    ContentFilteredError,
    ContextLengthExceededError,
    InferlineError,
    RateLimitedError,
    StreamInterruptedError,
    UpstreamConfigError,
    UpstreamError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from inferline.openai.upstream import MAX_MESSAGE_CHARS

_BEARER = re.compile(r"(?i)\bbearer\s+\S+")
_CONTEXT_LENGTH_CODES = {"context_length_exceeded", "string_above_max_length"}
_CONTEXT_LENGTH_PHRASES = ("maximum context length", "context length", "maximum model length")
_CONTENT_FILTER_CODES = {"content_filter", "content_policy_violation"}
_CONFIG_CODES = {401: "upstream_unauthorized", 403: "upstream_forbidden", 404: "upstream_not_found"}


class ErrorFields(NamedTuple):
    """The parts of an upstream's error body (OpenAI's ``{"error": {...}}``, vLLM's flat
    ``{"object": "error", ...}``, FastAPI's ``{"detail": ...}`` or plain text)."""

    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret and any ``Bearer`` token replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return _BEARER.sub("Bearer ***", text)


def error_fields(body: bytes) -> ErrorFields:
    """Reads an error body, whatever its shape; the message is truncated."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data: Any = json.loads(text)
    except ValueError:
        return ErrorFields(text[:MAX_MESSAGE_CHARS])
    if isinstance(data, dict) and isinstance(data.get("error"), dict | str):
        data = data["error"]
    if not isinstance(data, dict):
        return ErrorFields(str(data)[:MAX_MESSAGE_CHARS])
    message = data.get("message") or data.get("detail") or text
    if not isinstance(message, str):
        message = json.dumps(message)
    return ErrorFields(
        message[:MAX_MESSAGE_CHARS], _text(data.get("type")), _text(data.get("param")),
        _text(data.get("code")),
    )  # fmt: skip


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def retry_after_s(headers: Mapping[str, str], now_s: float | None = None) -> float | None:
    """``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date), in seconds."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))


def error_from_response(
    status_code: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    target: str,
    secrets: tuple[str, ...] = (),
) -> InferlineError:
    """The error for a non-2xx answer (see the module docstring for the mapping)."""
    fields = error_fields(body)
    message = redact(fields.message or _reason_phrase(status_code), secrets)
    text = f"{target}: the upstream answered {status_code}: {message}"
    retry_s = retry_after_s(headers)
    if status_code == 429:
        return RateLimitedError(text, target=target, retry_after_s=retry_s)
    if status_code == 408:
        return UpstreamTimeoutError(text, target=target, code="upstream_timeout")
    if status_code >= 500:
        return UpstreamUnavailableError(
            text, target=target, status_code=status_code, retry_after_s=retry_s
        )
    if status_code in _CONFIG_CODES:  # reported as 502: the gateway's client did no wrong
        return UpstreamConfigError(text, target=target, code=_CONFIG_CODES[status_code])
    if status_code < 400:  # 1xx, 3xx (redirects are not followed): base_url is wrong
        return UpstreamConfigError(text, target=target, code="unexpected_status")
    return _request_error(status_code, fields, message, target)


def _request_error(
    status_code: int, fields: ErrorFields, message: str, target: str
) -> InferlineError:
    """A 4xx the request caused: context length, content filter, or another rejection."""
    kinds = {fields.code, fields.type} - {None}
    lowered = message.lower()
    is_context = bool(kinds & _CONTEXT_LENGTH_CODES) or any(
        phrase in lowered for phrase in _CONTEXT_LENGTH_PHRASES
    )
    if status_code in (400, 413, 422) and is_context:
        return ContextLengthExceededError(0, 0, 0, message=message)
    if status_code == 400 and kinds & _CONTENT_FILTER_CODES:
        return ContentFilteredError(f"{target}: {message}", target=target, code="content_filter")
    return UpstreamRejectedError(
        message, target=target, status_code=status_code, param=fields.param, code=fields.code
    )


def error_from_transport(
    exc: Exception, *, is_started: bool, target: str, secrets: tuple[str, ...] = ()
) -> UpstreamError:
    """The error for an exception of the transport. Before the response's status arrived,
    the upstream could not be reached (retryable anywhere); after, the stream was cut."""
    detail = redact(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)[:MAX_MESSAGE_CHARS]
    if is_started:
        return StreamInterruptedError(
            f"{target}: the stream was cut ({detail})", target=target, code="stream_cut"
        )
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeoutError(
            f"{target}: connecting timed out ({detail})", target=target, code="connect_timeout"
        )
    if isinstance(exc, TimeoutError):  # any other timeout of the transport
        return UpstreamTimeoutError(f"{target}: {detail}", target=target)
    return UpstreamUnavailableError(
        f"{target}: cannot reach the upstream ({detail})", target=target, code="connect_error"
    )


def _reason_phrase(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase
    except ValueError:
        return ""
