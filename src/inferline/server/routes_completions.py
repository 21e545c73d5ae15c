"""``POST /v1/completions`` (legacy): one or several prompts, text or token ids."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferline.core.outputs import RequestOutput
from inferline.core.protocols import GenerationRequest
from inferline.server.errors import APIError
from inferline.server.formatting import completion_choice, completion_logprobs, usage
from inferline.server.observe import RequestTrace
from inferline.server.runner import request_priority, respond, stream_response, submit_all
from inferline.server.sampling import completion_sampling_params
from inferline.server.schemas import CompletionRequest
from inferline.server.state import ServerState

router = APIRouter()
_MAX_PROMPTS = 64


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]
    if len(prompt) > _MAX_PROMPTS:
        raise APIError(400, f"at most {_MAX_PROMPTS} prompts per request", param="prompt")
    return list(prompt)


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    """Text completion for each prompt (``n`` choices each), streamed when asked."""
    state: ServerState = request.app.state.inferline
    state.check_model(body.model)
    params = completion_sampling_params(body)
    prompts = _prompts(body.prompt)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    first = prompts[0] if isinstance(prompts[0], str) else None
    trace = RequestTrace(request_id, "/v1/completions", body.model, first, body.user)
    generations = [
        GenerationRequest(
            f"{request_id}-{i}", prompt=p, params=params, priority=request_priority(request)
        )
        for i, p in enumerate(prompts)
    ]
    streams = await submit_all(state, trace, generations)
    header = {"id": request_id, "object": "text_completion", "created": int(time.time())}
    header["model"] = body.model
    if not body.stream:
        return await respond(
            request, state, trace, streams, lambda outs: _completion(header, outs, body.n)
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunker = _Chunker(header, body.n, include_usage)
    return stream_response(state, trace, streams, chunker.chunks, chunker.final)


def _completion(header: dict[str, Any], outputs: list[RequestOutput], n: int) -> dict[str, Any]:
    choices = [
        completion_choice(c, prompt_index * n + c.index)
        for prompt_index, output in enumerate(outputs)
        for c in output.outputs
    ]
    return {**header, "choices": choices, "usage": usage(outputs)}


class _Chunker:
    """Turns engine outputs into streamed ``text_completion`` objects."""

    def __init__(self, header: dict[str, Any], n: int, include_usage: bool) -> None:
        self.header, self.n, self.include_usage = header, n, include_usage
        self.finished: set[int] = set()
        self.num_logprobs_sent: dict[int, int] = {}
        self.num_chars_sent: dict[int, int] = {}

    def chunks(self, prompt_index: int, output: RequestOutput) -> Iterator[dict[str, Any]]:
        """One chunk per completion that has new text or just finished."""
        for completion in output.outputs:
            index = prompt_index * self.n + completion.index
            if index in self.finished:
                continue
            if completion.finish_reason is not None:
                self.finished.add(index)
            if not (
                completion.text_delta or completion.finish_reason or completion.token_ids_delta
            ):
                continue
            logprobs = None
            if completion.logprobs is not None:
                sent = self.num_logprobs_sent.get(index, 0)
                offset = self.num_chars_sent.get(index, 0)
                logprobs = completion_logprobs(completion.logprobs[sent:], offset)
                self.num_logprobs_sent[index] = len(completion.logprobs)
            self.num_chars_sent[index] = len(completion.text)
            choice = {
                "index": index,
                "text": completion.text_delta,
                "logprobs": logprobs,
                "finish_reason": completion.finish_reason,
            }
            chunk = {**self.header, "choices": [choice]}
            if self.include_usage:
                chunk["usage"] = None
            yield chunk

    def final(self, outputs: list[RequestOutput]) -> dict[str, Any] | None:
        """The usage chunk when ``stream_options.include_usage`` is set."""
        if not self.include_usage:
            return None
        return {**self.header, "choices": [], "usage": usage(outputs)}
