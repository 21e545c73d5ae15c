"""Sampling parameters of one request, validated on construction."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from inferline.core.errors import InvalidParameterError
from inferline.core.structured import StructuredOutput

_MAX_STOP_STRINGS = 16
_MAX_LOGPROBS = 20


class Priority(enum.IntEnum):
    """Scheduling class; lower values are served first and preempted last."""

    INTERACTIVE = 0
    BATCH = 1


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidParameterError(f"{name} must be in [{low}, {high}], got {value}", name)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Mirrors the OpenAI/vLLM fields.

    Attributes:
        n: number of completions for the prompt; they share the prompt's KV blocks.
        max_tokens: the most tokens to generate; ``None`` means "up to the context window".
        temperature: 0 means greedy.
        top_p, top_k, min_p: nucleus, top-k (``0`` or ``-1`` = off) and min-p filters.
        presence_penalty, frequency_penalty: OpenAI penalties in [-2, 2] on generated tokens.
        repetition_penalty: multiplicative penalty (> 0, 1 = off) on prompt and output tokens.
        seed: per-request seed; the same seed gives the same tokens whatever the batch.
        stop: strings that end generation; they are not included in the text.
        stop_token_ids: extra token ids that end generation (the model's EOS always does,
            unless ``ignore_eos``).
        logprobs: number of top alternatives to return per token (0 = only the chosen one,
            ``None`` = no logprobs).
        prompt_logprobs: the same for every prompt token (vLLM's name; what ``echo`` with
            ``logprobs`` returns): the engine then computes the logits of every prompt
            position and skips the prefix cache for the request (``None`` = none).
        skip_special_tokens: drop special tokens from the text.
        structured: a constraint on the output (JSON, JSON Schema, regex, choice); the
            engine masks the logits at each step so the output always matches it.
    """

    n: int = 1
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    structured: StructuredOutput | None = None

    def __post_init__(self) -> None:
        # Accept lists or a single string for convenience, store tuples (hashable, frozen).
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        self._validate_counts()
        self._validate_filters()
        self._validate_stops()

    def _validate_counts(self) -> None:
        if not 1 <= self.n <= 128:
            raise InvalidParameterError(f"n must be in [1, 128], got {self.n}", "n")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidParameterError(
                f"max_tokens must be at least 1, got {self.max_tokens}", "max_tokens"
            )
        if self.logprobs is not None and not 0 <= self.logprobs <= _MAX_LOGPROBS:
            raise InvalidParameterError(
                f"logprobs must be in [0, {_MAX_LOGPROBS}], got {self.logprobs}", "logprobs"
            )
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= _MAX_LOGPROBS:
            raise InvalidParameterError(
                f"prompt_logprobs must be in [0, {_MAX_LOGPROBS}], got {self.prompt_logprobs}",
                "prompt_logprobs",
            )
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise InvalidParameterError("seed must fit in 64 bits", "seed")

    def _validate_filters(self) -> None:
        _check_range("temperature", self.temperature, 0.0, 2.0)
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidParameterError(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.top_k < -1:
            raise InvalidParameterError(
                f"top_k must be -1, 0 (off) or positive, got {self.top_k}", "top_k"
            )
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise InvalidParameterError(
                f"repetition_penalty must be in (0, 10], got {self.repetition_penalty}",
                "repetition_penalty",
            )

    def _validate_stops(self) -> None:
        if len(self.stop) > _MAX_STOP_STRINGS:
            raise InvalidParameterError(
                f"at most {_MAX_STOP_STRINGS} stop strings, got {len(self.stop)}", "stop"
            )
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidParameterError("stop strings must be non-empty strings", "stop")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise InvalidParameterError(
                "stop_token_ids must be non-negative integers", "stop_token_ids"
            )

    @property
    def is_greedy(self) -> bool:
        """True when the most likely token is always taken."""
        return self.temperature == 0.0 or self.top_k == 1
