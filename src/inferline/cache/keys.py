"""What makes two requests the same question: a canonical fingerprint of everything that
can change the answer, so that changing any sampling parameter, the system prompt, a tool,
the response format or the model gives another key."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import SamplingParams

_NOT_THE_QUESTION = (
    "request_id", "key_id", "user", "session", "metadata", "deadline", "streaming", "spend",
    "cache", "priority", "traceparent",
)  # fmt: skip


def _params(params: SamplingParams) -> dict[str, Any]:
    fields = dataclasses.asdict(params)
    structured = params.structured
    fields["structured"] = None if structured is None else dataclasses.asdict(structured)
    return fields


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _fields(request: GenerationRequest) -> dict[str, Any]:
    fields = {
        f.name: getattr(request, f.name)
        for f in dataclasses.fields(request)
        if f.name not in _NOT_THE_QUESTION
    }
    fields["params"] = _params(request.params)
    return fields


def exact_key(request: GenerationRequest, scope: str, revision: str) -> str:
    """The key of the whole request (``scope``: the key id, or ``shared``)."""
    return _digest({"scope": scope, "revision": revision, **_fields(request)})


def last_user_message(request: GenerationRequest) -> tuple[int, str] | None:
    """The position and text of the last user message (None for a prompt or none)."""
    for index in range(len(request.messages or []) - 1, -1, -1):
        message = (request.messages or [])[index]
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return index, message["content"]
    return None


def semantic_context(request: GenerationRequest, scope: str, revision: str) -> str | None:
    """The key of everything but the last user message's text (None: not a chat with one):
    a semantic hit needs this identical."""
    found = last_user_message(request)
    if found is None:
        return None
    index, _ = found
    messages = [dict(m) for m in request.messages or []]
    messages[index] = {**messages[index], "content": None}
    fields = {**_fields(request), "messages": messages}
    return _digest({"scope": scope, "revision": revision, "semantic": True, **fields})
