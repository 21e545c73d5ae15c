"""Scheduler with a fake model runner: budgets, ordering, chunking, preemption, forks."""

from __future__ import annotations

import itertools

from inferline.core import Priority, SamplingParams
from inferline.engine import (
    BlockPool,
    ModelRunnerOutput,
    Request,
    RequestStatus,
    Scheduler,
    SchedulerConfig,
    SchedulerOutput,
)

BLOCK = 4
EOS = 0
_ids = itertools.count()


def make_scheduler(
    num_blocks: int = 32,
    budget: int = 16,
    max_seqs: int = 8,
    caching: bool = True,
    batch_token_share: float = 0.25,
) -> Scheduler:
    pool = BlockPool(num_blocks, BLOCK, enable_caching=caching)
    config = SchedulerConfig(
        max_num_batched_tokens=budget, max_num_seqs=max_seqs, batch_token_share=batch_token_share
    )
    return Scheduler(config, pool, max_model_len=256, eos_token_ids=[EOS])


def make_request(
    num_prompt: int,
    max_tokens: int = 8,
    priority: Priority = Priority.INTERACTIVE,
    first_token: int = 1,
    arrival_s: float | None = None,
) -> Request:
    i = next(_ids)
    return Request(
        request_id=f"r{i}",
        prompt_token_ids=list(range(first_token, first_token + num_prompt)),
        sampling_params=SamplingParams(max_tokens=max_tokens),
        max_tokens=max_tokens,
        priority=priority,
        arrival_s=float(i) if arrival_s is None else arrival_s,
    )


def fake_run(out: SchedulerOutput, token_id: int = 7) -> ModelRunnerOutput:
    """Samples ``token_id`` for every request whose chunk reached its end."""
    return ModelRunnerOutput(
        {s.request.request_id: [token_id] for s in out.scheduled if s.needs_sample}
    )


def step(scheduler: Scheduler, token_id: int = 7) -> SchedulerOutput:
    out = scheduler.schedule()
    scheduler.update(out, fake_run(out, token_id))
    return out


def test_prefill_then_decode_with_exact_blocks() -> None:
    s = make_scheduler()
    r = make_request(6)
    s.add_request(r)
    out = step(s)
    assert out.num_scheduled_tokens == {r.request_id: 6}
    assert r.block_ids == [0, 1] and r.num_computed_tokens == 6
    assert r.output_token_ids == [7]
    out = step(s)
    assert out.num_scheduled_tokens == {r.request_id: 1}
    assert r.block_ids == [0, 1]  # position 6 still fits block 1
    step(s)  # position 7
    step(s)  # position 8 needs a third block
    assert r.block_ids == [0, 1, 2]


def test_long_prompt_is_chunked_and_decodes_go_first() -> None:
    s = make_scheduler(budget=8)
    short = make_request(3)
    s.add_request(short)
    step(s)
    long = make_request(20)
    s.add_request(long)
    chunks = []
    while long.num_output_tokens == 0:
        out = step(s)
        assert out.scheduled[0].request is short  # the running stream is never stalled
        chunks.append(out.num_scheduled_tokens[long.request_id])
    assert chunks == [7, 7, 6]
    assert sum(chunks) == 20


def test_budget_and_max_num_seqs_limit_admission() -> None:
    s = make_scheduler(budget=10, max_seqs=2)
    reqs = [make_request(4) for _ in range(3)]
    for r in reqs:
        s.add_request(r)
    out = step(s)
    assert out.num_scheduled_tokens == {reqs[0].request_id: 4, reqs[1].request_id: 4}
    assert reqs[2].status == RequestStatus.WAITING


def test_max_tokens_and_eos_finish_and_free_blocks() -> None:
    s = make_scheduler()
    a, b = make_request(4, max_tokens=2), make_request(4, max_tokens=5)
    s.add_request(a)
    s.add_request(b)
    step(s)
    step(s)
    assert a.is_finished and a.finish_reason == "length" and a.block_ids == []
    step(s, token_id=EOS)
    assert b.is_finished and b.finish_reason == "stop"
    assert s.block_pool.num_free_blocks == s.block_pool.num_blocks
    assert not s.has_unfinished_requests()


def test_prefix_hit_skips_cached_blocks_and_shares_them() -> None:
    s = make_scheduler()
    first = make_request(10)
    s.add_request(first)
    step(s)
    second = make_request(10)  # same tokens 1..10
    s.add_request(second)
    out = step(s)
    assert out.num_scheduled_tokens[second.request_id] == 2  # 8 cached, 2 computed
    assert second.block_ids[:2] == first.block_ids[:2]
    assert s.block_pool.blocks[first.block_ids[0]].ref_count == 2
    assert second.num_cached_prompt_tokens == 8


def test_no_prefix_hit_when_caching_is_off() -> None:
    s = make_scheduler(caching=False)
    first, second = make_request(10), make_request(10)
    s.add_request(first)
    step(s)
    s.add_request(second)
    out = step(s)
    assert out.num_scheduled_tokens[second.request_id] == 10


def test_preemption_frees_the_newest_lowest_priority_request() -> None:
    s = make_scheduler(num_blocks=4, budget=32, batch_token_share=1.0)  # no yielding of tokens
    batch = make_request(7, max_tokens=20, priority=Priority.BATCH, first_token=100)
    live = make_request(7, max_tokens=20)
    s.add_request(batch)
    s.add_request(live)
    step(s)  # each holds 2 blocks (positions 0..7); the pool is full
    step(s)  # position 7 still fits
    assert s.block_pool.num_free_blocks == 0
    out = step(s)  # position 8 needs a new block for both: the batch request gives way
    assert out.preempted_ids == [batch.request_id]
    assert batch.status == RequestStatus.WAITING and batch.num_computed_tokens == 0
    assert batch.block_ids == [] and live.block_ids == [0, 1, 3]  # batch freed 3, 2
    assert live.num_output_tokens == 3
    while live.num_output_tokens < 5:
        step(s)
    assert batch.status == RequestStatus.WAITING  # still no room


def test_waiting_queue_orders_by_priority_then_arrival() -> None:
    s = make_scheduler(budget=4)
    late_batch = make_request(4, priority=Priority.BATCH, arrival_s=0.0)
    live = make_request(4, arrival_s=1.0)
    s.add_request(late_batch)
    s.add_request(live)
    out = step(s)
    assert list(out.num_scheduled_tokens) == [live.request_id]


def test_fork_shares_full_blocks_and_copies_the_last_one() -> None:
    s = make_scheduler()
    params = SamplingParams(n=2, max_tokens=4)
    parent = Request("p", list(range(1, 11)), params, 4, group_id="p", index=0)
    child = Request("p#1", list(range(1, 11)), params, 4, group_id="p", index=1, fork_parent=parent)
    s.add_request(parent)
    s.add_request(child)
    out = step(s)
    assert out.num_scheduled_tokens == {"p": 10}  # the sibling waits for the prompt
    out = step(s)
    assert out.num_scheduled_tokens == {"p": 1, "p#1": 1}
    assert child.block_ids[:2] == parent.block_ids[:2]
    assert child.block_ids[2] != parent.block_ids[2]
    assert out.block_copies == [(parent.block_ids[2], child.block_ids[2])]
    assert [s.block_pool.blocks[b].ref_count for b in parent.block_ids] == [2, 2, 1]
    assert child.num_cached_prompt_tokens == 9


def test_interactive_requests_take_the_seats_of_batch_requests() -> None:
    scheduler = make_scheduler(budget=64, max_seqs=2)
    for _ in range(2):
        scheduler.add_request(make_request(4, max_tokens=50, priority=Priority.BATCH))
    step(scheduler)
    assert len(scheduler.running) == 2
    live = make_request(4, max_tokens=4)
    scheduler.add_request(live)
    out = step(scheduler)
    assert live.status == RequestStatus.RUNNING
    assert [r.priority for r in scheduler.running].count(Priority.BATCH) == 1
    assert len(out.preempted_ids) == 1  # the newest batch request, which recomputes later
    for _ in range(10):
        step(scheduler)
    assert live.is_finished and len(scheduler.running) == 2


def test_batch_requests_hold_a_share_of_steps_with_interactive_work() -> None:
    scheduler = make_scheduler(num_blocks=128, budget=32, max_seqs=8)
    bulk = make_request(60, priority=Priority.BATCH)
    scheduler.add_request(bulk)
    assert step(scheduler).scheduled[0].num_tokens == 32  # alone: the whole budget
    live = make_request(40, max_tokens=2, first_token=500)
    scheduler.add_request(live)

    def tokens() -> dict[str, int]:
        return {s.request.request_id: s.num_tokens for s in step(scheduler).scheduled}

    assert tokens() == {live.request_id: 32}  # live prefill fills the step
    assert tokens() == {live.request_id: 8, bulk.request_id: 2}  # 2 / (8 + 2) <= 0.25
    assert tokens() == {live.request_id: 1, bulk.request_id: 1}  # the floor: 1 token a step
    assert tokens()[bulk.request_id] == 60 - 32 - 2 - 1  # live done: the rest of its prompt


def test_batch_prefill_is_chunked_small_so_live_arrivals_wait_little() -> None:
    pool = BlockPool(64, BLOCK, enable_caching=True)
    config = SchedulerConfig(max_num_batched_tokens=64, batch_prefill_tokens=16)
    scheduler = Scheduler(config, pool, max_model_len=256, eos_token_ids=[EOS])
    first, second = (make_request(40, priority=Priority.BATCH, first_token=t) for t in (1, 300))
    scheduler.add_request(first)
    scheduler.add_request(second)
    out = step(scheduler)
    assert [s.num_tokens for s in out.scheduled] == [16]  # not 64: one step stays short
    assert sum(s.num_tokens for s in step(scheduler).scheduled) == 16


def test_batch_admission_leaves_kv_headroom_for_live_requests() -> None:
    pool = BlockPool(16, BLOCK, enable_caching=True)
    config = SchedulerConfig(max_num_batched_tokens=64, batch_kv_reserve=0.25)
    scheduler = Scheduler(config, pool, max_model_len=256, eos_token_ids=[EOS])
    bulk = make_request(52, priority=Priority.BATCH)  # 13 blocks: into the 4 reserved
    scheduler.add_request(bulk)
    assert step(scheduler).scheduled == []
    live = make_request(52, first_token=300)
    scheduler.add_request(live)
    assert [s.request for s in step(scheduler).scheduled] == [live]


def test_resident_blocks_follow_the_peak_of_concurrent_use() -> None:
    # 4 at a time, 12 requests of 3 blocks each (8-token prompts, 4 new tokens): the pool
    # reuses freed blocks before touching new ones, so only the peak's blocks become resident
    s = make_scheduler(num_blocks=64, budget=64, max_seqs=4)
    pending = [make_request(8, max_tokens=4, first_token=10 * i + 1) for i in range(12)]
    running = []
    while pending or running:
        while pending and len(running) < 4:
            running.append(pending.pop())
            s.add_request(running[-1])
        step(s)
        running = [r for r in running if r.status != RequestStatus.FINISHED]
    assert s.block_pool.num_touched_blocks <= 4 * 3
