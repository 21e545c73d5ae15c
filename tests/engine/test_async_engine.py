"""AsyncEngine on the real model: concurrency, abort, overload, and injected hangs/crashes."""

from __future__ import annotations

import asyncio

import pytest

from inferline.core import EngineDeadError, GenerationRequest, OverloadedError, SamplingParams
from inferline.engine import AsyncEngine, FrontendConfig
from tests.engine.fakes import SabotagedRunner

PARAMS = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


def request(i: int, params: SamplingParams = PARAMS) -> GenerationRequest:
    return GenerationRequest(f"r{i}", prompt=f"Request number {i} says", params=params)


async def drain(stream):  # type: ignore[no-untyped-def]
    outputs = [o async for o in stream]
    return outputs[-1]


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


def test_concurrent_streams_all_finish(make_engine) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        engine = AsyncEngine(make_engine())
        await engine.start()
        streams = [await engine.submit(request(i)) for i in range(8)]
        finals = await asyncio.gather(*(drain(s) for s in streams))
        await engine.shutdown(1)
        return finals

    finals = run(main())
    assert all(f.finished and len(f.outputs[0].token_ids) == 8 for f in finals)


def test_closing_a_stream_aborts_and_frees_blocks(make_engine) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        llm_engine = make_engine()
        engine = AsyncEngine(llm_engine)
        await engine.start()
        stream = await engine.submit(request(0, SamplingParams(max_tokens=200, ignore_eos=True)))
        await stream.__anext__()
        assert llm_engine.block_pool.num_used_blocks > 0
        await stream.aclose()
        for _ in range(100):
            if llm_engine.block_pool.num_used_blocks == 0:
                break
            await asyncio.sleep(0.05)
        used = llm_engine.block_pool.num_used_blocks
        await engine.shutdown(1)
        return used

    assert run(main()) == 0


def test_full_queue_refuses_with_overloaded(make_engine) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        engine = AsyncEngine(make_engine(), FrontendConfig(max_queued_requests=2))
        await engine.start()
        streams = [await engine.submit(request(i)) for i in range(2)]
        with pytest.raises(OverloadedError):
            await engine.submit(request(9))
        await asyncio.gather(*(drain(s) for s in streams))
        await engine.shutdown(1)

    run(main())


@pytest.mark.parametrize("mode", ["hang", "crash"])
def test_hang_or_crash_fails_health_and_every_waiting_request(make_engine, mode) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        llm_engine = make_engine()
        sabotage = SabotagedRunner(llm_engine.runner, mode)
        llm_engine.runner = sabotage
        engine = AsyncEngine(llm_engine, FrontendConfig(stall_timeout_s=1.0))
        await engine.start()
        assert engine.health().is_live
        streams = [
            await engine.submit(request(i, SamplingParams(max_tokens=50, ignore_eos=True)))
            for i in range(4)
        ]
        results = await asyncio.gather(*(drain(s) for s in streams), return_exceptions=True)
        health = engine.health()
        with pytest.raises(EngineDeadError):
            await engine.submit(request(99))
        sabotage.release.set()
        await engine.shutdown(0.1)
        return results, health

    results, health = run(main())
    assert all(isinstance(r, EngineDeadError) for r in results), results
    assert not health.is_live and not health.is_ready
    assert ("hung" in health.reason) if mode == "hang" else ("crashed" in health.reason)
