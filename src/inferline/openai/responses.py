"""Generator outputs -> OpenAI response bodies and stream chunks.

The ``model`` of a body or chunk names the model that produced it (``RequestOutput.model``):
after a fallback, the fallback; after a stream was continued on another target, the chunks
from there on (and the final usage chunk) name that one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from inferline.core.outputs import CompletionOutput, Logprob, RequestOutput, ToolCallDelta
from inferline.openai.echo import EchoOptions, echoed_choice, echoed_usage, generated_logprobs


def usage(outputs: list[RequestOutput]) -> dict[str, Any]:
    """Token usage over one or more requests (a completions call may have several)."""
    prompt = sum(o.num_prompt_tokens for o in outputs)
    completion = sum(o.num_generated_tokens for o in outputs)
    cached = sum(o.metrics.num_cached_prompt_tokens for o in outputs)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _token_bytes(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))


def chat_logprobs(logprobs: list[Logprob]) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion."""
    content = [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": _token_bytes(lp.token),
            "top_logprobs": [
                {"token": text, "logprob": value, "bytes": _token_bytes(text)}
                for _, text, value in lp.top
            ],
        }
        for lp in logprobs
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(logprobs: list[Logprob], text_offset_start: int) -> dict[str, Any]:
    """``choices[i].logprobs`` of a legacy completion."""
    return generated_logprobs(logprobs, text_offset_start)


def tool_finish_reason(finish_reason: str | None, num_calls: int, tool_mode: str) -> str | None:
    """``tool_calls`` when a choice stopped after calling tools; OpenAI keeps ``stop`` for
    a named ``tool_choice``, and ``length`` stays ``length``."""
    if finish_reason == "stop" and num_calls and tool_mode != "named":
        return "tool_calls"
    return finish_reason


def chat_choice(output: CompletionOutput, index: int, tool_mode: str = "none") -> dict[str, Any]:
    """One choice of a non-streaming chat completion (``tool_mode`` from the request)."""
    message: dict[str, Any] = {"role": "assistant", "content": output.text}
    if tool_mode != "none":
        message["content"] = output.text or None
    if output.tool_calls:  # omitted, not [], without calls (as OpenAI does)
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in output.tool_calls
        ]
    finish = tool_finish_reason(output.finish_reason, len(output.tool_calls), tool_mode)
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(output.logprobs) if output.logprobs is not None else None,
        "finish_reason": finish,
    }


def chat_completion(
    header: dict[str, Any], outputs: list[RequestOutput], tool_mode: str
) -> dict[str, Any]:
    """A whole ``chat.completion`` body (``header``: id, created)."""
    choices = [chat_choice(c, c.index, tool_mode) for c in outputs[0].outputs]
    body = {
        **header,
        "object": "chat.completion",
        "model": outputs[0].model or header.get("model", ""),
        "choices": choices,
        "usage": usage(outputs),
    }
    return _with_extension(body, outputs[-1])


def _with_extension(body: dict[str, Any], output: RequestOutput) -> dict[str, Any]:
    """Adds a top-level ``inferline`` object when there is something to say (an answer
    stopped by its key's budget: ``{"stopped_by": "budget"}``)."""
    route = output.route
    if route is not None and route.stopped_by:
        body["inferline"] = {"stopped_by": route.stopped_by}
    return body


def completion_choice(
    output: CompletionOutput,
    index: int,
    request_output: RequestOutput | None = None,
    echo: EchoOptions | None = None,
    prompt_index: int = 0,
) -> dict[str, Any]:
    """One choice of a non-streaming legacy completion (``echo``: the prompt before it,
    from ``request_output``)."""
    if echo is None or request_output is None:
        logprobs = output.logprobs
        lp_body = completion_logprobs(logprobs, 0) if logprobs is not None else None
        return {"index": index, "text": output.text, "logprobs": lp_body,
                "finish_reason": output.finish_reason}  # fmt: skip
    choice = echoed_choice(
        echo, prompt_index, request_output, output, text=output.text, logprobs=output.logprobs
    )
    return {"index": index, "text": choice.text, "logprobs": choice.logprobs,
            "finish_reason": choice.finish_reason}  # fmt: skip


def text_completion(
    header: dict[str, Any],
    outputs: list[RequestOutput],
    n: int,
    echo: EchoOptions | None = None,
) -> dict[str, Any]:
    """A whole ``text_completion`` body over the requests of every prompt."""
    choices = [
        completion_choice(c, prompt_index * n + c.index, output, echo, prompt_index)
        for prompt_index, output in enumerate(outputs)
        for c in output.outputs
    ]
    body = {
        **header,
        "object": "text_completion",
        "model": outputs[0].model or header.get("model", ""),
        "choices": choices,
        "usage": echoed_usage(usage(outputs), echo or EchoOptions()),
    }
    return _with_extension(body, outputs[-1])


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n"


def _tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    if delta.id is not None:
        function = {"name": delta.name, "arguments": delta.arguments}
        return {"index": delta.index, "id": delta.id, "type": "function", "function": function}
    return {"index": delta.index, "function": {"arguments": delta.arguments}}


class ChatChunker:
    """Turns outputs into ``chat.completion.chunk`` objects: per choice the role first, then
    content deltas, then per call a delta with its id and name and argument deltas, and the
    finish reason on the last chunk of the choice."""

    def __init__(self, header: dict[str, Any], include_usage: bool, tool_mode: str) -> None:
        self.header = {**header, "object": "chat.completion.chunk"}
        self.include_usage = include_usage
        self.tool_mode = tool_mode
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.num_logprobs_sent: dict[int, int] = {}

    def _chunk(
        self,
        model: str,
        i: int,
        delta: dict[str, Any],
        logprobs: Any = None,
        finish: str | None = None,
    ) -> dict[str, Any]:
        choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        chunk = {**self.header, "model": model or self.header.get("model", ""), "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, _: int, output: RequestOutput) -> Iterator[dict[str, Any]]:
        """The chunks one output produces."""
        for completion in output.outputs:
            i = completion.index
            if i in self.finished:
                continue
            if i not in self.started:
                self.started.add(i)
                yield self._chunk(output.model, i, {"role": "assistant", "content": ""})
            logprobs = self._logprobs(i, completion)
            deltas = self._deltas(completion)
            has_logprobs = logprobs is not None and completion.num_tokens_delta > 0
            if not deltas and (has_logprobs or completion.finish_reason):
                deltas = [{}]  # only to carry logprobs or the finish reason
            for n, delta in enumerate(deltas):
                finish = None
                if n == len(deltas) - 1:
                    finish = tool_finish_reason(
                        completion.finish_reason, len(completion.tool_calls), self.tool_mode
                    )
                chunk = self._chunk(output.model, i, delta, logprobs if n == 0 else None, finish)
                yield _with_extension(chunk, output) if finish else chunk
            if completion.finish_reason is not None:
                self.finished.add(i)

    def _logprobs(self, i: int, completion: CompletionOutput) -> dict[str, Any] | None:
        if completion.logprobs is None:
            return None
        sent = self.num_logprobs_sent.get(i, 0)
        self.num_logprobs_sent[i] = len(completion.logprobs)
        return chat_logprobs(completion.logprobs[sent:])

    @staticmethod
    def _deltas(completion: CompletionOutput) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if completion.text_delta:
            deltas.append({"content": completion.text_delta})
        deltas += [{"tool_calls": [_tool_call_delta(d)]} for d in completion.tool_call_deltas]
        return deltas

    def final(self, outputs: list[RequestOutput]) -> dict[str, Any] | None:
        """The usage chunk (``choices: []``) when ``stream_options.include_usage`` is set."""
        if not self.include_usage:
            return None
        model = (outputs[-1].model if outputs else "") or self.header.get("model", "")
        return {**self.header, "model": model, "choices": [], "usage": usage(outputs)}


class CompletionChunker:
    """Turns outputs into streamed ``text_completion`` objects."""

    def __init__(
        self,
        header: dict[str, Any],
        n: int,
        include_usage: bool,
        echo: EchoOptions | None = None,
    ) -> None:
        self.header = {**header, "object": "text_completion"}
        self.n, self.include_usage = n, include_usage
        self.echo = echo or EchoOptions()
        self.finished: set[int] = set()
        self.num_logprobs_sent: dict[int, int] = {}
        self.num_chars_sent: dict[int, int] = {}  # of the choice's text, echo included

    def chunks(self, prompt_index: int, output: RequestOutput) -> Iterator[dict[str, Any]]:
        """One chunk per completion that has new text or just finished; a choice's first
        chunk carries the echoed prompt."""
        for completion in output.outputs:
            index = prompt_index * self.n + completion.index
            if index in self.finished:
                continue
            if completion.finish_reason is not None:
                self.finished.add(index)
            if not (
                completion.text_delta or completion.finish_reason or completion.num_tokens_delta
            ):
                continue
            logprobs = None
            if completion.logprobs is not None:
                logprobs = completion.logprobs[self.num_logprobs_sent.get(index, 0) :]
                self.num_logprobs_sent[index] = len(completion.logprobs)
            is_first = index not in self.num_chars_sent
            offset = self.num_chars_sent.get(index, 0)
            echoed = echoed_choice(
                self.echo, prompt_index, output, completion, text=completion.text_delta,
                logprobs=logprobs, with_prompt=is_first, offset=offset,
            )  # fmt: skip
            self.num_chars_sent[index] = offset + len(echoed.text)
            choice = {
                "index": index,
                "text": echoed.text,
                "logprobs": echoed.logprobs,
                "finish_reason": echoed.finish_reason,
            }
            model = output.model or self.header.get("model", "")
            chunk = {**self.header, "model": model, "choices": [choice]}
            if self.include_usage:
                chunk["usage"] = None
            yield _with_extension(chunk, output) if completion.finish_reason else chunk

    def final(self, outputs: list[RequestOutput]) -> dict[str, Any] | None:
        """The usage chunk when ``stream_options.include_usage`` is set."""
        if not self.include_usage:
            return None
        model = (outputs[-1].model if outputs else "") or self.header.get("model", "")
        body_usage = echoed_usage(usage(outputs), self.echo)
        return {**self.header, "model": model, "choices": [], "usage": body_usage}
