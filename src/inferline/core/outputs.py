"""What a generator returns for a request: one `RequestOutput` with `n` completions.

The same types describe a local engine's output (which has token ids) and a remote
upstream's (which has only text and counts), so every layer above reads counts
(``num_tokens``, ``num_prompt_tokens``), never ``len()`` of id lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from inferline.core.decisions import Decision

FinishReason = Literal["stop", "length", "abort", "error", "content_filter"]
AttemptStatus = Literal["ok", "error", "aborted", "skipped"]


@dataclass(frozen=True)
class Logprob:
    """Log-probability of one token, with the most likely alternatives at that step."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token_id, token, logprob), best first


@dataclass(frozen=True)
class ToolCall:
    """One complete (or, while streaming, partial) function call of a completion."""

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI returns it


@dataclass(frozen=True)
class ToolCallDelta:
    """New text of one call: the first delta of a call carries its ``id`` and ``name``."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass
class CompletionOutput:
    """One of the `n` completions of a request.

    ``text``, ``token_ids``, ``num_tokens`` and ``tool_calls`` are cumulative; the
    ``*_delta`` fields hold what is new since the previous output of the same request (for
    streaming). When the request allows tool calls, ``text`` is the content outside the
    calls and the calls are in ``tool_calls``. ``token_ids`` is empty for a remote upstream,
    which reports counts only.
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    text_delta: str = ""
    token_ids_delta: list[int] = field(default_factory=list)
    num_tokens: int = 0
    num_tokens_delta: int = 0
    logprobs: list[Logprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_deltas: list[ToolCallDelta] = field(default_factory=list)

    def __post_init__(self) -> None:
        # a local engine's counts follow from its ids; a remote upstream sets them
        self.num_tokens = self.num_tokens or len(self.token_ids)
        self.num_tokens_delta = self.num_tokens_delta or len(self.token_ids_delta)

    @property
    def is_finished(self) -> bool:
        """True once a finish reason is set."""
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Wall-clock times of one request, in seconds since the epoch (``time.time()``)."""

    arrival_s: float
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    finished_s: float | None = None
    num_cached_prompt_tokens: int = 0
    num_preemptions: int = 0
    engine_s: float = 0.0  # engine time used: each step's time split by its tokens

    @property
    def time_to_first_token_s(self) -> float | None:
        """Seconds from arrival to the first generated token."""
        if self.first_token_s is None:
            return None
        return self.first_token_s - self.arrival_s


@dataclass
class Attempt:
    """One try of a request on one target (recorded for every retry and fallback).

    ``reason`` says why the attempt was made (``first``, ``retry``, ``fallback``,
    ``context_window``, ``cascade``, ``continuation``); times are seconds, ``started_s`` since
    the epoch and the others relative to it.
    """

    number: int
    target: str
    reason: str
    started_s: float
    first_token_s: float | None = None
    duration_s: float | None = None
    status: AttemptStatus = "ok"
    error_type: str | None = None
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    engine_s: float = 0.0  # a local engine's time (RequestMetrics.engine_s)
    cost_usd: float = 0.0


@dataclass
class RouteReport:
    """How a router served a request: which route, which target answered, every attempt.

    ``target`` is the model entry whose output reached the client first (named by the
    response headers); ``model`` names the one that produced the end of the answer (a
    stream continued on another target names that one). ``stopped_by`` says why an answer
    was cut short (``budget``: its key's budget could not pay for more). ``cache`` says
    whether a response cache answered (a hit has no attempts: it cost nothing).
    ``decision`` is what the route's checks decided (`inferline.guard`).
    """

    route: str
    target: str = ""
    model: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    fallback_reason: str | None = None
    stopped_by: str | None = None
    cache: str | None = None  # hit | semantic-hit | miss (None: no cache in front)
    cache_similarity: float | None = None  # of a semantic hit
    decision: Decision | None = None  # what the route's checks decided (None: no checks)

    @property
    def cost_usd(self) -> float:
        """The cost of every attempt, failed ones included."""
        return sum(a.cost_usd for a in self.attempts)


@dataclass
class RequestOutput:
    """The state of a request after an engine step (or at the end).

    ``model`` is the model that produced it (set by generators serving several models);
    ``route`` is set when a router served it. ``prompt_logprobs`` (when the request's
    ``SamplingParams.prompt_logprobs`` asked) has one entry per prompt token, the first
    ``None`` (nothing precedes it); each token's ``token`` is the text it adds to the
    decoded prompt, so they concatenate to ``prompt``.
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_prompt_tokens: int = -1  # -1: len(prompt_token_ids)
    model: str = ""
    route: RouteReport | None = None
    prompt_logprobs: list[Logprob | None] | None = None

    def __post_init__(self) -> None:
        if self.num_prompt_tokens < 0:
            self.num_prompt_tokens = len(self.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        """Generated tokens over all completions."""
        return sum(o.num_tokens for o in self.outputs)
