"""Checks a batch input file line by line before anything runs.

A line is ``{"custom_id": str, "method": "POST", "url": <the batch's endpoint>, "body": {...}}``
with a ``custom_id`` unique in the file and a ``model`` in the body. Every bad line is
reported with its (1-based) line number, so a file is fixed once, not discovered bad halfway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_LINES = 50_000  # OpenAI's limit per batch
MAX_ERRORS = 100  # reported per file; the rest are counted


def validate_input(
    path: Path, endpoint: str
) -> tuple[list[tuple[int, str, dict[str, Any]]], list[dict[str, Any]]]:
    """(valid lines as (line number, custom_id, body), errors as OpenAI ``errors.data``)."""
    lines: list[tuple[int, str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            problem = _check_line(raw, endpoint, seen)
            if isinstance(problem, dict):
                if len(errors) < MAX_ERRORS:
                    errors.append({**problem, "line": number})
                continue
            custom_id, body = problem
            seen.add(custom_id)
            lines.append((number, custom_id, body))
    if not lines and not errors:
        errors.append(_error("empty_file", "The input file holds no requests.", None))
    if len(lines) > MAX_LINES:
        errors.append(_error("too_many_requests", f"At most {MAX_LINES} requests per batch.", None))
    return lines, errors


def _check_line(
    raw: bytes, endpoint: str, seen: set[str]
) -> dict[str, Any] | tuple[str, dict[str, Any]]:
    try:
        item = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error("invalid_json_line", "This line is not valid JSON.", None)
    if not isinstance(item, dict):
        return _error("invalid_request", "Each line must be a JSON object.", None)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error(
            "missing_required_parameter", "custom_id must be a non-empty string.", "custom_id"
        )
    if custom_id in seen:
        return _error(
            "duplicate_custom_id", f"The custom_id {custom_id!r} is used twice.", "custom_id"
        )
    if item.get("method") != "POST":
        return _error("invalid_value", "method must be POST.", "method")
    if item.get("url") != endpoint:
        return _error(
            "mismatched_endpoint",
            f"url is {item.get('url')!r}, but this batch's endpoint is {endpoint!r}.",
            "url",
        )
    body = item.get("body")
    if not isinstance(body, dict):
        return _error("invalid_value", "body must be a JSON object.", "body")
    if not isinstance(body.get("model"), str):
        return _error("missing_required_parameter", "body.model is required.", "body.model")
    if body.get("stream"):
        return _error("invalid_value", "body.stream is not supported in a batch.", "body.stream")
    return custom_id, body


def _error(code: str, message: str, param: str | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": None}
