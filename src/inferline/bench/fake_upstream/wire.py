"""The bytes of OpenAI responses: SSE chunks (precomputed per word), JSON bodies, errors."""

from __future__ import annotations

import json
from typing import Any

from inferline.bench.fake_upstream.text import Canon

DONE = b"data: [DONE]\n\n"
MALFORMED = b"data: {not json\n\n"
_CHAT_WORD = (
    b'"choices":[{"index":0,"delta":{"content":',
    b'},"logprobs":null,"finish_reason":null}]}\n\n',
)
_TEXT_WORD = (b'"choices":[{"index":0,"text":', b',"logprobs":null,"finish_reason":null}]}\n\n')

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key in your account settings.",
    ),
    404: ("invalid_request_error", "not_found", "Not found."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again in a moment.",
    ),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}
_CODES: dict[str, tuple[str | None, str]] = {
    "context_length_exceeded": (
        "messages",
        "This model's maximum context length is 8192 tokens. However, your messages resulted "
        "in {n} tokens. Please reduce the length of the messages.",
    ),
    "content_filter": (
        "prompt",
        "The response was filtered due to the prompt triggering the content management "
        "policy. Please modify your prompt and retry.",
    ),
}


def error_body(
    status: int,
    *,
    code: str | None = None,
    message: str | None = None,
    tokens: int = 0,
    param: str | None = None,
) -> bytes:
    """An OpenAI-shaped error body: ``{"error": {message, type, param, code}}``."""
    kind, default_code, default_message = _ERRORS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    )
    if code in _CODES:
        param, template = _CODES[code]
        default_message = template.format(n=max(tokens, 8193))
    error = {
        "message": message or default_message,
        "type": kind,
        "param": param,
        "code": code or default_code,
    }
    return json.dumps({"error": error}).encode()


class Wire:
    """Per-word JSON string fragments of one canonical text, encoded once."""

    def __init__(self, canon: Canon) -> None:
        self.canon = canon
        self.bare = tuple(json.dumps(w).encode() for w in canon.words)
        self.spaced = tuple(json.dumps(" " + w).encode() for w in canon.words)


class Writer:
    """Builds the bytes of one response (chat or text completion) for one model and id."""

    __slots__ = ("chat", "created", "model", "pre", "rid", "word_head", "word_tail", "wire")

    def __init__(self, wire: Wire, *, chat: bool, model: str, rid: str, created: int) -> None:
        self.wire, self.chat, self.model, self.rid, self.created = wire, chat, model, rid, created
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.pre = (
            f'data: {{"id":"{rid}","object":"{obj}","created":{created},'
            f'"model":{json.dumps(model)},'
        ).encode()
        self.word_head, self.word_tail = _CHAT_WORD if chat else _TEXT_WORD

    def word(self, i: int, spaced: bool) -> bytes:
        """The SSE chunk of canonical word ``i``, with or without its leading space."""
        text = self.wire.spaced[i] if spaced else self.wire.bare[i]
        return self.pre + self.word_head + text + self.word_tail

    def role(self) -> bytes:
        """Chat's first chunk (role, empty content), as OpenAI sends it; empty for text."""
        if not self.chat:
            return b""
        return self.pre + self.word_head + b'"","role":"assistant"' + self.word_tail

    def finish(self, reason: str) -> bytes:
        """The chunk that carries ``finish_reason``."""
        choice = b'"delta":{}' if self.chat else b'"text":""'
        return (
            self.pre
            + b'"choices":[{"index":0,'
            + choice
            + b',"logprobs":null,"finish_reason":'
            + json.dumps(reason).encode()
            + b"}]}\n\n"
        )

    def usage(self, prompt: int, completion: int) -> bytes:
        """The final ``stream_options.include_usage`` chunk (no choices)."""
        return (
            self.pre
            + b'"choices":[],"usage":'
            + json.dumps(_usage(prompt, completion)).encode()
            + b"}\n\n"
        )

    def tool_call_chunks(self, name: str, arguments: str) -> bytes:
        """A streamed tool call as OpenAI sends it: id and name first, then the arguments."""
        head = {"index": 0, "id": f"call_{self.rid}", "type": "function",
                "function": {"name": name, "arguments": ""}}  # fmt: skip
        tail = {"index": 0, "function": {"arguments": arguments}}
        return b"".join(self._delta({"tool_calls": [call]}) for call in (head, tail))

    def _delta(self, delta: dict[str, Any]) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        return self.pre + b'"choices":' + json.dumps([choice]).encode() + b"}\n\n"

    def tool_call_body(self, name: str, arguments: str, prompt: int, completion: int) -> bytes:
        """A non-streaming chat response whose message asks for one function call."""
        call = {"id": f"call_{self.rid}", "type": "function",
                "function": {"name": name, "arguments": arguments}}  # fmt: skip
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return self._document(
            {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"},
            prompt,
            completion,
        )

    def body(self, text: str, finish: str | None, prompt: int, completion: int) -> bytes:
        """A non-streaming response's JSON body."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return self._document(choice, prompt, completion)

    def _document(self, choice: dict[str, Any], prompt: int, completion: int) -> bytes:
        return json.dumps(
            {
                "id": self.rid,
                "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": _usage(prompt, completion),
            }
        ).encode()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
