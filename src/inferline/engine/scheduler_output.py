"""The contracts between scheduler, model runner and engine, one dataclass per boundary."""

from __future__ import annotations

from dataclasses import dataclass, field

from inferline.core.outputs import Logprob
from inferline.engine.prompt_logprobs import PromptLogprobsChunk
from inferline.engine.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step: compute ``num_tokens`` tokens from its current
    ``num_computed_tokens`` on, and sample a token if ``needs_sample``.

    A decode with ``draft_token_ids`` computes its last token plus the drafts
    (``num_tokens = 1 + len(drafts)``) and samples at every one of those positions
    (`inferline.engine.speculative`)."""

    request: Request
    num_tokens: int
    needs_sample: bool  # the chunk reaches the end of the known tokens
    draft_token_ids: list[int] = field(default_factory=list)

    @property
    def num_sample_rows(self) -> int:
        """Logit rows this request samples from (0, 1, or 1 + its drafts)."""
        return 1 + len(self.draft_token_ids) if self.needs_sample else 0


@dataclass
class SchedulerOutput:
    """What to run this step. The scheduler's whole model is ``{request_id: num_tokens}``;
    prefill, decode and chunked prefill are all just different ``num_tokens``.

    Attributes:
        scheduled: requests in batch order (decodes first, then prefill chunks).
        block_copies: ``(src, dst)`` block pairs to copy before the forward pass
            (copy-on-write of the last, partly filled block when ``n > 1`` siblings fork).
        preempted_ids: requests that lost their blocks this step (they will recompute).
    """

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    block_copies: list[tuple[int, int]] = field(default_factory=list)
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def num_scheduled_tokens(self) -> dict[str, int]:
        """``{request_id: num_tokens}`` for this step."""
        return {s.request.request_id: s.num_tokens for s in self.scheduled}

    @property
    def num_tokens(self) -> int:
        """Tokens computed this step (drafts included)."""
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        """Nothing to run."""
        return not self.scheduled


@dataclass
class ModelRunnerOutput:
    """Tokens sampled this step, keyed by request id (only for requests that sampled; more
    than one where drafts were accepted), and the prompt logprobs of this step's chunks of
    requests that asked for them."""

    sampled_token_ids: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, Logprob] = field(default_factory=dict)
    prompt_logprobs: dict[str, PromptLogprobsChunk] = field(default_factory=dict)
