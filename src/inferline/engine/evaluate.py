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
def perplexity(engine: LLMEngine, token_ids: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of each token given the ones before it.

    Runs one forward pass over the whole sequence with blocks borrowed from the pool (the
    engine must be idle), and returns them afterwards.
    """
    if engine.has_unfinished_requests():
        raise RuntimeError("perplexity needs an idle engine")
    if len(token_ids) < 2:
        raise ValueError("need at least two tokens")
    pool = engine.block_pool
    request = Request("perplexity", list(token_ids), SamplingParams(max_tokens=1), 1)
    request.block_ids = pool.allocate(-(-len(token_ids) // pool.block_size))
    try:
        runner = engine.runner
        batch = runner._prepare([ScheduledRequest(request, len(token_ids), needs_sample=True)])
        every_position = torch.arange(len(token_ids), device=batch.input_ids.device)
        logits = runner.model(
            batch.input_ids, batch.positions, engine.kv_cache.tensor, batch.metadata, every_position
        )
    finally:
        pool.free(list(reversed(request.block_ids)))
    logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
    targets = torch.tensor(token_ids[1:], device=logprobs.device)
    nll = -logprobs[torch.arange(len(targets)), targets].mean()
    return math.exp(float(nll))
