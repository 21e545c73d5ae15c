"""Rows of the job store -> the OpenAI ``file`` and ``batch`` objects."""

from __future__ import annotations

from typing import Any

_TIMESTAMPS = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The ``file`` object (``status`` kept for SDKs that still read it)."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "expires_at": None,
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
    }


def batch_object(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """The ``batch`` object, with ``request_counts`` and ``usage`` from the lines."""
    errors = row.get("errors")
    return {
        "id": row["id"],
        "object": "batch",
        "endpoint": row["endpoint"],
        "model": None,
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"],
        "completion_window": row["completion_window"],
        "status": row["status"],
        "output_file_id": row["output_file_id"],
        "error_file_id": row["error_file_id"],
        "created_at": row["created_at"],
        "expires_at": row["expires_at"],
        **{key: row[key] for key in _TIMESTAMPS},
        "request_counts": {
            "total": counts["total"],
            "completed": counts["completed"],
            "failed": counts["failed"],
        },
        "usage": {
            "input_tokens": counts["input_tokens"],
            "input_tokens_details": {"cached_tokens": counts["cached_tokens"]},
            "output_tokens": counts["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": counts["input_tokens"] + counts["output_tokens"],
        },
        "metadata": row.get("metadata"),
    }


def output_record(
    suffix: str,
    line: int,
    custom_id: str,
    status_code: int | None,
    body: dict[str, Any] | None = None,
    *,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One line of a batch output or error file (``id`` is ``batch_req_<suffix>_<line>``,
    whichever path ran the line: the Batches API or ``inferline batch run``)."""
    response = None
    if error is None:
        body = body or {}
        response = {
            "status_code": status_code,
            "request_id": body.get("id", f"req_{suffix}_{line}"),
            "body": body,
        }
    return {
        "id": f"batch_req_{suffix}_{line}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
