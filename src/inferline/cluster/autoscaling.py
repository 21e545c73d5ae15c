"""Autoscaling an engine deployment on queued prompt tokens (the work ahead of a new
request's first token), not on request counts: ten short chats and ten 8k-token prompts
are not the same load.

Ray Serve calls `queued_tokens_policy` with each replica's ``queued_tokens`` and
``running`` (reported by `EngineReplica.record_autoscaling_stats`, averaged over the
look-back window) and applies the deployment's bounds and its ``upscale_delay_s`` /
``downscale_delay_s`` (the cool-downs) to what it returns.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.config import AutoscalingContext

DEFAULT_TARGET_QUEUED_TOKENS = 2048  # per replica: ~1-2 s of prefill for a 135M model


def desired_replicas(
    queued_tokens: float, running: float, target_queued_tokens: float, max_running: float
) -> int:
    """Replicas for this load: enough that each has at most ``target_queued_tokens``
    waiting and ``max_running`` requests running; at least one."""
    by_queue = math.ceil(queued_tokens / target_queued_tokens) if queued_tokens > 0 else 0
    by_running = math.ceil(running / max_running) if running > 0 else 0
    return max(1, by_queue, by_running)


def queued_tokens_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Ray Serve's custom policy: desired replicas from the replicas' queued tokens."""
    metrics = ctx.aggregated_metrics or {}
    queued = sum((metrics.get("queued_tokens") or {}).values())
    running = sum((metrics.get("running") or {}).values())
    options = (ctx.config.policy.policy_kwargs if ctx.config is not None else None) or {}
    target = float(options.get("target_queued_tokens", DEFAULT_TARGET_QUEUED_TOKENS))
    max_running = float(options.get("max_running", 32))
    desired = desired_replicas(queued, running, target, max_running)
    state = {"queued_tokens": queued, "running": running, "desired": desired}
    return desired, state
