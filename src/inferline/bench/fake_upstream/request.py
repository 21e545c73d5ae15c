"""Reading one completion request: model, stream flags, prompt size and continuation."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from inferline.bench.fake_upstream.text import Canon, count_words, needs_space


class BadRequest(Exception):
    """A request the fake answers with 400 (``param`` names the offending field)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


@dataclass(frozen=True, slots=True)
class Call:
    """One parsed completion request: which canonical words ``[start, stop)`` it gets.

    ``start`` is the number of canonical words in a continuation's prefix (0 otherwise);
    ``spaced`` says whether the first word sent carries a leading space.
    """

    chat: bool
    model: str
    stream: bool
    include_usage: bool
    prompt_words: int
    continuation: bool
    start: int
    stop: int
    spaced: bool
    finish: str


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _chat_prompt(req: dict[str, Any], canon: Canon) -> tuple[int, bool, int, bool]:
    messages = req.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise BadRequest("messages must be a non-empty list of objects", "messages")
    words = sum(count_words(_text(m.get("content"))) for m in messages)
    last = messages[-1]
    is_assistant = last.get("role") == "assistant"
    if req.get("continue_final_message") and not is_assistant:
        raise BadRequest("continue_final_message needs a final assistant message", "messages")
    if not (is_assistant and (req.get("continue_final_message") or last.get("prefix") is True)):
        return words, False, 0, False
    prefix = _text(last.get("content"))
    start = canon.chat_prefix_words(prefix)
    if start is None:
        raise BadRequest("the assistant prefix is not a prefix of the canonical text", "messages")
    return words, True, start, needs_space(prefix)


def _completion_prompt(req: dict[str, Any], canon: Canon) -> tuple[int, bool, int, bool]:
    prompt = req.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = prompt[0]
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt), False, 0, False
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string, a list of strings or of token ids", "prompt")
    start = canon.prompt_tail_words(prompt)
    return count_words(prompt), start > 0, start, start > 0 and needs_space(prompt)


def parse_call(body: bytes, *, chat: bool, canon: Canon) -> Call:
    """Validates a chat or text completion request against the canonical text."""
    try:
        req = json.loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(req, dict):
        raise BadRequest("the body must be a JSON object")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required", "model")
    limit = (
        req.get("max_completion_tokens", req.get("max_tokens")) if chat else req.get("max_tokens")
    )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise BadRequest("max_tokens must be a non-negative integer", "max_tokens")
    words, continuation, start, spaced = (_chat_prompt if chat else _completion_prompt)(req, canon)
    stop = len(canon) if limit is None else min(len(canon), start + limit)
    stream = bool(req.get("stream"))
    options = req.get("stream_options")
    return Call(
        chat=chat,
        model=model,
        stream=stream,
        include_usage=stream and isinstance(options, dict) and bool(options.get("include_usage")),
        prompt_words=words,
        continuation=continuation,
        start=start,
        stop=stop,
        spaced=spaced,
        finish="stop" if stop == len(canon) else "length",
    )
