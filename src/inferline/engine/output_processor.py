"""Detokenizes new tokens, applies stop strings and builds `RequestOutput`s.

Stop strings are matched on text, so they are found even when split across tokens. In a
stream, the last ``len(longest stop) - 1`` characters are held back until it is certain they
do not begin a stop string; a matched stop string never reaches the client. A request that
may call tools has its visible text parsed here (`ToolOutputParser`): its outputs carry the
content and structured tool calls, not Hermes markup.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inferline.core.outputs import (
    CompletionOutput,
    FinishReason,
    Logprob,
    RequestMetrics,
    RequestOutput,
    ToolCallDelta,
)
from inferline.engine.prompt_logprobs import PromptLogprobsChunk, PromptLogprobsCollector
from inferline.engine.request import Request
from inferline.engine.tool_parser import ToolOutputParser
from inferline.models.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass
class _SequenceState:
    """Text state of one of the ``n`` completions."""

    request: Request
    detokenizer: IncrementalDetokenizer
    text: str = ""
    num_sent_chars: int = 0
    num_sent_tokens: int = 0
    num_detokenized: int = 0  # output tokens already turned into text
    logprobs: list[Logprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    tool_parser: ToolOutputParser | None = None  # set when the request may call tools


@dataclass
class RequestState:
    """All completions of one user request, plus timing."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    sequences: list[_SequenceState]
    metrics: RequestMetrics
    stop: tuple[str, ...] = field(default_factory=tuple)
    prompt_logprobs: PromptLogprobsCollector | None = None  # when the request asked

    @property
    def is_finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)


class OutputProcessor:
    """Keeps per-request text state; turns engine updates into outputs."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.states: dict[str, RequestState] = {}

    def add_request(self, prompt: str | None, requests: list[Request]) -> None:
        """Registers the ``n`` engine requests of one user request."""
        first = requests[0]
        params = first.sampling_params
        calls_tools = params.structured is not None and params.structured.kind == "tool_calls"
        sequences = [
            _SequenceState(
                r,
                IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens),
                logprobs=[] if params.logprobs is not None else None,
                tool_parser=ToolOutputParser() if calls_tools else None,
            )
            for r in requests
        ]
        self.states[first.group_id] = state = RequestState(
            first.group_id,
            prompt,
            first.prompt_token_ids,
            sequences,
            RequestMetrics(arrival_s=first.arrival_s),
            params.stop,
        )
        if params.prompt_logprobs is not None:
            state.prompt_logprobs = PromptLogprobsCollector(first.prompt_token_ids)

    def process(
        self,
        updated: list[Request],
        logprobs: dict[str, Logprob],
        prompt_logprobs: dict[str, PromptLogprobsChunk] | None = None,
    ) -> tuple[list[RequestOutput], list[tuple[Request, str]]]:
        """Handles this step's new tokens (and prompt logprobs of its prefill chunks).

        Returns the outputs to deliver and the (request, stop string) pairs that matched
        a stop string (the engine must finish those requests).
        """
        now = time.time()
        for request_id, chunk in (prompt_logprobs or {}).items():
            state = self.states.get(request_id)
            if state is not None and state.prompt_logprobs is not None:
                state.prompt_logprobs.add(chunk)
        touched: dict[str, RequestState] = {}
        stopped: list[tuple[Request, str]] = []
        for request in updated:
            state = self.states[request.group_id]
            sequence = state.sequences[request.index]
            state.metrics.first_token_s = state.metrics.first_token_s or now
            state.metrics.first_scheduled_s = (
                state.metrics.first_scheduled_s or request.first_scheduled_s
            )
            if request.request_id in logprobs and sequence.logprobs is not None:
                sequence.logprobs.append(logprobs[request.request_id])
            stop = self._append_text(state, sequence, request)
            if stop is not None:
                stopped.append((request, stop))
            touched[state.request_id] = state
        return [self._output(state, now) for state in touched.values()], stopped

    def finish_aborted(self, group_id: str) -> RequestOutput | None:
        """Marks every unfinished completion of ``group_id`` aborted; returns the final output."""
        state = self.states.get(group_id)
        if state is None:
            return None
        for sequence in state.sequences:
            if sequence.finish_reason is None:
                sequence.finish_reason = "abort"
        return self._output(state, time.time())

    def _append_text(
        self, state: RequestState, sequence: _SequenceState, request: Request
    ) -> str | None:
        # one token a step, or several where speculative drafts were accepted
        new_ids = request.all_token_ids[len(request.prompt_token_ids) + sequence.num_detokenized :]
        sequence.num_detokenized += len(new_ids)
        new_text = sequence.detokenizer.add(new_ids)
        if request.is_finished:
            new_text += sequence.detokenizer.flush()
        start = max(0, len(sequence.text) - max((len(s) for s in state.stop), default=0))
        sequence.text += new_text
        if request.is_finished:
            sequence.finish_reason = request.finish_reason
            sequence.stop_reason = request.stop_reason
        if request.num_output_tokens < request.sampling_params.min_tokens:
            return None  # stop strings count from min_tokens on, as EOS does (vLLM's rule)
        for stop in state.stop:
            index = sequence.text.find(stop, start)
            if index != -1:
                sequence.text = sequence.text[:index]
                sequence.finish_reason, sequence.stop_reason = "stop", stop
                return stop
        return None

    def _output(self, state: RequestState, now: float) -> RequestOutput:
        holdback = max((len(s) for s in state.stop), default=1) - 1
        outputs = []
        for i, sequence in enumerate(state.sequences):
            finished = sequence.finish_reason is not None
            visible = (
                len(sequence.text)
                if finished
                else max(sequence.num_sent_chars, len(sequence.text) - holdback)
            )
            token_ids = sequence.request.output_token_ids
            output = CompletionOutput(
                index=i,
                text=sequence.text[:visible],
                token_ids=token_ids,
                text_delta=sequence.text[sequence.num_sent_chars : visible],
                token_ids_delta=token_ids[sequence.num_sent_tokens :],
                num_tokens=len(token_ids),
                num_tokens_delta=len(token_ids) - sequence.num_sent_tokens,
                logprobs=list(sequence.logprobs) if sequence.logprobs is not None else None,
                finish_reason=sequence.finish_reason,
                stop_reason=sequence.stop_reason,
            )
            if sequence.tool_parser is not None:
                _parse_tools(output, sequence.tool_parser, finished)
            outputs.append(output)
            sequence.num_sent_chars, sequence.num_sent_tokens = visible, len(token_ids)
        state.metrics.engine_s = sum(s.request.engine_s for s in state.sequences)
        finished = state.is_finished
        if finished:
            state.metrics.finished_s = now
            first = state.sequences[0].request
            state.metrics.num_cached_prompt_tokens = first.num_cached_prompt_tokens
            state.metrics.num_preemptions = sum(s.request.num_preemptions for s in state.sequences)
            del self.states[state.request_id]
        prompt, prompt_logprobs = self._prompt_logprobs(state)
        return RequestOutput(
            state.request_id,
            prompt,
            state.prompt_token_ids,
            outputs,
            finished,
            state.metrics,
            prompt_logprobs=prompt_logprobs,
        )

    def _prompt_logprobs(
        self, state: RequestState
    ) -> tuple[str | None, list[Logprob | None] | None]:
        """The prompt text and its logprobs once the prompt is computed (the first output
        token exists), for a request that asked; else ``(state.prompt, None)``."""
        collector = state.prompt_logprobs
        if collector is None or state.sequences[0].request.num_output_tokens == 0:
            return state.prompt, None
        return collector.result(self.tokenizer)


def _parse_tools(output: CompletionOutput, parser: ToolOutputParser, is_last: bool) -> None:
    """Replaces the raw text of ``output`` by its content and structured tool calls."""
    deltas: list[ToolCallDelta]
    output.text_delta, deltas = parser.feed(output.text_delta, is_last)
    output.text = parser.content
    output.tool_call_deltas = deltas
    output.tool_calls = parser.tool_calls
