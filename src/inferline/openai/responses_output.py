"""Generator outputs -> Responses API objects: the ``response`` body (its output items: a
message with ``output_text``, then one ``function_call`` item per call) and the typed stream
events the ``openai`` SDK accumulates (``response.created`` ... ``response.completed``, each
with its ``sequence_number``; item ids the same in the events and the final response)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from inferline.core.outputs import CompletionOutput, RequestOutput, ToolCallDelta
from inferline.openai.responses import chat_logprobs, usage
from inferline.openai.responses_api import ResponsesRequest


def new_id(prefix: str) -> str:
    """``<prefix>_<32 hex>`` (``resp``, ``msg``, ``fc``)."""
    return f"{prefix}_{uuid.uuid4().hex}"


def response_shell(body: ResponsesRequest, response_id: str, model: str) -> dict[str, Any]:
    """The fields of a response that echo its request; status ``in_progress``, no output."""
    text = body.text.model_dump(by_alias=True, exclude_none=True) if body.text else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": body.background,
        "error": None,
        "incomplete_details": None,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "model": model,
        "output": [],
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "prompt": body.prompt.model_dump() if body.prompt else None,
        "store": body.store,
        "temperature": body.temperature,
        "text": text or {"format": {"type": "text"}},
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "top_logprobs": body.top_logprobs,
        "top_p": body.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": body.user,
    }


def response_usage(outputs: list[RequestOutput]) -> dict[str, Any]:
    """``usage`` in the Responses form, with the prefix-cache hits as cached tokens."""
    counts = usage(outputs)
    return {
        "input_tokens": counts["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": counts["prompt_tokens_details"]["cached_tokens"]},
        "output_tokens": counts["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counts["total_tokens"],
    }


def _status(completion: CompletionOutput) -> tuple[str, dict[str, str] | None]:
    if completion.finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if completion.finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def message_item(item_id: str, text: str, logprobs: list[Any] | None, status: str) -> dict:
    """An assistant ``message`` output item with one ``output_text`` part."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [part]}  # fmt: skip


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    """A ``function_call`` output item."""
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}  # fmt: skip


def _logprobs(completion: CompletionOutput) -> list[Any] | None:
    return chat_logprobs(completion.logprobs)["content"] if completion.logprobs else None


def output_items(completion: CompletionOutput) -> list[dict[str, Any]]:
    """The output items of a finished completion: its text (if any, or if there are no
    calls), then its calls."""
    items = []
    if completion.text or not completion.tool_calls:
        items.append(message_item(new_id("msg"), completion.text, _logprobs(completion),
                                  "completed"))  # fmt: skip
    items += [
        call_item(new_id("fc"), c.id, c.name, c.arguments, "completed")
        for c in completion.tool_calls
    ]
    return items


def finished(
    shell: dict[str, Any], outputs: list[RequestOutput], items: list[dict[str, Any]]
) -> dict[str, Any]:
    """The response once its answer is complete (``incomplete`` when cut by length)."""
    status, details = _status(outputs[0].outputs[0])
    return {**shell, "status": status, "incomplete_details": details, "output": items,
            "model": outputs[-1].model or shell["model"], "usage": response_usage(outputs),
            "completed_at": int(time.time())}  # fmt: skip


def failed(shell: dict[str, Any], code: str, message: str, items: list[dict]) -> dict[str, Any]:
    """The response of an answer that could not be completed."""
    error = {"code": code, "message": message}
    return {**shell, "status": "failed", "error": error, "output": items}


def history_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as the chat messages a next turn continues from."""
    text = "".join(
        p["text"] for item in items if item["type"] == "message" for p in item["content"]
    )
    calls = [
        {"id": i["call_id"], "type": "function",
         "function": {"name": i["name"], "arguments": i["arguments"]}}
        for i in items if i["type"] == "function_call"
    ]  # fmt: skip
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return [message]


class ResponseEvents:
    """Turns one request's outputs into Responses stream events, numbered in order.

    Text opens a message item (and its ``output_text`` part); each call opens a
    ``function_call`` item whose arguments stream as deltas; an item closes when the next
    opens or the answer ends. ``items`` are the closed items, as the final response lists
    them.
    """

    def __init__(self, shell: dict[str, Any]) -> None:
        self.shell = shell
        self.sequence = 0
        self.started = False
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being streamed
        self.text_logprobs: list[Any] = []
        self.num_logprobs_sent = 0

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """One event with the next sequence number."""
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def opening(self) -> list[dict[str, Any]]:
        """``response.created`` and ``response.in_progress`` (once)."""
        if self.started:
            return []
        self.started = True
        return [self.event("response.created", response=self.shell),
                self.event("response.in_progress", response=self.shell)]  # fmt: skip

    def chunks(self, _: int, output: RequestOutput) -> Iterator[dict[str, Any]]:
        """The events one output produces (a Responses request has one completion)."""
        yield from self.opening()
        completion = output.outputs[0]
        if completion.text_delta:
            yield from self._text(completion)
        for delta in completion.tool_call_deltas:
            yield from self._call(delta)

    def _text(self, completion: CompletionOutput) -> Iterator[dict[str, Any]]:
        if self.open is None or self.open["type"] != "message":
            yield from self.close()
            self.open = message_item(new_id("msg"), "", None, "in_progress")
            yield self._item_event("response.output_item.added")
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            yield self.event("response.content_part.added", **self._at(), part=part)
        fresh: list[Any] = []
        if completion.logprobs is not None:
            fresh = chat_logprobs(completion.logprobs[self.num_logprobs_sent :])["content"]
            self.num_logprobs_sent = len(completion.logprobs)
            self.text_logprobs += fresh
        self.open["content"][0]["text"] += completion.text_delta
        yield self.event("response.output_text.delta", **self._at(),
                         delta=completion.text_delta, logprobs=fresh)  # fmt: skip

    def _call(self, delta: ToolCallDelta) -> Iterator[dict[str, Any]]:
        if delta.id is not None:
            yield from self.close()
            self.open = call_item(new_id("fc"), delta.id, delta.name or "", "", "in_progress")
            yield self._item_event("response.output_item.added")
        if self.open is None or self.open["type"] != "function_call":
            return  # arguments of a call we never saw open: nothing to attach them to
        if delta.arguments:
            self.open["arguments"] += delta.arguments
            yield self.event("response.function_call_arguments.delta", item_id=self.open["id"],
                             output_index=len(self.items), delta=delta.arguments)  # fmt: skip

    def _at(self) -> dict[str, Any]:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.items), "content_index": 0}

    def _item_event(self, kind: str) -> dict[str, Any]:
        assert self.open is not None
        return self.event(kind, output_index=len(self.items), item=dict(self.open))

    def close(self) -> Iterator[dict[str, Any]]:
        """The events that complete the open item, if any."""
        item = self.open
        if item is None:
            return
        item["status"] = "completed"
        if item["type"] == "message":
            part = item["content"][0]
            part["logprobs"] = self.text_logprobs
            yield self.event("response.output_text.done", **self._at(), text=part["text"],
                             logprobs=self.text_logprobs)  # fmt: skip
            yield self.event("response.content_part.done", **self._at(), part=part)
        else:
            yield self.event("response.function_call_arguments.done", item_id=item["id"],
                             output_index=len(self.items), name=item["name"],
                             arguments=item["arguments"])  # fmt: skip
        yield self._item_event("response.output_item.done")
        self.items.append(item)
        self.open = None

    def ending(
        self, response_of: Callable[[list[dict[str, Any]]], dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The open item closed (an empty message when nothing was said), then
        ``response.completed`` or ``response.incomplete`` with ``response_of(items)``;
        (the events, the response)."""
        events = list(self.close())
        if not self.items:
            self.open = message_item(new_id("msg"), "", None, "in_progress")
            events += [self._item_event("response.output_item.added"), *self.close()]
        response = response_of(self.items)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        return [*events, self.event(kind, response=response)], response

    def failure(self, response: dict[str, Any], code: str, message: str) -> list[dict]:
        """An ``error`` event, then ``response.failed`` (never a completed event)."""
        error = self.event("error", code=code, message=message, param=None)
        return [*self.opening(), error, self.event("response.failed", response=response)]
