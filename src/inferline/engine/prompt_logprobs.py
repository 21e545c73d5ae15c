"""Prompt logprobs: the log-probability of every prompt token given the tokens before it.

Only requests whose `SamplingParams.prompt_logprobs` is set pay for them; a step without
such a request runs exactly as before. For those, the model runner asks for the hidden
states of every prompt position in the chunk (not only the last), runs them through the
exact fp32 head in slices of `SLICE_ROWS` (so a 2048-token chunk never holds more than
``SLICE_ROWS x vocab`` logits), and keeps the scored token's logprob and the top
alternatives. The logits at position ``p`` score the prompt token at ``p + 1``; the last
prompt position's logits sample the first output token as usual.

Chunked prefill gives each chunk's scores separately (`PromptLogprobsChunk`, keyed by
position, so a preempted request that recomputes overwrites rather than duplicates). A
prefix-cache hit has no logits, so such requests skip the prefix cache (as vLLM does):
the scheduler computes their whole prompt (their blocks still enter the cache for others).
`PromptLogprobsCollector` turns the chunks into `Logprob`s once the prompt is done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from inferline.core.outputs import Logprob
from inferline.engine.request import Request
from inferline.models.tokenizer import IncrementalDetokenizer, Tokenizer

SLICE_ROWS = 128  # exact-head rows per slice: 128 x 49152 fp32 logits = 25 MB


def wants_prompt_logprobs(request: Request) -> bool:
    """True for the request that scores its prompt (the first of its ``n`` completions)."""
    return request.sampling_params.prompt_logprobs is not None and request.index == 0


@dataclass
class PromptRows:
    """One request's prompt positions in this step's flat batch.

    ``rows[i]`` is the flat-batch row of position ``first_position - 1 + i``, whose logits
    score ``token_ids[i]``, the prompt token at ``first_position + i``.
    """

    request_id: str
    first_position: int  # >= 1: the first scored prompt position
    rows: list[int]
    token_ids: list[int]
    num_top: int


def plan_prompt_rows(
    request: Request, start: int, num_tokens: int, first_row: int
) -> PromptRows | None:
    """The rows of a chunk ``[start, start + num_tokens)`` that score prompt tokens."""
    num_prompt = len(request.prompt_token_ids)
    end = min(start + num_tokens, num_prompt - 1)  # the last position samples instead
    if not wants_prompt_logprobs(request) or end <= start:
        return None
    num_top = request.sampling_params.prompt_logprobs or 0
    return PromptRows(
        request.request_id,
        start + 1,
        [first_row + (p - start) for p in range(start, end)],
        request.prompt_token_ids[start + 1 : end + 1],
        num_top,
    )


@dataclass
class PromptLogprobsChunk:
    """Scores of consecutive prompt tokens from ``first_position`` on (one chunk)."""

    first_position: int
    token_ids: list[int]
    logprobs: list[float]
    top_token_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)


def score_prompt_rows(
    hidden: torch.Tensor,  # [sum(len(p.rows)), hidden] in the order of ``plans``
    plans: Sequence[PromptRows],
    exact_logits: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, PromptLogprobsChunk]:
    """Each plan's token logprobs and top alternatives, the head run ``SLICE_ROWS`` at a time."""
    targets = [t for p in plans for t in p.token_ids]
    target_ids = torch.tensor(targets, dtype=torch.long, device=hidden.device)
    num_top = max(p.num_top for p in plans)
    token_lps, top_values, top_ids = [], [], []
    for a in range(0, hidden.shape[0], SLICE_ROWS):
        logprobs = torch.log_softmax(exact_logits(hidden[a : a + SLICE_ROWS]).float(), dim=-1)
        token_lps.append(logprobs.gather(1, target_ids[a : a + SLICE_ROWS, None]).squeeze(1))
        if num_top:  # reduced where the logits are; only the results cross to the host
            values, ids = logprobs.topk(num_top, dim=-1)
            top_values.append(values)
            top_ids.append(ids)
    flat_lps = torch.cat(token_lps).tolist()
    flat_top_values = torch.cat(top_values).tolist() if num_top else []
    flat_top_ids = torch.cat(top_ids).tolist() if num_top else []
    chunks, offset = {}, 0
    for plan in plans:
        span = slice(offset, offset + len(plan.rows))
        chunk = PromptLogprobsChunk(plan.first_position, plan.token_ids, flat_lps[span])
        if plan.num_top:
            chunk.top_token_ids = [ids[: plan.num_top] for ids in flat_top_ids[span]]
            chunk.top_logprobs = [values[: plan.num_top] for values in flat_top_values[span]]
        chunks[plan.request_id] = chunk
        offset += len(plan.rows)
    return chunks


class PromptLogprobsCollector:
    """Gathers one request's chunks; `result` builds the `Logprob`s once all have arrived.

    Token texts come from an incremental detokenizer over the prompt (special tokens kept),
    so they concatenate to ``text``, the decoded prompt; a character split over several
    tokens belongs to the token that completes it.
    """

    def __init__(self, prompt_token_ids: list[int]) -> None:
        self.prompt_token_ids = prompt_token_ids
        self._chunks: dict[int, PromptLogprobsChunk] = {}
        self._result: tuple[str, list[Logprob | None]] | None = None

    def add(self, chunk: PromptLogprobsChunk) -> None:
        """Keeps a chunk (a recomputed one replaces the one at its position)."""
        if self._result is None:
            self._chunks[chunk.first_position] = chunk

    def result(self, tokenizer: Tokenizer) -> tuple[str, list[Logprob | None]]:
        """The decoded prompt and one entry per prompt token (the first ``None``)."""
        if self._result is None:
            self._result = self._build(tokenizer)
            self._chunks.clear()
        return self._result

    def _build(self, tokenizer: Tokenizer) -> tuple[str, list[Logprob | None]]:
        texts = _token_texts(tokenizer, self.prompt_token_ids)
        entries: list[Logprob | None] = [None] * len(self.prompt_token_ids)
        decode = tokenizer.decode
        for chunk in self._chunks.values():
            for i, token_id in enumerate(chunk.token_ids):
                position = chunk.first_position + i
                top = tuple(
                    (t, decode([t], skip_special_tokens=False), v)
                    for t, v in zip(
                        chunk.top_token_ids[i] if chunk.top_token_ids else [],
                        chunk.top_logprobs[i] if chunk.top_logprobs else [],
                        strict=True,
                    )
                )
                entries[position] = Logprob(token_id, texts[position], chunk.logprobs[i], top)
        return "".join(texts), entries


def _token_texts(tokenizer: Tokenizer, token_ids: list[int]) -> list[str]:
    """The text each token adds to the decoded prompt (held-back bytes go to the token
    that completes their character; anything left at the end to the last token)."""
    detokenizer = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    texts = [detokenizer.add([token_id]) for token_id in token_ids]
    if texts:
        texts[-1] += detokenizer.flush()
    return texts
