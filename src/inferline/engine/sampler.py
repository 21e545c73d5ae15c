"""Batched sampling: penalties -> greedy or (temperature -> top-k/top-p/min-p -> sample).

Every row is one request. Random rows draw through the request's own ``torch.Generator``
(an exponential race, equivalent to sampling from the softmax), so a seeded request gets
the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from inferline.core.sampling_params import SamplingParams
from inferline.engine.structured import apply_masks


@dataclass
class SamplingRow:
    """One request's inputs to the sampler."""

    params: SamplingParams
    prompt_token_ids: Sequence[int]
    output_token_ids: Sequence[int]
    generator: torch.Generator
    constraint: Any = None  # a constrained request's grammar state (engine.structured)
    remaining: int = 1 << 30  # tokens it may still generate, this one included


@dataclass
class SamplerOutput:
    """Chosen tokens plus log-probabilities for the rows that asked for them.

    ``logprobs`` are of the model's raw distribution (before penalties and temperature).
    """

    token_ids: list[int]
    token_logprobs: list[float | None]
    top_token_ids: list[list[int]]
    top_logprobs: list[list[float]]


def _apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Repetition (prompt + output), frequency and presence (output) penalties."""
    vocab_size = logits.shape[1]
    for i, row in enumerate(rows):
        p = row.params
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(list(row.prompt_token_ids) + list(row.output_token_ids))
            seen = seen.unique()
            values = logits[i, seen]
            logits[i, seen] = torch.where(
                values > 0, values / p.repetition_penalty, values * p.repetition_penalty
            )
        if (p.frequency_penalty or p.presence_penalty) and row.output_token_ids:
            counts = torch.bincount(torch.tensor(row.output_token_ids), minlength=vocab_size)
            counts = counts[:vocab_size].to(logits.dtype)
            logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    return logits


def _filter_logits(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p masks (masked entries become -inf)."""
    temperatures = torch.tensor([r.params.temperature for r in rows], dtype=logits.dtype)
    logits = logits / temperatures.unsqueeze(1)
    top_ks = [r.params.top_k for r in rows]
    top_ps = [r.params.top_p for r in rows]
    min_ps = [r.params.min_p for r in rows]
    vocab_size = logits.shape[1]
    if any(k > 0 for k in top_ks) or any(p < 1.0 for p in top_ps):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        k = torch.tensor([k if k > 0 else vocab_size for k in top_ks]).clamp(max=vocab_size)
        ranks = torch.arange(vocab_size).unsqueeze(0)
        remove = ranks >= k.unsqueeze(1)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # keep a token while the mass before it < p
        remove |= mass_before >= torch.tensor(top_ps, dtype=probs.dtype).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.empty_like(logits).scatter_(1, order, sorted_logits)
    if any(p > 0.0 for p in min_ps):
        probs = logits.softmax(dim=-1)
        threshold = probs.amax(dim=-1, keepdim=True) * torch.tensor(min_ps).unsqueeze(1)
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def _sample_random(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
    probs = logits.softmax(dim=-1)
    token_ids = []
    for i, row in enumerate(rows):
        noise = torch.empty_like(probs[i]).exponential_(generator=row.generator)
        token_ids.append(int((probs[i] / noise).argmax()))
    return token_ids


class Sampler:
    """Turns the logits of a step into one token per request."""

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """``logits``: float32 ``[num_rows, vocab_size]``, one row per entry of ``rows``."""
        logits = logits.float().cpu()
        raw_logprobs = self._raw_logprobs(logits, rows)
        if any(self._has_penalties(r.params) for r in rows):
            logits = _apply_penalties(logits.clone(), rows)
        if any(r.constraint is not None for r in rows):
            logits = logits.clone()
            apply_masks(logits, [r.constraint for r in rows])
        token_ids = self._choose(logits, rows)
        for i, row in enumerate(rows):
            if row.constraint is not None:  # near max_tokens, closing the JSON comes first
                token_ids[i] = row.constraint.settle(token_ids[i], row.remaining)
                row.constraint.consume(token_ids[i])
        return self._with_logprobs(token_ids, raw_logprobs, rows)

    @staticmethod
    def _has_penalties(p: SamplingParams) -> bool:
        return bool(p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty)

    @staticmethod
    def _raw_logprobs(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor | None:
        if all(r.params.logprobs is None for r in rows):
            return None
        return torch.log_softmax(logits, dim=-1)

    @staticmethod
    def _choose(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
        token_ids = logits.argmax(dim=-1).tolist()
        random_rows = [i for i, r in enumerate(rows) if not r.params.is_greedy]
        if random_rows:
            index = torch.tensor(random_rows)
            chosen_rows = [rows[i] for i in random_rows]
            filtered = _filter_logits(logits[index], chosen_rows)
            for i, token_id in zip(random_rows, _sample_random(filtered, chosen_rows), strict=True):
                token_ids[i] = token_id
        return token_ids

    @staticmethod
    def _with_logprobs(
        token_ids: list[int], logprobs: torch.Tensor | None, rows: Sequence[SamplingRow]
    ) -> SamplerOutput:
        out = SamplerOutput(token_ids, [None] * len(rows), [[] for _ in rows], [[] for _ in rows])
        if logprobs is None:
            return out
        for i, row in enumerate(rows):
            num_top = row.params.logprobs
            if num_top is None:
                continue
            out.token_logprobs[i] = float(logprobs[i, token_ids[i]])
            if num_top > 0:
                values, ids = logprobs[i].topk(num_top)
                out.top_token_ids[i] = ids.tolist()
                out.top_logprobs[i] = values.tolist()
        return out
