"""Continuous batching: each step is ``{request_id: num_tokens}`` under a token budget.

Order within a step: running decodes first, then running prefill chunks, then newly
admitted requests (chunked prefill: a long prompt takes several steps and never stalls
running streams for its whole length). Admission needs free blocks; when a running request
needs a block and none is free, the lowest-priority, most recently arrived request is
preempted: its blocks are freed and it recomputes later (its cached blocks may still hit).

Batch-priority requests (batch job lines) yield to interactive ones: interactive requests
are scheduled first; while interactive work is in a step, batch requests hold at most
``batch_token_share`` of its tokens; running batch requests are preempted when a waiting
interactive request needs their seat or blocks. With no interactive work, batch requests
use the whole step.

With speculation on (`inferline.engine.speculative`), a decode may carry n-gram draft
tokens: it is scheduled for ``1 + drafts`` tokens, drafts take only free blocks (they
never preempt), and `update` keeps the K/V of the drafts the model accepted.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable

from inferline.core.outputs import FinishReason
from inferline.core.sampling_params import Priority
from inferline.engine.block_pool import BlockPool
from inferline.engine.config import SchedulerConfig
from inferline.engine.request import Request, RequestStatus
from inferline.engine.scheduler_output import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from inferline.engine.speculative import SpeculativeConfig, propose_drafts


class Scheduler:
    """Decides what runs each step and keeps requests' block tables.

    Invariants: ``running`` holds exactly the requests that own blocks; ``waiting`` is
    sorted by `Request.sort_key`; a finished request owns no blocks.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        block_pool: BlockPool,
        max_model_len: int,
        eos_token_ids: Iterable[int],
        speculative: SpeculativeConfig | None = None,
    ) -> None:
        self.config = config
        self.speculative = speculative or SpeculativeConfig(method="off")
        self.block_pool = block_pool
        self.block_size = block_pool.block_size
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self.num_draft_tokens = 0  # speculative drafts verified, and how many were kept
        self.num_accepted_tokens = 0

    # ---- requests in and out -------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queues a request (sorted by priority class, then arrival)."""
        self.requests[request.request_id] = request
        bisect.insort(self.waiting, request, key=Request.sort_key)

    def finish_request(
        self, request_id: str, reason: FinishReason, stop_reason: str | int | None = None
    ) -> None:
        """Ends a request (stop, length or abort) and frees its blocks at once."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
            self._free_blocks(request)
        elif request.status == RequestStatus.WAITING:
            self.waiting.remove(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason, request.stop_reason = reason, stop_reason

    def has_unfinished_requests(self) -> bool:
        """True while anything is waiting or running."""
        return bool(self.requests)

    # ---- one step --------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Picks this step's requests and token counts, allocating blocks for them.

        Interactive requests are scheduled first (running, then admitted); batch-priority
        ones then get what is left, capped while interactive work is in the step.
        """
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        may_draft = self.speculative.enabled and (
            sum(1 for r in self.running if r.num_tokens_to_compute == 1)
            <= self.speculative.max_batch
        )
        if any(r.priority == Priority.INTERACTIVE for r in self.waiting):
            self._make_room_for_interactive(out)
        num_yielded = len(out.preempted_ids)
        budget = self._schedule_running(out, budget, batch=False, may_draft=may_draft)
        if len(out.preempted_ids) == num_yielded:  # memory is tight: running ones drain first
            budget = self._admit_waiting(out, budget, batch=False)
        batch_budget = self._batch_allowance(self.config.max_num_batched_tokens - budget, budget)
        batch_left = self._schedule_running(out, batch_budget, batch=True, may_draft=may_draft)
        live_waiting = any(r.priority == Priority.INTERACTIVE for r in self.waiting)
        if len(out.preempted_ids) == num_yielded and not live_waiting:
            prefill_done = sum(
                s.num_tokens
                for s in out.scheduled
                if s.request.priority != Priority.INTERACTIVE and s.num_tokens > 1
            )
            prefill_left = max(0, self.config.batch_prefill_tokens - prefill_done)
            self._admit_waiting(out, min(batch_left, prefill_left), batch=True)
        return out

    def _batch_allowance(self, live_tokens: int, budget: int) -> int:
        """Tokens batch requests may take this step, given the interactive tokens in it.

        With interactive work in the step, batch requests may hold ``batch_token_share`` of
        the step's tokens (8 live decodes leave room for 2 batch tokens at 0.25; at least 1
        is always left): live streams keep their pace and the job uses what they leave.
        """
        share = self.config.batch_token_share
        if live_tokens == 0 or share >= 1.0:
            return budget
        floor = 1 if share > 0 else 0  # a job always moves, if only by a token a step
        return min(budget, max(floor, int(live_tokens * share / (1.0 - share))))

    def _schedule_running(
        self, out: SchedulerOutput, budget: int, *, batch: bool, may_draft: bool
    ) -> int:
        """Schedules running requests of one class (decodes first); returns the budget left."""
        mine = [r for r in self.running if (r.priority != Priority.INTERACTIVE) == batch]
        prefill_left = self.config.batch_prefill_tokens if batch else budget
        for request in sorted(mine, key=lambda r: (r.is_prefilling, r.sort_key())):
            if budget == 0:
                break
            if request.status != RequestStatus.RUNNING:
                continue  # preempted earlier in this loop
            limit = min(budget, prefill_left) if request.is_prefilling else budget
            num_tokens = min(request.num_tokens_to_compute, limit)
            if num_tokens == 0:
                continue
            if request.is_prefilling:
                prefill_left -= num_tokens
            drafts = self._drafts(request, budget) if may_draft and num_tokens == 1 else []
            if self._reserve_blocks(request, num_tokens + len(drafts), out):
                scheduled = self._scheduled(request, num_tokens)
                scheduled.num_tokens += len(drafts)
                scheduled.draft_token_ids = drafts
                out.scheduled.append(scheduled)
                budget -= scheduled.num_tokens
        return budget

    def _drafts(self, request: Request, budget: int) -> list[int]:
        """N-gram drafts for a running decode, as many as its limits and free blocks allow."""
        drafts = propose_drafts(request, self.speculative, budget, self.max_model_len)
        while drafts and not self.block_pool.can_allocate(
            self._num_new_blocks(request, 1 + len(drafts))
        ):
            drafts.pop()  # drafts take free blocks only, never another request's
        return drafts

    def update(self, out: SchedulerOutput, runner_output: ModelRunnerOutput) -> list[Request]:
        """Advances computed counts, appends sampled tokens, applies token-level stops.

        Returns the requests that got a new token (some of them now finished).
        """
        updated = []
        for scheduled in out.scheduled:
            request = scheduled.request
            if request.is_finished:
                continue
            token_ids = runner_output.sampled_token_ids.get(request.request_id, [])
            num_computed = scheduled.num_tokens
            if scheduled.draft_token_ids and token_ids:
                num_accepted = len(token_ids) - 1  # accepted drafts, then one of its own
                assert request.drafter is not None
                request.drafter.record(len(scheduled.draft_token_ids), num_accepted)
                self.num_draft_tokens += len(scheduled.draft_token_ids)
                self.num_accepted_tokens += num_accepted
                num_computed = 1 + num_accepted  # rejected drafts' K/V is dropped
            stop = None
            for token_id in token_ids:
                request.append_output_token(token_id)
                stop = self._token_stop(request, token_id)
                if stop is not None:
                    break  # the tokens after a stop are not part of the output
            # appended first, so the blocks registered below hash the tokens they hold;
            # capped: a stop inside the accepted drafts drops the K/V after it
            request.num_computed_tokens = min(
                request.num_computed_tokens + num_computed, request.num_tokens
            )
            self.block_pool.cache_full_blocks(
                request.all_token_ids,
                request.num_computed_tokens,
                request.block_ids,
                request.block_hashes,
            )
            if stop is not None:
                self.finish_request(request.request_id, *stop)
            if token_ids:
                updated.append(request)
        return updated

    # ---- internals -------------------------------------------------------------------

    def _scheduled(self, request: Request, num_tokens: int) -> ScheduledRequest:
        needs_sample = request.num_computed_tokens + num_tokens == request.num_tokens
        return ScheduledRequest(request, num_tokens, needs_sample)

    def _num_new_blocks(self, request: Request, num_tokens: int) -> int:
        num_needed = -(-(request.num_computed_tokens + num_tokens) // self.block_size)
        return max(0, num_needed - len(request.block_ids))

    def _reserve_blocks(self, request: Request, num_tokens: int, out: SchedulerOutput) -> bool:
        """Allocates blocks for ``num_tokens`` more tokens, preempting others if needed.

        Returns False when ``request`` itself had to be preempted.
        """
        num_new = self._num_new_blocks(request, num_tokens)
        scheduled_ids = {s.request.request_id for s in out.scheduled}
        while not self.block_pool.can_allocate(num_new):
            candidates = [r for r in self.running if r.request_id not in scheduled_ids]
            victim = max(candidates, key=Request.sort_key)
            self._preempt(victim, out)
            if victim is request:
                return False
        request.block_ids.extend(self.block_pool.allocate(num_new))
        return True

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self._free_blocks(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        request.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, request, key=Request.sort_key)
        out.preempted_ids.append(request.request_id)

    def _free_blocks(self, request: Request) -> None:
        self.block_pool.free(list(reversed(request.block_ids)))  # tail first: keep shared heads
        request.block_ids, request.block_hashes = [], []

    def _admit_waiting(self, out: SchedulerOutput, budget: int, *, batch: bool) -> int:
        """Admits waiting requests of one class in queue order; returns the budget left."""
        index = 0
        while budget > 0 and index < len(self.waiting):
            if len(self.running) >= self.config.max_num_seqs:
                break
            request = self.waiting[index]
            if (request.priority != Priority.INTERACTIVE) != batch:
                index += 1
                continue
            if self._is_waiting_for_fork(request):
                index += 1
                continue
            num_tokens = self._admit(request, budget, out)
            if num_tokens == 0:
                break  # head-of-line: no blocks for the most urgent request
            self.waiting.pop(index)
            budget -= num_tokens
        return budget

    def _make_room_for_interactive(self, out: SchedulerOutput) -> None:
        """Preempts batch-priority requests (newest first) so waiting interactive ones fit.

        Seats (``max_num_seqs``) and blocks for the first chunks of the interactive requests
        that fit this step's budget are freed; a preempted batch request recomputes later,
        mostly from the prefix cache, since its freed blocks stay cached.
        """
        victims = sorted(
            (r for r in self.running if r.priority != Priority.INTERACTIVE), key=Request.sort_key
        )
        if not victims:
            return
        seats = self.config.max_num_seqs - len(self.running)
        tokens = blocks = 0
        for request in self.waiting:
            if request.priority != Priority.INTERACTIVE:
                break  # the waiting queue is sorted by priority
            chunk = min(request.num_tokens, self.config.max_num_batched_tokens - tokens)
            if chunk <= 0:
                break
            tokens += chunk
            blocks += -(-chunk // self.block_size)
            seats -= 1
            while victims and (seats < 0 or not self.block_pool.can_allocate(blocks)):
                self._preempt(victims.pop(), out)
                seats += 1
            if seats < 0 or not self.block_pool.can_allocate(blocks):
                break

    def _is_waiting_for_fork(self, request: Request) -> bool:
        """A sibling of an ``n > 1`` request waits until its parent's prompt is computed."""
        parent = request.fork_parent
        if parent is None or parent.is_finished:
            return False
        return parent.num_computed_tokens < len(parent.prompt_token_ids)

    def _can_fork(self, request: Request) -> bool:
        parent = request.fork_parent
        return (
            parent is not None
            and parent.status == RequestStatus.RUNNING
            and parent.num_computed_tokens >= len(request.prompt_token_ids)
            and request.num_output_tokens == 0
        )

    def _admit(self, request: Request, budget: int, out: SchedulerOutput) -> int:
        """Gives ``request`` its blocks and first chunk; returns the tokens scheduled (0 = no)."""
        if self._can_fork(request):
            return self._admit_fork(request, out)
        cached_ids: list[int] = []
        if request.sampling_params.prompt_logprobs is None:  # a cached prefix has no logits
            cached_ids = self.block_pool.find_cached_prefix(request.all_token_ids)
        num_cached = len(cached_ids) * self.block_size
        num_tokens = min(request.num_tokens - num_cached, budget)
        num_new = -(-(num_cached + num_tokens) // self.block_size) - len(cached_ids)
        num_reclaimed = sum(1 for i in cached_ids if self.block_pool.blocks[i].ref_count == 0)
        reserve = 0
        if request.priority != Priority.INTERACTIVE:  # keep KV headroom for live arrivals
            reserve = int(self.block_pool.num_blocks * self.config.batch_kv_reserve)
        if not self.block_pool.can_allocate(num_new + num_reclaimed + reserve):
            return 0
        self.block_pool.touch(cached_ids)
        request.block_ids = cached_ids + self.block_pool.allocate(num_new)
        request.block_hashes = [self.block_pool.blocks[i].block_hash or 0 for i in cached_ids]
        request.num_computed_tokens = num_cached
        if request.num_preemptions == 0:
            request.num_cached_prompt_tokens = min(num_cached, len(request.prompt_token_ids))
        self._start_running(request)
        out.scheduled.append(self._scheduled(request, num_tokens))
        return num_tokens

    def _admit_fork(self, request: Request, out: SchedulerOutput) -> int:
        """Shares the parent's prompt blocks; copies the block holding the last prompt token.

        The sibling recomputes only the last prompt token (to get its own logits) into a
        private copy of that block, so no shared block is ever written.
        """
        parent = request.fork_parent
        assert parent is not None
        last_position = len(request.prompt_token_ids) - 1
        num_shared = last_position // self.block_size
        if not self.block_pool.can_allocate(1):
            return 0
        shared = parent.block_ids[:num_shared]
        self.block_pool.touch(shared)
        (new_block,) = self.block_pool.allocate(1)
        if last_position % self.block_size:
            out.block_copies.append((parent.block_ids[num_shared], new_block))
        request.block_ids = [*shared, new_block]
        request.block_hashes = parent.block_hashes[:num_shared]
        request.num_computed_tokens = last_position
        request.num_cached_prompt_tokens = last_position
        self._start_running(request)
        out.scheduled.append(self._scheduled(request, 1))
        return 1

    def _start_running(self, request: Request) -> None:
        request.first_scheduled_s = request.first_scheduled_s or time.time()
        request.status = RequestStatus.RUNNING
        self.running.append(request)

    def _token_stop(
        self, request: Request, token_id: int
    ) -> tuple[FinishReason, int | None] | None:
        """Why ``request`` ends with ``token_id`` just appended (reason, stop token id), or
        None: EOS, a stop token id, max_tokens or the context window."""
        params = request.sampling_params
        if not params.ignore_eos and token_id in self.eos_token_ids:
            return "stop", None
        if token_id in params.stop_token_ids:
            return "stop", token_id
        if (
            request.num_output_tokens >= request.max_tokens
            or request.num_tokens >= self.max_model_len
        ):
            return "length", None
        return None
