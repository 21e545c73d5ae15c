"""`AsyncEngine`: the engine loop on its own thread, streams delivered to asyncio callers.

The engine is single-threaded by design; callers never touch its state. A request is
rendered, tokenized and checked in a worker thread (off the event loop, so 64 long prompts
do not stall every stream), then handed to the loop thread through a command queue; adds,
aborts and the engine's death all go through that queue or the registry lock, so no stream
can be registered after the engine died and wait forever. The loop thread applies commands
between steps and pushes each step's outputs to per-request `asyncio.Queue`s with
``call_soon_threadsafe``.

A watchdog on the event loop marks the engine dead if one step runs longer than the stall
timeout; every stream then ends with `EngineDeadError` instead of hanging, and `health()`
reports it. A crash in the loop does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from inferline.core.errors import (
    EngineDeadError,
    InvalidParameterError,
    OverloadedError,
    UnknownModelError,
)
from inferline.core.outputs import RequestOutput
from inferline.core.protocols import (
    GenerationRequest,
    GeneratorStats,
    HealthReport,
    ModelInfo,
    Tokenized,
    TokenizeRequest,
)
from inferline.engine.config import FrontendConfig
from inferline.engine.llm_engine import LLMEngine, PreparedRequest

_StreamItem = RequestOutput | BaseException


class AsyncEngine:
    """Implements `inferline.core.Generator` over a local `LLMEngine` (one model).

    ``name`` is the model name it reports (default: the engine's model); a request's
    ``model`` is not checked here (a router does that).
    """

    def __init__(
        self,
        engine: LLMEngine | Callable[[], LLMEngine],
        config: FrontendConfig | None = None,
        *,
        name: str | None = None,
    ) -> None:
        """Starts the loop thread; with a factory, the engine is also built on that thread.

        Build the engine through a factory in servers: torch's OpenMP thread team belongs to
        the thread that first runs parallel work, and stepping on another thread than the one
        that loaded the model measured 2x slower per decode step (39 vs 19 ms, SmolLM2).
        """
        self.config = config or FrontendConfig()
        self._commands: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wakeup = threading.Event()
        self._lock = threading.Lock()  # guards _streams and _dead_reason
        self._streams: dict[str, asyncio.Queue[_StreamItem]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False
        self._accepting = True
        self._dead_reason: str | None = None
        self._step_started: float | None = None  # monotonic; None between steps
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._main, args=(engine,), name="inferline-engine", daemon=True
        )
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            raise self._build_error
        self.name = name or self.engine.config.model
        self.max_model_len = self.engine.max_model_len
        self._stats = GeneratorStats(
            num_kv_blocks_total=self.engine.block_pool.num_blocks,
            max_num_seqs=self.engine.config.scheduler.max_num_seqs,
        )

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connects the loop thread to this event loop and starts the stall watchdog."""
        self._loop = asyncio.get_running_loop()
        self._watchdog = asyncio.create_task(self._watch())

    async def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stops admitting, lets running requests finish up to the timeout, then stops.

        Requests still running at the timeout end with `EngineDeadError` (never with a
        finish reason that would pass for a complete answer).
        """
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while self._streams and time.monotonic() < deadline and self._dead_reason is None:
            await asyncio.sleep(0.05)
        self._die("the server shut down before the request finished")
        self._stopping = True
        self._wakeup.set()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.to_thread(self._thread.join, 5.0)

    # ---- Generator protocol ------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Renders and checks ``request`` off the loop, queues it; returns its stream."""
        self._check_model(request.model)
        self._check_can_admit()
        prepared = await asyncio.to_thread(self._prepare, request)
        stream: asyncio.Queue[_StreamItem] = asyncio.Queue()
        with self._lock:
            if self._dead_reason is not None:
                raise EngineDeadError(f"the engine is not running: {self._dead_reason}")
            if prepared.request_id in self._streams:
                raise InvalidParameterError(
                    f"request id {prepared.request_id!r} is already in use", "request_id"
                )
            self._streams[prepared.request_id] = stream
            self._commands.put(("add", prepared))
        self._wakeup.set()
        return self._stream(prepared.request_id, stream)

    async def abort(self, request_id: str) -> None:
        """Stops ``request_id``, frees its blocks; its stream ends with finish reason abort."""
        self._send("abort", request_id)

    def models(self) -> list[ModelInfo]:
        """The one model this engine runs."""
        return [ModelInfo(self.name, "model", self.max_model_len)]

    def health(self) -> HealthReport:
        """Dead or stalled loop -> not live; draining -> not ready."""
        if self._dead_reason is not None:
            return HealthReport(False, False, self._dead_reason)
        stalled_s = self._stalled_for_s()
        if stalled_s > self.config.stall_timeout_s:
            return HealthReport(False, False, f"engine step running for {stalled_s:.1f} s")
        if not self._thread.is_alive():
            return HealthReport(False, False, "engine loop is not running")
        if not self._accepting:
            return HealthReport(True, False, "shutting down")
        return HealthReport(True, True, "ok")

    def stats(self) -> dict[str, GeneratorStats]:
        """The snapshot taken after the last step."""
        return {self.name: self._stats}

    # ---- caller side -----------------------------------------------------------------

    def _check_can_admit(self) -> None:
        if self._dead_reason is not None:
            raise EngineDeadError(f"the engine is not running: {self._dead_reason}")
        if not self._accepting:
            raise OverloadedError("the server is shutting down", retry_after_s=5)
        num_queued = len(self._streams) - self._stats.num_running
        if num_queued >= self.config.max_queued_requests:
            raise OverloadedError(
                f"the request queue is full ({self.config.max_queued_requests} waiting)"
            )

    async def tokenize_chat(
        self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int] | None:
        """The prompt ids ``messages`` become with this model's chat template (a worker
        thread renders them; ``model`` is this engine's only one)."""
        return await asyncio.to_thread(self._chat_ids, messages, tools)

    def _chat_ids(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        tokenizer = self.engine.tokenizer
        prompt = tokenizer.apply_chat_template(messages, tools=tools)
        return list(prompt) if not isinstance(prompt, str) else tokenizer.encode(prompt)

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        """The token ids of a prompt or chat, as generation would make them (worker thread)."""
        self._check_model(request.model)
        return Tokenized(await asyncio.to_thread(self._token_ids, request), self.max_model_len)

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        """The text of ``token_ids`` (special tokens kept); ids outside the vocabulary are
        a 400 naming ``tokens``."""
        self._check_model(model)
        vocab_size = self.engine.loaded.config.vocab_size
        if any(not 0 <= t < vocab_size for t in token_ids):
            raise InvalidParameterError(f"tokens must be in [0, {vocab_size})", "tokens")
        return await asyncio.to_thread(self.engine.tokenizer.decode, token_ids, False)

    def _check_model(self, model: str) -> None:
        if model and model != self.name:
            raise UnknownModelError.not_served(model, [self.name])

    def _token_ids(self, request: TokenizeRequest) -> list[int]:
        tokenizer = self.engine.tokenizer
        text = request.prompt
        if request.messages is not None:
            text = tokenizer.apply_chat_template(
                request.messages,
                tools=request.tools,
                add_generation_prompt=request.add_generation_prompt,
            )
        assert text is not None
        return tokenizer.encode(text, add_special_tokens=request.add_special_tokens)

    def _prepare(self, request: GenerationRequest) -> PreparedRequest:
        """Template, prefix and tokens of a request, checked (runs in a worker thread)."""
        tokenizer = self.engine.tokenizer
        prompt = request.prompt
        if request.messages is not None:
            prompt = tokenizer.apply_chat_template(request.messages, tools=request.tools)
        assert prompt is not None
        if request.assistant_prefix:
            if isinstance(prompt, str):
                prompt += request.assistant_prefix
            else:
                prefix_ids = tokenizer.encode(request.assistant_prefix, add_special_tokens=False)
                prompt = [*prompt, *prefix_ids]
        return self.engine.prepare_request(
            prompt, request.params, request_id=request.request_id, priority=request.priority
        )

    def _send(self, command: str, payload: Any) -> None:
        self._commands.put((command, payload))
        self._wakeup.set()

    async def _stream(
        self, request_id: str, stream: asyncio.Queue[_StreamItem]
    ) -> AsyncGenerator[RequestOutput, None]:
        finished = False
        try:
            while not finished:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True  # the engine is done with it
                    raise item
                finished = item.finished
                yield item
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:  # the consumer went away: free the blocks now
                self._send("abort", request_id)

    def _stalled_for_s(self) -> float:
        started = self._step_started
        return 0.0 if started is None else time.monotonic() - started

    async def _watch(self) -> None:
        while self._dead_reason is None:
            await asyncio.sleep(min(1.0, self.config.stall_timeout_s / 4))
            stalled_s = self._stalled_for_s()
            if stalled_s > self.config.stall_timeout_s:
                self._die(f"engine step hung for {stalled_s:.1f} s")

    # ---- loop thread -----------------------------------------------------------------

    def _main(self, engine: LLMEngine | Callable[[], LLMEngine]) -> None:
        try:
            self.engine = engine if isinstance(engine, LLMEngine) else engine()
        except BaseException as exc:  # reported to the constructor's caller
            self._build_error = exc
            return
        finally:
            self._built.set()
        self._run()

    def _run(self) -> None:
        try:
            while not self._stopping and self._dead_reason is None:
                if self._apply_commands():
                    self._snapshot_stats()  # aborts free blocks even when nothing runs next
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait(0.1)
                    self._wakeup.clear()
                    continue
                self._step_started = time.monotonic()
                outputs = self.engine.step()
                self._step_started = None
                if self._dead_reason is None:
                    self._deliver(outputs)
                self._snapshot_stats()
        except Exception as exc:  # any crash must fail the waiting requests, not hang them
            self._step_started = None
            self._die(f"engine loop crashed: {type(exc).__name__}: {exc}")

    def _apply_commands(self) -> int:
        """Applies queued adds and aborts; returns how many there were."""
        num_applied = 0
        while True:
            try:
                command, payload = self._commands.get_nowait()
            except queue.Empty:
                return num_applied
            num_applied += 1
            if command == "add":
                self._add(payload)
            elif command == "abort":
                final = self.engine.abort_request(payload)
                if final is not None:
                    self._deliver([final])

    def _add(self, prepared: PreparedRequest) -> None:
        if prepared.request_id not in self._streams:
            return  # the caller gave up before the loop saw it
        self.engine.add_prepared(prepared)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hands a step's outputs to their streams: one ``call_soon_threadsafe`` (one
        wake-up of the event loop) a step, not one an output (32 streams, served b32: the
        event loop's wake-ups and queue puts were ~15 % of the GIL's time)."""
        assert self._loop is not None
        batch: list[tuple[asyncio.Queue[_StreamItem], _StreamItem]] = []
        for output in outputs:
            output.model = self.name
            stream = self._streams.get(output.request_id)
            if stream is not None:
                batch.append((stream, output))
        if batch:
            self._loop.call_soon_threadsafe(_put_all, batch)

    def _snapshot_stats(self) -> None:
        pool, scheduler = self.engine.block_pool, self.engine.scheduler
        self._stats = GeneratorStats(
            num_running=len({r.group_id for r in scheduler.running}),
            num_waiting=len({r.group_id for r in scheduler.waiting}),
            num_kv_blocks_used=pool.num_used_blocks,
            num_kv_blocks_total=pool.num_blocks,
            prefix_cache_queried_tokens=pool.stats.num_queried_tokens,
            prefix_cache_hit_tokens=pool.stats.num_hit_tokens,
            num_preemptions=scheduler.num_preemptions,
            max_num_seqs=self.engine.config.scheduler.max_num_seqs,
            spec_draft_tokens=scheduler.num_draft_tokens,
            spec_accepted_tokens=scheduler.num_accepted_tokens,
        )

    def _die(self, reason: str) -> None:
        """Marks the engine dead and ends every registered stream with `EngineDeadError`.

        Under the registry lock: a `submit` either registered its stream before (and gets
        the error here) or sees the engine dead and raises.
        """
        with self._lock:
            if self._dead_reason is not None:
                return
            self._dead_reason = reason
            streams = list(self._streams.values())
        if self._loop is None:
            return
        for stream in streams:
            error = EngineDeadError(f"the engine stopped: {reason}")
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(stream.put_nowait, error)


def _put_all(batch: list[tuple[asyncio.Queue[_StreamItem], _StreamItem]]) -> None:
    """Puts each item into its stream (on the event loop)."""
    for stream, item in batch:
        stream.put_nowait(item)
