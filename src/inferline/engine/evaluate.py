"""Teacher-forced perplexity through the engine's own model runner (an accuracy check for
quantized weight formats: compare against the same text in fp32)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from inferline.core.sampling_params import SamplingParams
from inferline.engine.llm_engine import LLMEngine
from inferline.engine.request import Request
from inferline.engine.scheduler_output import ScheduledRequest


@torch.inference_mode()
def next_token_logprobs(
    engine: LLMEngine, token_ids: Sequence[int], decode_from: int | None = None
) -> torch.Tensor:
    """``[len - 1, vocab]`` float32: row i is the log-distribution of token i + 1 given the
    tokens up to i.

    Runs one forward pass over the whole sequence with blocks borrowed from the pool (the
    engine must be idle), and returns them afterwards. With ``decode_from``, only the first
    ``decode_from`` tokens go in that pass; each later position is its own one-token pass,
    as a decode step runs it (the decode attention kernel, the cache the passes before
    wrote), the given token standing in for the sampled one.
    """
    if engine.has_unfinished_requests():
        raise RuntimeError("an evaluation needs an idle engine")
    if len(token_ids) < 2:
        raise ValueError("need at least two tokens")
    if decode_from is not None and not 1 <= decode_from < len(token_ids):
        raise ValueError("decode_from must leave a first pass and a position to decode")
    pool = engine.block_pool
    request = Request("evaluate", list(token_ids), SamplingParams(max_tokens=1), 1)
    request.block_ids = pool.allocate(-(-len(token_ids) // pool.block_size))
    first = len(token_ids) if decode_from is None else decode_from
    try:
        logits = [_forward(engine, request, first)]
        for position in range(first, len(token_ids)):
            request.num_computed_tokens = position
            logits.append(_forward(engine, request, 1))
    finally:
        pool.free(list(reversed(request.block_ids)))
    return torch.log_softmax(torch.cat(logits)[: len(token_ids) - 1].float(), dim=-1).cpu()


def _forward(engine: LLMEngine, request: Request, tokens: int) -> torch.Tensor:
    """The logits of each of the next ``tokens`` positions of ``request``."""
    runner = engine.runner
    batch = runner._prepare([ScheduledRequest(request, tokens, needs_sample=True)])
    rows = torch.arange(tokens, device=batch.input_ids.device)
    return runner.model(
        batch.input_ids, batch.positions, engine.kv_cache.tensor, batch.metadata, rows
    )


def perplexity(engine: LLMEngine, token_ids: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of each token given the ones before it."""
    logprobs = next_token_logprobs(engine, token_ids)
    targets = torch.tensor(token_ids[1:])
    nll = -logprobs[torch.arange(len(targets)), targets].mean()
    return math.exp(float(nll))


def agreement(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """How closely ``other``'s next-token distributions (`next_token_logprobs`) follow
    ``reference``'s at every position: mean and p99 KL(reference || other), and the share of
    positions whose most likely token is the same."""
    kl = (reference.exp() * (reference - other)).sum(dim=-1)
    return {
        "kl_mean": float(kl.mean()),
        "kl_p99": float(kl.quantile(0.99)),
        "top1_agreement": float((reference.argmax(-1) == other.argmax(-1)).float().mean()),
    }
