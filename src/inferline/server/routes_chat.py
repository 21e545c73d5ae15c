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
from inferline.server.formatting import chat_choice, chat_logprobs, usage
from inferline.server.observe import RequestTrace
from inferline.server.runner import request_priority, respond, stream_response, submit_all
from inferline.server.sampling import chat_sampling_params
from inferline.server.schemas import ChatCompletionRequest, ChatMessage
from inferline.server.state import ServerState

router = APIRouter()


def _template_message(message: ChatMessage) -> dict[str, Any]:
    role = "system" if message.role == "developer" else message.role
    rendered: dict[str, Any] = {"role": role, "content": message.text()}
    if message.tool_calls:
        rendered["tool_calls"] = message.tool_calls
    if message.name:
        rendered["name"] = message.name
    return rendered


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    state: ServerState = request.app.state.inferline
    state.check_model(body.model)
    params = chat_sampling_params(body)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    messages = [_template_message(m) for m in body.messages]
    trace = RequestTrace(
        request_id, "/v1/chat/completions", body.model, messages[-1]["content"], body.user
    )
    generation = GenerationRequest(
        request_id,
        messages=messages,
        tools=body.tools,
        params=params,
        priority=request_priority(request),
    )
    streams = await submit_all(state, trace, [generation])
    created = int(time.time())
    header = {"id": request_id, "created": created, "model": body.model}
    if not body.stream:
        return await respond(request, state, trace, streams, lambda outs: _completion(header, outs))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunker = _Chunker(header, include_usage)
    return stream_response(state, trace, streams, chunker.chunks, chunker.final)


def _completion(header: dict[str, Any], outputs: list[RequestOutput]) -> dict[str, Any]:
    choices = [chat_choice(c, c.index) for c in outputs[0].outputs]
    return {**header, "object": "chat.completion", "choices": choices, "usage": usage(outputs)}


class _Chunker:
    """Turns engine outputs into ``chat.completion.chunk`` objects."""

    def __init__(self, header: dict[str, Any], include_usage: bool) -> None:
        self.header = {**header, "object": "chat.completion.chunk"}
        self.include_usage = include_usage
        self.started: set[int] = set()
        self.finished: set[int] = set()
        self.num_logprobs_sent: dict[int, int] = {}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
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
            if i not in self.started:
                self.started.add(i)
                delta = {"role": "assistant", "content": ""}
                yield self._chunk(
                    {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
                )
            logprobs = None
            if completion.logprobs is not None:
                sent = self.num_logprobs_sent.get(i, 0)
                logprobs = chat_logprobs(completion.logprobs[sent:])
                self.num_logprobs_sent[i] = len(completion.logprobs)
            if completion.finish_reason is not None:
                self.finished.add(i)
            if completion.text_delta or completion.finish_reason or completion.token_ids_delta:
                yield self._chunk(
                    {
                        "index": i,
                        "delta": {"content": completion.text_delta}
                        if completion.text_delta
                        else {},
                        "logprobs": logprobs,
                        "finish_reason": completion.finish_reason,
                    }
                )

    def final(self, outputs: list[RequestOutput]) -> dict[str, Any] | None:
        """The usage chunk (``choices: []``) when ``stream_options.include_usage`` is set."""
        if not self.include_usage:
            return None
        return {**self.header, "choices": [], "usage": usage(outputs)}
