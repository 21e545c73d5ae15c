"""``POST /v1/chat/completions``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferline.core.outputs import RequestOutput
from inferline.core.protocols import GenerationRequest
from inferline.server.formatting import chat_choice, chat_logprobs, tool_finish_reason, usage
from inferline.server.observe import RequestTrace
from inferline.server.runner import request_priority, respond, stream_response, submit_all
from inferline.server.sampling import chat_sampling_params
from inferline.server.schemas import ChatCompletionRequest, ChatMessage
from inferline.server.state import ServerState
from inferline.server.tool_choice import ToolPlan, check_tool_messages, plan_tools
from inferline.server.tool_parser import (
    ArgumentsDelta,
    CallStart,
    ContentDelta,
    HermesToolParser,
    ToolEvent,
)

router = APIRouter()


def _template_message(message: ChatMessage) -> dict[str, Any]:
    role = "system" if message.role == "developer" else message.role
    rendered: dict[str, Any] = {"role": role, "content": message.text()}
    if message.tool_calls:
        rendered["tool_calls"] = message.tool_calls
    if message.name:
        rendered["name"] = message.name
    if message.tool_call_id:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    state: ServerState = request.app.state.inferline
    state.check_model(body.model)
    check_tool_messages(body)
    plan = plan_tools(body)
    params = chat_sampling_params(body, plan.calling)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    messages = [_template_message(m) for m in body.messages]
    trace = RequestTrace(
        request_id, "/v1/chat/completions", body.model, messages[-1]["content"], body.user
    )
    generation = GenerationRequest(
        request_id,
        messages=messages,
        tools=plan.template_tools,
        params=params,
        priority=request_priority(request),
    )
    streams = await submit_all(state, trace, [generation])
    created = int(time.time())
    header = {"id": request_id, "created": created, "model": body.model}
    if not body.stream:
        return await respond(
            request, state, trace, streams, lambda outs: _completion(header, outs, plan)
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunker = _Chunker(header, include_usage, plan)
    return stream_response(state, trace, streams, chunker.chunks, chunker.final)


def _completion(
    header: dict[str, Any], outputs: list[RequestOutput], plan: ToolPlan
) -> dict[str, Any]:
    choices = [chat_choice(c, c.index, plan.mode) for c in outputs[0].outputs]
    return {**header, "object": "chat.completion", "choices": choices, "usage": usage(outputs)}


class _Chunker:
    """Turns engine outputs into ``chat.completion.chunk`` objects.

    With tools in play, each choice's text goes through a `HermesToolParser`: content
    deltas, then per call a first delta with its id and name and argument deltas after it.
    """

    def __init__(self, header: dict[str, Any], include_usage: bool, plan: ToolPlan) -> None:
        self.header = {**header, "object": "chat.completion.chunk"}
        self.include_usage = include_usage
        self.tool_mode = plan.mode
        self.parsers: dict[int, HermesToolParser] = {}
        self.finished: set[int] = set()
        self.num_logprobs_sent: dict[int, int] = {}

    def _chunk(
        self, i: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None
    ) -> dict[str, Any]:
        choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        chunk = {**self.header, "choices": [choice]}
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, _: int, output: RequestOutput) -> Iterator[dict[str, Any]]:
        """The chunks one engine output produces (role first, then content, then finish)."""
        for completion in output.outputs:
            i = completion.index
            if i in self.finished:
                continue
            if i not in self.parsers:
                self.parsers[i] = HermesToolParser()
                yield self._chunk(i, {"role": "assistant", "content": ""})
            logprobs = None
            if completion.logprobs is not None:
                sent = self.num_logprobs_sent.get(i, 0)
                logprobs = chat_logprobs(completion.logprobs[sent:])
                self.num_logprobs_sent[i] = len(completion.logprobs)
            deltas = self._deltas(i, completion.text_delta, completion.finish_reason is not None)
            has_logprobs = logprobs is not None and bool(completion.token_ids_delta)
            if not deltas and (has_logprobs or completion.finish_reason):
                deltas = [{}]  # only to carry logprobs or the finish reason
            for n, delta in enumerate(deltas):
                last = n == len(deltas) - 1
                finish = self._finish_reason(i, completion.finish_reason) if last else None
                yield self._chunk(i, delta, logprobs if n == 0 else None, finish)
            if completion.finish_reason is not None:
                self.finished.add(i)

    def _deltas(self, i: int, text: str, is_last: bool) -> list[dict[str, Any]]:
        if self.tool_mode == "none":
            return [{"content": text}] if text else []
        parser = self.parsers[i]
        events = parser.feed(text) + (parser.finish() if is_last else [])
        return [_delta(event) for event in events]

    def _finish_reason(self, i: int, finish_reason: str | None) -> str | None:
        return tool_finish_reason(finish_reason, self.parsers[i].num_calls, self.tool_mode)

    def final(self, outputs: list[RequestOutput]) -> dict[str, Any] | None:
        """The usage chunk (``choices: []``) when ``stream_options.include_usage`` is set."""
        if not self.include_usage:
            return None
        return {**self.header, "choices": [], "usage": usage(outputs)}


def _delta(event: ToolEvent) -> dict[str, Any]:
    """One parser event as a chunk's ``delta``."""
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    if isinstance(event, CallStart):
        function = {"name": event.name, "arguments": ""}
        call = {"index": event.index, "id": event.call_id, "type": "function", "function": function}
    else:
        assert isinstance(event, ArgumentsDelta)
        call = {"index": event.index, "function": {"arguments": event.text}}
    return {"tool_calls": [call]}
