"""What the engine returns for a request: one `RequestOutput` with `n` completions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort", "error"]


@dataclass(frozen=True)
class Logprob:
    """Log-probability of one token, with the most likely alternatives at that step."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token_id, token, logprob), best first


@dataclass
class CompletionOutput:
    """One of the `n` completions of a request.

    ``text`` and ``token_ids`` are cumulative; ``text_delta`` and ``token_ids_delta`` hold
    what is new since the previous output of the same request (for streaming).
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    text_delta: str = ""
    token_ids_delta: list[int] = field(default_factory=list)
    logprobs: list[Logprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token id that ended it

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

    @property
    def time_to_first_token_s(self) -> float | None:
        """Seconds from arrival to the first generated token."""
        if self.first_token_s is None:
            return None
        return self.first_token_s - self.arrival_s


@dataclass
class RequestOutput:
    """The state of a request after an engine step (or at the end)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics

    @property
    def num_generated_tokens(self) -> int:
        """Generated tokens over all completions."""
        return sum(len(o.token_ids) for o in self.outputs)
