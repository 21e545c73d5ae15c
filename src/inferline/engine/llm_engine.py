"""The synchronous engine: add requests, then `step()` until they finish."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inferline.core.errors import ContextLengthExceededError, InvalidParameterError
from inferline.core.outputs import RequestOutput
from inferline.core.sampling_params import Priority, SamplingParams
from inferline.engine.block_pool import BlockPool
from inferline.engine.config import EngineConfig
from inferline.engine.kv_cache import KVCache
from inferline.engine.model_runner import ModelRunner
from inferline.engine.output_processor import OutputProcessor
from inferline.engine.request import Request
from inferline.engine.scheduler import Scheduler
from inferline.engine.scheduler_output import ScheduledRequest
from inferline.models.loader import LoadedModel, load_model, resolve_weight_format


@dataclass(frozen=True)
class PreparedRequest:
    """A validated user request: its ``n`` engine `Request`s, not yet queued."""

    request_id: str
    prompt: str | None
    requests: list[Request]


class LLMEngine:
    """Schedule -> run -> update, one step at a time, for many requests at once."""

    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        self.config = config
        weight_format = resolve_weight_format(config.weight_format, config.device)
        self.loaded = loaded or load_model(
            config.model,
            cache_dir=config.cache_dir,
            device=config.device,
            weight_format=weight_format,
            kernels=config.kernels,
        )
        if self.loaded.weight_format != weight_format:
            raise InvalidParameterError(
                f"the model was loaded as {self.loaded.weight_format}, "
                f"the engine asks for {weight_format}",
                "weight_format",
            )
        self.tokenizer = self.loaded.tokenizer
        # the model's own sampling defaults, for the fields a request leaves unset
        self.sampling_defaults = (
            dict(self.loaded.sampling_defaults) if config.generation_config == "auto" else {}
        )
        self._grammars: Any = None  # GrammarCompiler, built on the first constrained request
        self._grammars_lock = threading.Lock()
        model_config = self.loaded.config
        self.max_model_len = min(
            config.max_model_len or model_config.max_position_embeddings,
            model_config.max_position_embeddings,
        )
        native = self.loaded.model.native is not None
        kv_dtype = getattr(torch, config.cache.resolve_dtype(weight_format, native))
        kv_bytes = model_config.kv_bytes_per_token(kv_dtype)
        num_blocks = config.cache.num_blocks(
            kv_bytes, config.scheduler.max_num_seqs, self.max_model_len
        )
        block_size = config.cache.block_size
        self.block_pool = BlockPool(num_blocks, block_size, config.cache.enable_prefix_caching)
        self.kv_cache = KVCache(
            model_config, num_blocks, block_size, torch.device(config.device), kv_dtype
        )
        self.scheduler = Scheduler(
            config.scheduler,
            self.block_pool,
            self.max_model_len,
            self.tokenizer.eos_token_ids,
            config.speculative,
        )
        self.runner = ModelRunner(self.loaded.model, self.kv_cache, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()

    # ---- requests --------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> str:
        """Validates and queues a request; returns its id.

        Raises:
            ContextLengthExceededError: prompt + max_tokens exceed the context window.
            InvalidParameterError: empty prompt, token ids out of the vocabulary, duplicate id.
        """
        prepared = self.prepare_request(prompt, params, request_id=request_id, priority=priority)
        self.add_prepared(prepared)
        return prepared.request_id

    def prepare_request(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        *,
        request_id: str | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> PreparedRequest:
        """Tokenizes and validates without touching engine state (safe from any thread).

        A duplicate request id is caught where requests are added (`add_prepared`).
        """
        params = (params or SamplingParams()).with_defaults(self.sampling_defaults)
        self._check_logit_bias(params)
        request_id = request_id or f"req-{next(self._ids)}"
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        max_tokens = self._check_prompt(prompt_ids, params)
        # a token-id prompt's text is what its tokens spell (echo shows it)
        text = prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt_ids, False)
        self._check_room_for_structure(params, max_tokens)
        arrival_s = time.time()
        requests: list[Request] = []
        for index in range(params.n):
            requests.append(
                Request(
                    request_id=request_id if index == 0 else f"{request_id}#{index}",
                    prompt_token_ids=prompt_ids,
                    sampling_params=params,
                    max_tokens=max_tokens,
                    priority=priority,
                    group_id=request_id,
                    index=index,
                    fork_parent=requests[0] if index else None,
                    arrival_s=arrival_s,
                    constraint=self._constraint(params),
                )
            )
        return PreparedRequest(request_id, text, requests)

    def _check_logit_bias(self, params: SamplingParams) -> None:
        vocab_size = self.loaded.config.vocab_size
        if params.logit_bias and params.logit_bias[-1][0] >= vocab_size:  # sorted by id
            raise InvalidParameterError(
                f"logit_bias: token id {params.logit_bias[-1][0]} is not in the vocabulary "
                f"[0, {vocab_size})",
                "logit_bias",
            )

    def _check_room_for_structure(self, params: SamplingParams, max_tokens: int) -> None:
        """A JSON constraint whose shortest output exceeds max_tokens is a 400, not a cut."""
        if params.structured is None:
            return
        shortest = self._compiler().shortest_output(params.structured)  # raises if unsupported
        if shortest is not None and shortest > max_tokens:
            raise InvalidParameterError(
                f"max_tokens={max_tokens} cannot hold an output matching the schema: the "
                f"shortest one found takes {shortest} tokens",
                "max_tokens",
            )

    def _constraint(self, params: SamplingParams) -> Any:
        """The grammar state of a constrained request (None for a free one)."""
        if params.structured is None:
            return None
        return self._compiler().constraint(params.structured)

    def _compiler(self) -> Any:
        """The grammar compiler, built on the first constrained request."""
        with self._grammars_lock:
            if self._grammars is None:
                from inferline.engine.structured import GrammarCompiler

                self._grammars = GrammarCompiler(
                    self.tokenizer.to_json(),
                    self.loaded.config.vocab_size,
                    list(self.tokenizer.eos_token_ids),
                )
            return self._grammars

    def add_prepared(self, prepared: PreparedRequest) -> None:
        """Queues a prepared request (engine thread only)."""
        if prepared.request_id in self.output_processor.states:
            raise InvalidParameterError(
                f"request id {prepared.request_id!r} is already in use", "request_id"
            )
        self.output_processor.add_request(prepared.prompt, prepared.requests)
        for request in prepared.requests:
            self.scheduler.add_request(request)

    def _check_prompt(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Returns the resolved max_tokens; never truncates."""
        if not prompt_ids:
            raise InvalidParameterError("the prompt is empty", "prompt")
        vocab_size = self.loaded.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab_size:
            raise InvalidParameterError(f"prompt token ids must be in [0, {vocab_size})", "prompt")
        num_prompt = len(prompt_ids)
        room = self.max_model_len - num_prompt
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if room < 1 or max_tokens > room:
            raise ContextLengthExceededError(num_prompt, max(max_tokens, 1), self.max_model_len)
        if params.max_tokens is None:  # "as long as it can": what the KV cache holds, too
            max_tokens = min(max_tokens, self._kv_room(num_prompt, params.n))
        self._check_kv_fit(num_prompt, max(max_tokens, 1), params.n)
        return max_tokens

    def _kv_blocks_needed(self, num_prompt: int, max_tokens: int, n: int) -> int:
        """Blocks a request holds at its longest: the prompt with one completion, and each
        further completion's own tokens plus the copied block of the last prompt token."""
        size = self.block_pool.block_size
        first = -(-(num_prompt + max_tokens) // size)
        return first + (n - 1) * (-(-max_tokens // size) + 1)

    def _kv_room(self, num_prompt: int, n: int) -> int:
        """The most output tokens per completion the KV cache can hold for this prompt."""
        low, high = 0, self.max_model_len
        while low < high:  # the largest max_tokens that still fits
            middle = (low + high + 1) // 2
            if self._kv_blocks_needed(num_prompt, middle, n) <= self.block_pool.num_blocks:
                low = middle
            else:
                high = middle - 1
        return low

    def _check_kv_fit(self, num_prompt: int, max_tokens: int, n: int) -> None:
        """A request that could never fit the KV cache would be preempted forever at the
        head of the queue: refuse it with both numbers instead."""
        needed = self._kv_blocks_needed(num_prompt, max_tokens, n)
        if needed <= self.block_pool.num_blocks:
            return
        size = self.block_pool.block_size
        capacity = self.block_pool.num_blocks * size
        many = f" for each of n={n} completions" if n > 1 else ""
        raise ContextLengthExceededError(
            num_prompt,
            max_tokens,
            self.max_model_len,
            message=f"This request needs {needed * size} tokens of KV cache ({num_prompt} in "
            f"the prompt, {max_tokens} for the completion{many}), but this server's KV cache "
            f"holds {capacity} tokens (raise --kv-cache-gib). Please reduce the length of "
            "the prompt or max_tokens.",
        )

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stops a request (all its ``n`` completions) and frees its blocks at once."""
        state = self.output_processor.states.get(request_id)
        if state is None:
            return None
        for sequence in state.sequences:
            self.scheduler.finish_request(sequence.request.request_id, "abort")
        return self.output_processor.finish_aborted(request_id)

    def has_unfinished_requests(self) -> bool:
        """True while any request is waiting or running."""
        return self.scheduler.has_unfinished_requests()

    # ---- the loop --------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Runs one batch: schedule, run the model, update state; returns new outputs.

        The step's time is split among its requests by the tokens each had in it (a
        request's ``engine_s``, what a machine price per hour charges)."""
        started = time.perf_counter()
        scheduler_output = self.scheduler.schedule()
        runner_output = self.runner.run(scheduler_output)
        updated = self.scheduler.update(scheduler_output, runner_output)
        _share_step_time(scheduler_output.scheduled, time.perf_counter() - started)
        outputs, stopped = self.output_processor.process(
            updated, runner_output.logprobs, runner_output.prompt_logprobs
        )
        for request, stop in stopped:
            self.scheduler.finish_request(request.request_id, "stop", stop)
        return outputs


def _share_step_time(scheduled: Sequence[ScheduledRequest], elapsed_s: float) -> None:
    """Adds each request's share of a step's ``elapsed_s`` (by its tokens in the step)."""
    total = sum(s.num_tokens for s in scheduled)
    if total:
        per_token = elapsed_s / total
        for item in scheduled:
            item.request.engine_s += item.num_tokens * per_token
