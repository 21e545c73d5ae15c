"""The engine's per-sequence state."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from inferline.core.outputs import FinishReason
from inferline.core.sampling_params import Priority, SamplingParams
from inferline.engine.speculative import NgramDrafter


class RequestStatus(enum.Enum):
    """Where a request is in its life; FINISHED is terminal."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    """One sequence being generated.

    A user request with ``n > 1`` becomes ``n`` of these, sharing ``group_id``; the
    siblings fork from ``fork_parent`` once its prompt is computed, sharing its blocks.

    Invariants: ``num_computed_tokens <= len(all_token_ids)``; ``block_ids`` cover at least
    ``num_computed_tokens`` positions; the last token of ``all_token_ids`` is the one the
    next decode step feeds.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    max_tokens: int  # resolved: never None here
    priority: Priority = Priority.INTERACTIVE
    group_id: str = ""
    index: int = 0  # which of the n completions
    fork_parent: Request | None = None
    arrival_s: float = field(default_factory=time.time)
    first_scheduled_s: float | None = None
    status: RequestStatus = RequestStatus.WAITING
    all_token_ids: list[int] = field(default_factory=list)  # prompt + output, filled below
    num_computed_tokens: int = 0
    num_cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of the leading full blocks
    num_preemptions: int = 0
    engine_s: float = 0.0  # its share of the steps it was in (see LLMEngine.step)
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    generator: torch.Generator = field(default_factory=torch.Generator)
    constraint: Any = None  # grammar state of a constrained request (engine.structured)
    drafter: NgramDrafter | None = None  # its n-gram drafts (engine.speculative), when on

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        if not self.group_id:
            self.group_id = self.request_id
        seed = self.sampling_params.seed
        if seed is None:
            self.generator.seed()
        else:  # siblings of one request draw different samples from one seed
            self.generator.manual_seed((seed + self.index) % 2**64)

    @property
    def output_token_ids(self) -> list[int]:
        """Generated tokens so far (a copy)."""
        return self.all_token_ids[len(self.prompt_token_ids) :]

    @property
    def num_output_tokens(self) -> int:
        """How many tokens were generated."""
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Length of prompt plus output."""
        return len(self.all_token_ids)

    def append_output_token(self, token_id: int) -> None:
        """Records a sampled token; its K/V is computed by the next step."""
        self.all_token_ids.append(token_id)

    @property
    def num_tokens_to_compute(self) -> int:
        """Tokens whose K/V are not yet in the cache (1 for a running decode)."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        """True while more than one token is left to compute."""
        return self.num_tokens_to_compute > 1

    @property
    def is_finished(self) -> bool:
        """True once the request has a finish reason."""
        return self.status == RequestStatus.FINISHED

    def sort_key(self) -> tuple[int, float, str]:
        """Scheduling order: priority class, then arrival, then id (deterministic)."""
        return (int(self.priority), self.arrival_s, self.request_id)
