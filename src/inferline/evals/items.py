"""Dataset items from files, traces and reviewed cases, and back out as JSONL or CSV.

An item's ``input`` is chat messages (a list), a prompt's variables (an object), both (an
object with just ``messages`` and/or ``variables``), or a string (one user message).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.store.datasets import DatasetItem

_RESERVED = ("id", "input", "expected", "metadata")


def item_key(input_value: Any, expected: Any) -> str:
    """An id for an item that has none: its content's hash (re-importing the same file
    yields the same ids, so nothing changes)."""
    text = json.dumps([input_value, expected], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_input(value: Any, where: str) -> Any:
    """``value`` if it is a valid item input (400 otherwise)."""
    if isinstance(value, str) and value:
        return value
    is_message = lambda m: isinstance(m, dict) and "role" in m  # noqa: E731
    if isinstance(value, list) and value and all(is_message(m) for m in value):
        return value
    if isinstance(value, dict) and value:
        return value
    raise InvalidParameterError(
        f"{where}: input must be messages, an object of variables, or a non-empty string",
        "input",
    )


def split_input(value: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(messages, variables) of an item's input."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}], None
    if isinstance(value, list):
        return value, None
    if set(value) <= {"messages", "variables"}:
        return list(value.get("messages") or []), value.get("variables")
    return [], value


def read_file(path: Path) -> list[DatasetItem]:
    """Items from a ``.jsonl`` or ``.csv`` file (400 on the first bad line, with its
    number)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidParameterError(f"{path}: {exc}", "file") from None
    if path.suffix.lower() == ".csv":
        return list(_csv_items(text, path.name))
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return list(_jsonl_items(text, path.name))
    raise InvalidParameterError(f"{path}: a dataset file is .jsonl or .csv", "file")


def _jsonl_items(text: str, name: str) -> Iterator[DatasetItem]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidParameterError(f"{where}: not JSON ({exc.msg})", "file") from None
        if not isinstance(row, dict):
            raise InvalidParameterError(f"{where}: a line is a JSON object", "file")
        if "input" not in row and "messages" in row:
            row = {**row, "input": row.pop("messages")}
        yield _item(row, where)


def _csv_items(text: str, name: str) -> Iterator[DatasetItem]:
    reader = csv.DictReader(io.StringIO(text))
    for number, row in enumerate(reader, 2):
        where = f"{name}:{number}"
        metadata = {k[9:]: v for k, v in row.items() if k and k.startswith("metadata.")}
        rest = {k: v for k, v in row.items() if k and k not in _RESERVED and k not in metadata
                and not k.startswith("metadata.")}  # fmt: skip
        value: Any
        if "input" in row:
            value = _maybe_json(row["input"])
            metadata.update(rest)
        else:
            value = rest  # every other column is a variable
        expected = _maybe_json(row["expected"]) if row.get("expected") else None
        fields = {"input": value, "expected": expected, "metadata": metadata, "id": row.get("id")}
        yield _item(fields, where)


def _maybe_json(text: str | None) -> Any:
    if text is None:
        return None
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    return text


def _item(row: dict[str, Any], where: str) -> DatasetItem:
    value = check_input(row.get("input"), where)
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidParameterError(f"{where}: metadata must be an object", "metadata")
    expected = row.get("expected")
    key = row.get("id")
    key = str(key) if key not in (None, "") else item_key(value, expected)
    return DatasetItem(key=key, input=value, expected=expected, metadata=metadata, source=where)


def from_trace(trace: dict[str, Any], *, expected_from_output: bool = False) -> DatasetItem | None:
    """An item made of a logged request (None when its text was not logged). The request
    as sent is used when the log has it (messages, and a stored prompt's variables);
    otherwise the logged last message."""
    body = trace.get("request") or {}
    prompt = body.get("prompt") or {}
    messages = body.get("messages") or []
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    value: Any
    if variables:
        value = {"messages": messages, "variables": variables} if messages else variables
    elif messages:
        value = messages
    elif trace.get("input"):
        value = str(trace["input"])
    else:
        return None
    output = trace.get("output")
    metadata = {"request_id": trace["id"], "route": trace.get("route"),
                "model": trace.get("model"), "prompt": trace.get("prompt"),
                "output": output, "latency_s": trace["timings"]["total_s"],
                "cost_usd": trace.get("cost_usd"), "created_at": trace["created_at"],
                "status_code": trace.get("status_code")}  # fmt: skip
    expected = output if expected_from_output else None
    return DatasetItem(key=trace["id"], input=value, expected=expected, metadata=metadata,
                       source=f"trace:{trace['id']}")  # fmt: skip


def from_review(case: dict[str, Any]) -> DatasetItem | None:
    """An item made of a case a person decided (None for expired ones): the request; as
    ``expected`` the answer the reviewer let through (the draft approved, or their edit);
    ``metadata.human_label``: 1 when the draft was approved, 0 when edited or rejected (what
    a judge is calibrated against)."""
    if case["status"] not in ("approved", "edited", "rejected"):
        return None
    request = case["request"]
    messages = request.get("messages")
    value: Any = messages if messages else request.get("prompt")
    if not value:
        return None
    draft = (case.get("draft") or {}).get("message") or {}
    result = (case.get("result") or {}).get("message") or {}
    expected = _answer_of(result) if case["status"] != "rejected" else None
    metadata = {"verdict": case["status"], "human_label": int(case["status"] == "approved"),
                "draft": _answer_of(draft),
                "check": case["check_name"], "score": case["score"], "route": case["route"],
                "reviewer": case["reviewer"], "comment": case["comment"],
                "request_id": case["request_id"], "decided_at": case["decided_at"]}  # fmt: skip
    return DatasetItem(key=case["id"], input=value, expected=expected, metadata=metadata,
                       source=f"review:{case['id']}")  # fmt: skip


def _answer_of(message: dict[str, Any]) -> Any:
    """A message's answer: its text, or its tool calls (name and arguments) when it has no
    text."""
    if message.get("content") is None and message.get("tool_calls"):
        return [call.get("function", call) for call in message["tool_calls"]]
    return message.get("content")


def to_jsonl(rows: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def to_csv(rows: Iterable[dict[str, Any]]) -> str:
    """A CSV with a column per key (the first row's keys, then any new ones in order);
    values that are not strings or numbers are written as JSON."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return out.getvalue()


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    return json.dumps(value, ensure_ascii=False)
