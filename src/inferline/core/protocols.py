"""The seam between the serving layers and whatever generates text.

`server`, `jobs` and `evals` take a `Generator`; the CLI decides whether it is the local
engine (`inferline.engine.AsyncEngine`), a router over local engines and remote upstreams
(`inferline.router.Router`), a remote upstream alone (`inferline.client`), or a test fake.
The contract is transport-neutral: requests name a model, outputs carry counts and
structured tool calls, so a remote server with no token ids fits it as well as the engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from inferline.core.errors import CannotTokenizeError, InvalidParameterError
from inferline.core.outputs import RequestOutput
from inferline.core.sampling_params import Priority, SamplingParams

_CHARS_PER_TOKEN = 3


class SpendGuard(Protocol):
    """Charges a request's spend as it is produced, against its key's budget."""

    def charge(self, amount_usd: float) -> bool:
        """Adds ``amount_usd``; False (nothing charged) when the budget cannot pay it: the
        generator then stops the request (``finish_reason: length``)."""
        ...


@dataclass(frozen=True)
class GenerationRequest:
    """One user request: a prompt (text or token ids) or chat messages, and how to sample.

    Exactly one of ``prompt`` and ``messages`` is set. Messages are rendered with the
    model's own chat template (``tools`` are passed to it).

    Attributes:
        model: the route or model the client named ("" = the generator's only model).
        key_id: the id of the caller's API key (never the secret), for limits and logs.
        user, session: who asked (OpenAI's ``user``; the ``x-inferline-session`` header),
            used for sticky routing.
        metadata: free labels carried to traces (team, tags).
        deadline: ``time.monotonic()`` by which the answer must be complete (None: none);
            a router also applies its route's own deadline, whichever comes first.
        assistant_prefix: text the answer must continue (the start of the assistant's
            message, or of the completion): how a stream cut mid-way is finished elsewhere.
        streaming: the client sees outputs as they come; when False, an answer that fails
            mid-way may be restarted from scratch elsewhere rather than continued.
        spend: charged with the cost of every output of every attempt (a router does it);
            when it refuses, the request is stopped.
        cache: the client's ``Cache-Control``: ``default``, ``no-cache`` (do not answer from
            a cache, but store the new answer) or ``no-store`` (neither).
        traceparent: the W3C trace context of the request's span, sent to remote upstreams.
        variables: a registry prompt's variables, as the request gave them (the route's
            missing-context checks read them); None when no stored prompt was used.
        checks: a stored prompt version's own checks (route-check entries, as written),
            run with the route's.
    """

    request_id: str
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.INTERACTIVE
    model: str = ""
    key_id: str | None = None
    user: str | None = None
    session: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    deadline: float | None = None
    assistant_prefix: str | None = None
    streaming: bool = True
    spend: SpendGuard | None = None
    cache: Literal["default", "no-cache", "no-store"] = "default"
    traceparent: str | None = None
    variables: Mapping[str, Any] | None = None
    checks: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidParameterError("set exactly one of prompt and messages", "messages")

    def estimated_prompt_tokens(self) -> int:
        """Prompt tokens this request may have, before any tokenizer has seen it: token ids
        counted, text at 3 characters a token (English is about 4, so it errs high), messages
        and tools as their JSON. What a budget reserves, and what a remote attempt is
        charged when its stream ends before the upstream's usage."""
        if isinstance(self.prompt, list):
            return len(self.prompt)
        if isinstance(self.prompt, str):
            return len(self.prompt) // _CHARS_PER_TOKEN + 1
        text = json.dumps(self.messages or []) + json.dumps(self.tools or [])
        return len(text) // _CHARS_PER_TOKEN + 1


@dataclass(frozen=True)
class HealthReport:
    """What a health probe should say.

    ``is_live`` is False when the generator cannot make progress (its loop died, or requests
    are running and no step has finished for longer than the stall timeout).
    """

    is_live: bool
    is_ready: bool
    reason: str


@dataclass(frozen=True)
class GeneratorStats:
    """Point-in-time load and cumulative counters of one model, read by metrics and routers.

    A remote upstream reports its in-flight requests as ``num_running`` and has no blocks.
    """

    num_running: int = 0
    num_waiting: int = 0
    num_kv_blocks_used: int = 0
    num_kv_blocks_total: int = 0
    prefix_cache_queried_tokens: int = 0
    prefix_cache_hit_tokens: int = 0
    num_preemptions: int = 0
    max_num_seqs: int = 0
    spec_draft_tokens: int = 0  # speculative drafts verified, and how many were accepted
    spec_accepted_tokens: int = 0


@dataclass(frozen=True)
class TargetStatus:
    """A route target as `GET /v1/routes` shows it."""

    name: str
    kind: str  # llm | openai
    breaker: str = "closed"  # closed | open | half_open
    in_flight: int = 0
    num_requests: int = 0  # over the breaker's window
    error_rate: float = 0.0  # over the breaker's window
    latency_ms_p50: float | None = None
    ttft_ms_p50: float | None = None
    weight: float | None = None


@dataclass(frozen=True)
class ModelInfo:
    """One name a client may put in ``model``: a model, or a route over several models.

    The prices (USD per million tokens) are the highest of the route's targets, what a
    request may cost at worst; ``is_local``: every target is a local engine (its spend
    can be stopped at any token).
    """

    name: str
    kind: Literal["model", "route"] = "model"
    max_model_len: int | None = None
    owned_by: str = "inferline"
    strategy: str | None = None  # routes only
    targets: tuple[TargetStatus, ...] = ()  # routes only
    input_usd_per_mtok: float = 0.0
    cached_input_usd_per_mtok: float = 0.0
    output_usd_per_mtok: float = 0.0
    is_local: bool = True


class Generator(Protocol):
    """Anything that turns `GenerationRequest`s into streams of `RequestOutput`s.

    Invariants: `submit` validates before returning (bad input raises
    `InvalidParameterError`, a full queue raises `OverloadedError`, a dead generator raises
    `EngineDeadError`, an unknown ``model`` raises `UnknownModelError`); the returned stream
    ends with an output whose ``finished`` is True, or raises an `InferlineError`;
    `abort` frees the request's resources at once and ends its stream.
    """

    async def start(self) -> None:
        """Starts background work; called once from the server's event loop."""
        ...

    async def shutdown(self, drain_timeout_s: float) -> None:
        """Stops admitting, lets running requests finish up to the timeout, stops."""
        ...

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        """Validates and queues ``request``; returns the stream of its outputs."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stops a request (no-op if unknown or finished)."""
        ...

    def models(self) -> list[ModelInfo]:
        """The names ``GenerationRequest.model`` may take, first the default one."""
        ...

    def health(self) -> HealthReport:
        """Liveness and readiness, computed on demand (cheap)."""
        ...

    def stats(self) -> dict[str, GeneratorStats]:
        """Current load and counters per model (cheap)."""
        ...


@runtime_checkable
class ChatTokenizer(Protocol):
    """A generator that can say which token ids a chat becomes for a model (a local engine;
    a router asks the first local target of the route)."""

    async def tokenize_chat(
        self, model: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int] | None:
        """The prompt token ids of ``messages`` on ``model``, or None if it cannot tell."""
        ...


@dataclass(frozen=True)
class TokenizeRequest:
    """``POST /tokenize`` (vLLM's): a prompt, or chat messages rendered with the model's
    template. ``add_special_tokens``: a BOS where the model asks for one, as generation
    does (so ``count`` is a generation's ``prompt_tokens``)."""

    model: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidParameterError("set exactly one of prompt and messages", "messages")


@dataclass(frozen=True)
class Tokenized:
    """The token ids of a `TokenizeRequest` and the context window of the model used."""

    token_ids: list[int]
    max_model_len: int | None


@runtime_checkable
class TextTokenizer(Protocol):
    """A generator whose models can tokenize and detokenize (a local engine; a router
    forwards to the route's first local target). Use `tokenize` / `detokenize` below:
    they raise `CannotTokenizeError` for any other generator."""

    async def tokenize(self, request: TokenizeRequest) -> Tokenized:
        """The token ids of the request's text on ``request.model``."""
        ...

    async def detokenize(self, model: str, token_ids: list[int]) -> str:
        """The text of ``token_ids`` on ``model`` (special tokens kept, as written)."""
        ...


async def tokenize(generator: Generator, request: TokenizeRequest) -> Tokenized:
    """``generator``'s tokenization, or `CannotTokenizeError` (a 400 naming ``model``)."""
    if not isinstance(generator, TextTokenizer):
        raise CannotTokenizeError(request.model)
    return await generator.tokenize(request)


async def detokenize(generator: Generator, model: str, token_ids: list[int]) -> str:
    """``generator``'s detokenization, or `CannotTokenizeError` (a 400 naming ``model``)."""
    if not isinstance(generator, TextTokenizer):
        raise CannotTokenizeError(model)
    return await generator.detokenize(model, token_ids)


class Service(Protocol):
    """A background worker the server starts after its models and stops before draining."""

    async def start(self) -> None:
        """Starts the work on the running event loop."""
        ...

    async def stop(self) -> None:
        """Stops the work; what is unfinished must survive a restart."""
        ...
