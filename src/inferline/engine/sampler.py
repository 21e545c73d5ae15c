"""Batched sampling: penalties -> logit bias -> grammar and ``min_tokens`` masks -> greedy or
(temperature -> top-k/top-p/min-p -> sample).

Every row is one request. Random rows draw through the request's own ``torch.Generator``
(an exponential race, equivalent to sampling from the softmax), so a seeded request gets
the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
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


def filtered_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """One request's sampling distribution at each row of ``logits`` (temperature, top-k,
    top-p, min-p applied), for a random (non-greedy) request."""
    row = SamplingRow(params, (), (), torch.Generator())
    return _filter_logits(logits, [row] * logits.shape[0]).softmax(dim=-1)


@functools.lru_cache(maxsize=256)
def _bias_tensors(bias: tuple[tuple[int, float], ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """One request's ``logit_bias`` as (token ids, values), built once per distinct bias."""
    ids, values = zip(*bias, strict=True)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(values, dtype=torch.float32)


def apply_logit_bias(
    logits: torch.Tensor, biases: Sequence[tuple[tuple[int, float], ...]], row_ids: list[int]
) -> None:
    """Adds each biased row's ``logit_bias`` in place (one ``index_put_`` for the batch)."""
    parts = [_bias_tensors(bias) for bias in biases]
    token_ids = torch.cat([ids for ids, _ in parts])  # [num_entries]
    values = torch.cat([v for _, v in parts]).to(logits.dtype)
    rows = torch.repeat_interleave(
        torch.tensor(row_ids), torch.tensor([len(ids) for ids, _ in parts])
    )
    logits.index_put_((rows, token_ids), values, accumulate=True)


def hold_stop_tokens(
    logits: torch.Tensor,
    rows: Sequence[SamplingRow],
    held: list[int],
    eos_token_ids: Sequence[int],
) -> None:
    """Masks EOS (unless ``ignore_eos``) and ``stop_token_ids`` of rows below ``min_tokens``.

    A row left with no token (a complete grammar allows only EOS) gets its stop tokens
    back: the output must match its grammar, so it ends before ``min_tokens``.
    """
    row_index: list[int] = []
    token_index: list[int] = []
    vocab_size = logits.shape[1]
    for i in held:
        p = rows[i].params
        stops = (() if p.ignore_eos else tuple(eos_token_ids)) + p.stop_token_ids
        stops = tuple(t for t in stops if t < vocab_size)  # others are never sampled
        row_index += [i] * len(stops)
        token_index += stops
    if not token_index:
        return
    index = (torch.tensor(row_index), torch.tensor(token_index))
    saved = logits[index]  # [num_masked]
    logits[index] = float("-inf")
    constrained = [i for i in held if rows[i].constraint is not None]
    if constrained:
        is_empty = torch.isneginf(logits[constrained].amax(dim=-1)).tolist()
        empty = {i for i, flag in zip(constrained, is_empty, strict=True) if flag}
        restore = torch.tensor([r in empty for r in row_index])
        if empty:
            logits[index[0][restore], index[1][restore]] = saved[restore]


def _sample_random(logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
    probs = logits.softmax(dim=-1)
    token_ids = []
    for i, row in enumerate(rows):
        noise = torch.empty_like(probs[i]).exponential_(generator=row.generator)
        token_ids.append(int((probs[i] / noise).argmax()))
    return token_ids


class Sampler:
    """Turns the logits of a step into one token per request.

    Order: raw logprobs; penalties; ``logit_bias``; grammar masks; ``min_tokens`` (EOS and
    stop token ids masked, unless that would leave a complete grammar no token); choose.
    A batch whose rows use none of these pays one pass over its rows' params.
    """

    def __init__(
        self,
        eos_token_ids: Sequence[int] = (),
        argmax: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``argmax``: rows ``[M, V]`` -> each row's first index of its largest value (the
        native `row_argmax`, 7x torch's at 64 rows); torch's where None."""
        self.eos_token_ids = tuple(eos_token_ids)
        self.argmax = argmax or (lambda logits: logits.max(dim=-1).indices)

    def __call__(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> SamplerOutput:
        """``logits``: float32 ``[num_rows, vocab_size]``, one row per entry of ``rows``."""
        logits = logits.float().cpu()
        raw_logprobs = self._raw_logprobs(logits, rows)
        has_penalties = has_constraints = False
        biased, held = [], []
        for i, r in enumerate(rows):  # one pass: the common batch stops here
            p = r.params
            has_penalties = has_penalties or self._has_penalties(p)
            has_constraints = has_constraints or r.constraint is not None
            if p.logit_bias:
                biased.append(i)
            if p.min_tokens > len(r.output_token_ids):
                held.append(i)
        if has_penalties or has_constraints or biased or held:
            logits = logits.clone()  # never write the caller's tensor
        if has_penalties:
            logits = _apply_penalties(logits, rows)
        if biased:
            apply_logit_bias(logits, [rows[i].params.logit_bias for i in biased], biased)
        if has_constraints:
            apply_masks(logits, [r.constraint for r in rows])
        if held:
            hold_stop_tokens(logits, rows, held, self.eos_token_ids)
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

    def _choose(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> list[int]:
        token_ids: list[int] = self.argmax(logits).tolist()
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
