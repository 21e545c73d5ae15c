"""Sampling parameters of one request, validated on construction."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inferline.core.errors import InvalidParameterError
from inferline.core.structured import StructuredOutput

_MAX_STOP_STRINGS = 16
_MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries
# What a model's own generation config may set when the request does not (vLLM's list)
MODEL_DEFAULT_FIELDS = frozenset({"temperature", "top_p", "top_k", "min_p", "repetition_penalty"})


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
        logit_bias: ``(token_id, bias)`` pairs (OpenAI's, at most 300, bias in [-100,
            100]) added to the logits before sampling; a dict is accepted and stored sorted.
        min_tokens: EOS and ``stop_token_ids`` are masked until this many tokens were
            generated (vLLM's; at most ``max_tokens``). A grammar that is complete still
            ends the output: the output must match it.
        unset_fields: the sampling fields (of `MODEL_DEFAULT_FIELDS`) the client did not
            set: a local engine replaces them by its model's own generation config, a
            remote upstream is not sent them (so its own defaults apply).
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
    logit_bias: tuple[tuple[int, float], ...] = field(default_factory=tuple)
    min_tokens: int = 0
    unset_fields: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        # Accept lists or a single string for convenience, store tuples (hashable, frozen).
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", _bias_pairs(self.logit_bias))
        object.__setattr__(self, "unset_fields", tuple(sorted(set(self.unset_fields))))
        self._validate_counts()
        self._validate_filters()
        self._validate_stops()
        self._validate_bias()

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

    def _validate_bias(self) -> None:
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidParameterError(
                f"logit_bias has at most {MAX_LOGIT_BIAS} entries, got {len(self.logit_bias)}",
                "logit_bias",
            )
        for token_id, bias in self.logit_bias:
            if token_id < 0:
                raise InvalidParameterError(
                    f"logit_bias: token ids must be non-negative, got {token_id}", "logit_bias"
                )
            if not -100.0 <= bias <= 100.0:
                raise InvalidParameterError(
                    f"logit_bias: biases must be in [-100, 100], got {bias} for {token_id}",
                    "logit_bias",
                )
        if self.min_tokens < 0:
            raise InvalidParameterError(
                f"min_tokens must be non-negative, got {self.min_tokens}", "min_tokens"
            )
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise InvalidParameterError(
                f"min_tokens ({self.min_tokens}) must be at most max_tokens ({self.max_tokens})",
                "min_tokens",
            )
        unknown = set(self.unset_fields) - MODEL_DEFAULT_FIELDS
        if unknown:
            raise InvalidParameterError(
                f"unset_fields: a model's defaults cannot set {', '.join(sorted(unknown))}",
                "unset_fields",
            )

    def with_defaults(self, defaults: Mapping[str, float]) -> SamplingParams:
        """These params with each unset field taken from ``defaults`` (a model's generation
        config, already validated) where it has one."""
        chosen: dict[str, Any] = {
            name: defaults[name]
            for name in self.unset_fields
            # a value changed since (dataclasses.replace by a check) is set, whatever the list
            if name in defaults and getattr(self, name) == _FIELD_DEFAULTS[name]
        }
        if not chosen:
            return self
        unset = tuple(name for name in self.unset_fields if name not in chosen)
        return dataclasses.replace(self, **chosen, unset_fields=unset)

    @property
    def is_greedy(self) -> bool:
        """True when the most likely token is always taken."""
        return self.temperature == 0.0 or self.top_k == 1


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplingParams)}


def _bias_pairs(value: Any) -> tuple[tuple[int, float], ...]:
    """``{token_id: bias}`` or pairs -> sorted ``(int, float)`` pairs (a 400 if malformed)."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = {int(token_id): float(bias) for token_id, bias in items}
    except (TypeError, ValueError) as error:
        raise InvalidParameterError(
            "logit_bias must map token ids to numbers", "logit_bias"
        ) from error
    return tuple(sorted(pairs.items()))
