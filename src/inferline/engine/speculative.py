"""Speculative decoding without a second model: n-gram (prompt lookup) drafts.

A running request whose last tokens also occurred earlier in its prompt or output is likely
to continue as it did there (extraction, summaries and code edits copy long spans of their
input). `NgramDrafter` proposes the tokens that followed the latest earlier occurrence of
the request's last ``n`` tokens (longest ``n`` first); the step then computes the request's
last token plus the drafts in one forward pass, and `verify` keeps the drafts the model
agrees with, plus one token of its own:

- greedy: a draft is kept while it equals the argmax at its position — the output is the
  model's own greedy output, ``1 + accepted`` tokens for the cost of one wider step;
- sampled: a draft ``d`` is kept with probability ``p(d)`` (the request's filtered
  distribution at that position); on rejection the token is drawn from ``p`` without ``d``,
  renormalised. With a deterministic draft this is the standard rejection rule, so each
  token is distributed exactly as without speculation.

Speculation is per request and adaptive: each request keeps an estimate of how often its
drafts are accepted and sends the number of drafts that maximises the expected tokens per
unit of step time (`NgramDrafter.draft_length`: a draft row costs `draft_row_cost` of a
one-token step); a request whose drafts keep being rejected waits (doubling, up to
`MAX_BACKOFF_STEPS` steps) before it drafts again, so text that never repeats pays only the
dictionary lookups. It applies to plain requests (`can_speculate`:
no logprobs, penalties, logit bias, grammar, pending ``min_tokens``, or seeded sampling),
and only while few requests decode at once (`SpeculativeConfig.max_batch`): a wide batch
already fills the matmuls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from inferline.core.errors import InvalidParameterError
from inferline.core.sampling_params import SamplingParams

if TYPE_CHECKING:
    from inferline.engine.request import Request

MAX_BACKOFF_STEPS = 16
SPECULATIVE_METHODS = ("ngram", "off")


@dataclass(frozen=True)
class SpeculativeConfig:
    """N-gram speculative decoding.

    Attributes:
        method: ``ngram`` (prompt lookup) or ``off``.
        num_tokens: the most draft tokens a request verifies in one step.
        ngram_max: the longest suffix looked up (tried first).
        ngram_min: the shortest suffix looked up.
        max_batch: requests draft only while at most this many decode in the step.
        draft_row_cost: a draft row's cost relative to a one-token decode step (SmolLM2,
            2-core Xeon, int4: 11.3 ms at 1 row, 22.8 ms at 5 rows, so ~0.25 a row).
    """

    method: str = "ngram"
    num_tokens: int = 4
    ngram_max: int = 4
    ngram_min: int = 2
    max_batch: int = 4
    draft_row_cost: float = 0.25

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise InvalidParameterError(
                f"speculative method must be ngram or off, got {self.method!r}", "speculative"
            )
        if self.num_tokens < 1 or self.max_batch < 1:
            raise InvalidParameterError(
                "speculative num_tokens and max_batch must be positive", "speculative"
            )
        if self.draft_row_cost < 0:
            raise InvalidParameterError("draft_row_cost must not be negative", "speculative")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise InvalidParameterError(
                f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}",
                "speculative",
            )

    @property
    def enabled(self) -> bool:
        """True unless the method is ``off``."""
        return self.method != "off"


def can_speculate(params: SamplingParams, num_output_tokens: int) -> bool:
    """True for requests whose next tokens depend only on the model's distribution.

    Penalties, logit bias, grammars and logprobs are per-step state the verification would
    have to replay; such requests decode one token a step. So do seeded sampled requests:
    speculation draws its randomness differently, and a seed must give the same tokens
    whatever else shares the batch (greedy output is the same either way).
    """
    return (
        (params.is_greedy or params.seed is None)
        and params.logprobs is None
        and params.structured is None
        and not params.logit_bias
        and params.repetition_penalty == 1.0
        and not params.frequency_penalty
        and not params.presence_penalty
        and num_output_tokens >= params.min_tokens
    )


@dataclass
class NgramDrafter:
    """One request's n-gram index and acceptance record.

    ``index[n]`` maps each ``n`` tokens to the position right after their latest
    occurrence, for occurrences that have at least one token after them; it grows as the
    request does, so a lookup costs a few dictionary reads, not a scan.
    """

    ngram_min: int
    ngram_max: int
    row_cost: float = 0.25  # a draft row's cost relative to a one-token step
    index: dict[int, dict[tuple[int, ...], int]] = field(default_factory=dict)
    num_indexed: int = 0  # positions < this are in the index
    num_proposed: int = 0
    num_accepted: int = 0
    num_misses: int = 0  # proposals in a row with nothing accepted
    wait_steps: int = 0  # steps left before the next proposal
    # moving sums of drafts kept and of drafts judged (a rejection ends a verification):
    # their ratio estimates the chance that the next draft is kept
    kept_sum: float = 0.7
    judged_sum: float = 1.0

    @property
    def acceptance(self) -> float:
        """The estimated chance that a draft is kept, given the one before it was."""
        return self.kept_sum / self.judged_sum

    def draft_length(self, limit: int) -> int:
        """Drafts (1..``limit``) maximising expected tokens per step time.

        With acceptance ``a``, ``k`` drafts yield ``(1 - a^(k+1)) / (1 - a)`` tokens (the
        kept prefix plus the model's own token) for ``1 + row_cost * k`` of a step's time.
        """
        a = min(self.acceptance, 0.999)
        best_k, best_rate = 1, 0.0
        for k in range(1, limit + 1):
            rate = (1 - a ** (k + 1)) / (1 - a) / (1 + self.row_cost * k)
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k

    def propose(self, token_ids: Sequence[int], max_tokens: int) -> list[int]:
        """Up to ``max_tokens`` draft tokens following ``token_ids`` (may be empty); fewer
        when the request's drafts are often rejected (`draft_length`)."""
        if self.wait_steps > 0:
            self.wait_steps -= 1
            return []
        max_tokens = self.draft_length(max_tokens)
        length = len(token_ids)
        self._extend(token_ids, length - 1)  # an occurrence needs a token after it
        for n in range(min(self.ngram_max, length - 1), self.ngram_min - 1, -1):
            start = self.index.get(n, {}).get(tuple(token_ids[length - n :]))
            if start is not None:
                return list(token_ids[start : start + max_tokens])
        return []

    def record(self, num_proposed: int, num_accepted: int) -> None:
        """Notes a verification; repeated misses make the request wait before drafting."""
        self.num_proposed += num_proposed
        self.num_accepted += num_accepted
        judged = num_accepted + (1 if num_accepted < num_proposed else 0)
        self.kept_sum = 0.8 * self.kept_sum + 0.2 * num_accepted
        self.judged_sum = 0.8 * self.judged_sum + 0.2 * judged
        if num_accepted:
            self.num_misses = 0
            return
        self.num_misses += 1
        self.wait_steps = min(MAX_BACKOFF_STEPS, 1 << (self.num_misses - 1))

    def _extend(self, token_ids: Sequence[int], upto: int) -> None:
        """Indexes every position ``p < upto``: the ``n`` tokens before ``p`` -> ``p``."""
        for position in range(max(self.num_indexed, 1), upto + 1):
            for n in range(self.ngram_min, min(self.ngram_max, position) + 1):
                self.index.setdefault(n, {})[tuple(token_ids[position - n : position])] = position
        self.num_indexed = max(self.num_indexed, upto + 1)


def propose_drafts(
    request: Request, config: SpeculativeConfig, budget: int, max_model_len: int
) -> list[int]:
    """Drafts for a running decode within its limits: the step's token ``budget``, its
    ``max_tokens`` and the context window (the step adds the drafts plus one token)."""
    if request.is_prefilling or not can_speculate(
        request.sampling_params, request.num_output_tokens
    ):
        return []
    room = min(
        config.num_tokens,
        budget - 1,
        request.max_tokens - request.num_output_tokens - 1,
        max_model_len - request.num_tokens - 1,
    )
    if room <= 0:
        return []
    if request.drafter is None:
        request.drafter = NgramDrafter(config.ngram_min, config.ngram_max, config.draft_row_cost)
    return request.drafter.propose(request.all_token_ids, room)


def verify_greedy(logits: torch.Tensor, drafts: Sequence[int]) -> list[int]:
    """``logits [len(drafts) + 1, vocab]`` -> the model's greedy tokens from the first
    position: drafts it agrees with, then its own token at the first disagreement (or after
    the last draft)."""
    choices = logits.max(dim=-1).indices.tolist()  # argmax's first index; 2.7x faster
    tokens = []
    for draft, choice in zip(drafts, choices, strict=False):
        tokens.append(choice)
        if choice != draft:
            return tokens
    tokens.append(choices[len(drafts)])
    return tokens


def verify_sampled(
    probs: torch.Tensor, drafts: Sequence[int], generator: torch.Generator
) -> list[int]:
    """``probs [len(drafts) + 1, vocab]`` (the request's filtered distributions) -> its
    tokens by the rejection rule: draft ``d`` kept with probability ``p(d)``, else a token
    drawn from ``p`` without ``d``; after the last kept draft, one token drawn from ``p``."""
    tokens = []
    for position, draft in enumerate(drafts):
        row = probs[position]
        accept = float(row[draft])
        if float(torch.rand((), generator=generator)) < accept:
            tokens.append(draft)
            continue
        rest = row.clone()
        rest[draft] = 0.0
        tokens.append(_draw(rest, generator))
        return tokens
    tokens.append(_draw(probs[len(drafts)], generator))
    return tokens


def _draw(weights: torch.Tensor, generator: torch.Generator) -> int:
    """One index drawn in proportion to ``weights`` (an exponential race: no normalising)."""
    noise = torch.empty_like(weights).exponential_(generator=generator)
    return int((weights / noise).argmax())
