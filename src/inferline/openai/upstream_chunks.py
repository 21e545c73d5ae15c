"""The reverse mapping's second half: the chunks a remote OpenAI-compatible upstream streams
back -> `RequestOutput`s (`ChunkAccumulator`), with finish reasons, usage split across
choices, logprobs and error messages. Pure (no HTTP)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from inferline.core.errors import (
    ContentFilteredError,
    StreamInterruptedError,
)
from inferline.core.outputs import (
    CompletionOutput,
    FinishReason,
    Logprob,
    RequestMetrics,
    RequestOutput,
    ToolCall,
    ToolCallDelta,
)
from inferline.openai.upstream import MAX_MESSAGE_CHARS

_MISSING_LOGPROB = -9999.0  # what vLLM reports for -inf (JSON has no infinity)


def map_finish_reason(reason: str) -> FinishReason:
    """An upstream's finish reason as ours. A stop on tool calls is ``stop``: the response
    formatter turns stop + calls into ``tool_calls``."""
    if reason == "length":
        return "length"
    if reason == "content_filter":
        return "content_filter"
    return "stop"


def split_tokens(total: int, weights: list[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (evenly when all are 0); the parts sum
    to ``total`` (largest remainders get the leftover units)."""
    if not any(weights):
        weights = [1] * len(weights)
    weight_sum = sum(weights)
    parts = [total * w // weight_sum for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: -(total * weights[i] % weight_sum))
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts


@dataclass
class _Choice:
    """One completion's cumulative state and what is new since the last output."""

    text: str = ""
    num_tokens: int = 0
    logprobs: list[Logprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    calls: list[list[str]] = field(default_factory=list)  # [id, name, arguments]
    call_positions: dict[int, int] = field(default_factory=dict)  # upstream index -> ours
    text_delta: str = ""
    num_tokens_delta: int = 0
    call_deltas: list[ToolCallDelta] = field(default_factory=list)

    def add_call_delta(self, delta: dict[str, Any]) -> None:
        """One entry of ``delta.tool_calls``: the first of an index starts a call."""
        function = delta.get("function") or {}
        arguments = function.get("arguments") or ""
        name = function.get("name") or ""
        if not isinstance(arguments, str) or not isinstance(name, str):
            raise TypeError("tool call name and arguments must be strings")
        index = delta.get("index", max(self.call_positions, default=0))
        position = self.call_positions.get(index)
        if position is None:
            call_id = delta.get("id") or f"call_{uuid.uuid4().hex[:24]}"
            self.call_positions[index] = len(self.calls)
            self.calls.append([str(call_id), name, arguments])
            self.call_deltas.append(ToolCallDelta(len(self.calls) - 1, arguments, call_id, name))
            return
        call = self.calls[position]
        call[1] = call[1] or name  # later deltas may repeat the name; it is never split
        call[2] += arguments
        if arguments:
            self.call_deltas.append(ToolCallDelta(position, arguments))

    def output(self, index: int) -> CompletionOutput:
        """The completion now, consuming the deltas."""
        out = CompletionOutput(
            index=index,
            text=self.text,
            text_delta=self.text_delta,
            num_tokens=self.num_tokens,
            num_tokens_delta=self.num_tokens_delta,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            tool_calls=[ToolCall(*call) for call in self.calls],
            tool_call_deltas=self.call_deltas,
        )
        self.text_delta, self.num_tokens_delta, self.call_deltas = "", 0, []
        return out


class ChunkAccumulator:
    """Turns an upstream's streamed chunks (``chat.completion.chunk`` or ``text_completion``,
    and the final usage chunk) into `RequestOutput`s, one per chunk that changed something.

    While streaming, a completion counts one token per content or tool-call chunk, or one
    per logprobs entry when there are logprobs. The final output takes the usage chunk's
    numbers: ``completion_tokens`` for ``n == 1``; for ``n > 1`` it is split over the
    completions in proportion to their counted tokens (`split_tokens`). Until a usage chunk
    comes (and if none does), ``num_prompt_tokens`` is ``estimated_prompt_tokens``: the
    prompt was sent, so a stream cut before its usage is still charged for it.

    Errors (``target`` names the upstream): a chunk that is not a chunk object raises
    `StreamInterruptedError` (``malformed_chunk``), an ``{"error": ...}`` chunk one with code
    ``upstream_error_event``, and a first completion that ends on ``content_filter`` with
    no content raises `ContentFilteredError`.
    """

    def __init__(
        self,
        request_id: str,
        *,
        n: int,
        is_chat: bool,
        model: str,
        metrics: RequestMetrics,
        prompt: str | None = None,
        target: str = "",
        estimated_prompt_tokens: int = 0,
    ) -> None:
        self.request_id, self.is_chat, self.model = request_id, is_chat, model
        self.metrics, self.prompt, self.target = metrics, prompt, target
        self.choices = [_Choice() for _ in range(n)]
        self.num_prompt_tokens = estimated_prompt_tokens
        self.num_completion_tokens: int | None = None
        self.has_content = False  # a token or a finish reason has arrived

    @property
    def is_complete(self) -> bool:
        """Every completion has its finish reason."""
        return all(c.finish_reason is not None for c in self.choices)

    def feed(self, chunk: Any, now_s: float) -> RequestOutput | None:
        """Takes one parsed chunk; returns the new output, or None if nothing changed."""
        if not isinstance(chunk, dict):
            raise self._malformed("a chunk must be a JSON object")
        if chunk.get("error") is not None:
            message = error_message(chunk["error"])
            raise self._error("upstream_error_event", f"sent an error mid-stream: {message}")
        try:
            usage, choices = chunk.get("usage"), chunk.get("choices")
            if usage is not None:
                self._read_usage(usage)
            if choices is None and usage is not None:
                return None
            if not isinstance(choices, list):
                raise TypeError("choices must be a list")
            changed = [self._feed_choice(choice, now_s) for choice in choices]
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise self._malformed(f"{type(exc).__name__}: {exc}") from exc
        return self._output(False, now_s) if any(changed) else None

    def finish(self, now_s: float) -> RequestOutput:
        """The final output (the stream's ``[DONE]``, or its end once every completion
        finished); a completion with no finish reason gets ``stop``."""
        counts = [c.num_tokens for c in self.choices]
        if self.num_completion_tokens is not None:
            counts = split_tokens(self.num_completion_tokens, counts)
        for choice, count in zip(self.choices, counts, strict=True):
            # usage is authoritative; a delta never goes negative if chunks over-counted
            choice.num_tokens_delta += max(0, count - choice.num_tokens)
            choice.num_tokens = count
            choice.finish_reason = choice.finish_reason or "stop"
        return self._output(True, now_s)

    def aborted(self, now_s: float) -> RequestOutput:
        """The final output of an aborted request: unfinished completions end with ``abort``."""
        for choice in self.choices:
            choice.finish_reason = choice.finish_reason or "abort"
        return self._output(True, now_s)

    def _feed_choice(self, data: dict[str, Any], now_s: float) -> bool:
        index = data["index"]
        if not isinstance(index, int) or not 0 <= index < len(self.choices):
            raise ValueError(f"choice index {index!r} out of range")
        choice = self.choices[index]
        if choice.finish_reason is not None:
            return False  # nothing may follow a completion's end
        num_before = (len(choice.text), len(choice.calls), len(choice.call_deltas))
        num_logprobs = self._read_content(choice, data)
        has_new = (len(choice.text), len(choice.calls), len(choice.call_deltas)) != num_before
        new_tokens = num_logprobs or (1 if has_new else 0)
        choice.num_tokens += new_tokens
        choice.num_tokens_delta += new_tokens
        if new_tokens and self.metrics.first_token_s is None:
            self.metrics.first_token_s = now_s
        finish = data.get("finish_reason")
        if finish is not None:
            self._finish_choice(index, choice, str(finish), data.get("stop_reason"))
        self.has_content = self.has_content or bool(new_tokens) or finish is not None
        return bool(new_tokens) or finish is not None

    def _read_content(self, choice: _Choice, data: dict[str, Any]) -> int:
        """Adds the chunk's text, calls and logprobs; returns the number of logprobs."""
        if self.is_chat:
            delta = data.get("delta") or {}
            text = (delta.get("content") or "") + (delta.get("refusal") or "")
            for call in delta.get("tool_calls") or []:
                choice.add_call_delta(call)
            logprobs = _chat_logprobs(data.get("logprobs"))
        else:
            text = data.get("text") or ""
            logprobs = _completion_logprobs(data.get("logprobs"))
        if not isinstance(text, str):
            raise TypeError("content must be a string")
        choice.text += text
        choice.text_delta += text
        if logprobs is not None:
            choice.logprobs = (choice.logprobs or []) + logprobs
        return len(logprobs or ())

    def _finish_choice(
        self, index: int, choice: _Choice, reason: str, stop_reason: str | int | None
    ) -> None:
        if reason in ("abort", "error"):  # vLLM's: the upstream gave up, the answer is cut
            raise self._error("upstream_aborted", f"ended a completion with {reason!r}")
        if reason == "content_filter" and index == 0 and not (choice.text or choice.calls):
            raise ContentFilteredError(
                f"{self.target}: the upstream's content filter refused the request",
                target=self.target,
            )
        choice.finish_reason = map_finish_reason(reason)
        if isinstance(stop_reason, str | int):
            choice.stop_reason = stop_reason

    def _read_usage(self, usage: dict[str, Any]) -> None:
        if usage.get("prompt_tokens") is not None:
            self.num_prompt_tokens = int(usage["prompt_tokens"])
        if usage.get("completion_tokens") is not None:
            self.num_completion_tokens = int(usage["completion_tokens"])
        details = usage.get("prompt_tokens_details") or {}
        self.metrics.num_cached_prompt_tokens = int(details.get("cached_tokens") or 0)

    def _output(self, finished: bool, now_s: float) -> RequestOutput:
        if finished:
            self.metrics.finished_s = now_s
        return RequestOutput(
            self.request_id,
            self.prompt,
            [],
            [choice.output(i) for i, choice in enumerate(self.choices)],
            finished,
            self.metrics,
            num_prompt_tokens=self.num_prompt_tokens,
            model=self.model,
        )

    def _malformed(self, detail: str) -> StreamInterruptedError:
        return self._error("malformed_chunk", f"sent a malformed chunk ({detail})")

    def _error(self, code: str, what: str) -> StreamInterruptedError:
        message = f"{self.target}: the upstream {what[:MAX_MESSAGE_CHARS]}"
        return StreamInterruptedError(message, target=self.target, code=code)


def _chat_logprobs(data: Any) -> list[Logprob] | None:
    if not data or data.get("content") is None:
        return None
    return [_chat_logprob(entry) for entry in data["content"]]


def _chat_logprob(entry: dict[str, Any]) -> Logprob:
    top = entry.get("top_logprobs") or ()
    alternatives = tuple((-1, str(t["token"]), _logprob(t["logprob"])) for t in top)
    return Logprob(-1, str(entry["token"]), _logprob(entry["logprob"]), alternatives)


def _completion_logprobs(data: Any) -> list[Logprob] | None:
    if not data or data.get("tokens") is None:
        return None
    tops = data.get("top_logprobs") or [None] * len(data["tokens"])
    out = []
    for token, value, top in zip(data["tokens"], data["token_logprobs"], tops, strict=True):
        ranked = sorted((top or {}).items(), key=lambda item: -_logprob(item[1]))
        alternatives = tuple((-1, str(text), _logprob(lp)) for text, lp in ranked)
        out.append(Logprob(-1, str(token), _logprob(value), alternatives))
    return out


def _logprob(value: Any) -> float:
    return _MISSING_LOGPROB if value is None else float(value)


def error_message(error: Any) -> str:
    """The message of an OpenAI-shaped ``error`` value (an object or a string), truncated."""
    if isinstance(error, dict):
        error = error.get("message") or json.dumps(error)
    return str(error)[:MAX_MESSAGE_CHARS]
