"""AsyncEngine on the real model: concurrency, abort, overload, and injected hangs/crashes."""

from __future__ import annotations

import asyncio
import threading
import time

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


def test_abort_ends_the_stream_with_an_abort_output(make_engine) -> None:  # type: ignore[no-untyped-def]
    """Before: the final output of an abort was dropped and the stream never ended."""

    async def main():  # type: ignore[no-untyped-def]
        engine = AsyncEngine(make_engine())
        await engine.start()
        stream = await engine.submit(request(0, SamplingParams(max_tokens=500, ignore_eos=True)))
        first = await stream.__anext__()
        await engine.abort(first.request_id)
        rest = [o async for o in stream]
        await engine.shutdown(1)
        return rest

    rest = run(main())
    assert rest and rest[-1].finished and rest[-1].outputs[0].finish_reason == "abort"


def test_a_submit_racing_the_engines_death_fails_instead_of_hanging(make_engine) -> None:  # type: ignore[no-untyped-def]
    """A request still being tokenized when the engine dies must not wait forever."""

    async def main():  # type: ignore[no-untyped-def]
        llm_engine = make_engine()
        engine = AsyncEngine(llm_engine)
        await engine.start()
        real = llm_engine.tokenizer.apply_chat_template
        started = threading.Event()

        def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
            started.set()
            time.sleep(0.3)
            return real(*args, **kwargs)

        llm_engine.tokenizer.apply_chat_template = slow
        messages = [{"role": "user", "content": "Hi"}]
        submit = asyncio.ensure_future(engine.submit(GenerationRequest("late", messages=messages)))
        await asyncio.to_thread(started.wait)
        engine._die("injected")  # the loop thread would do this on a crash
        with pytest.raises(EngineDeadError):
            stream = await submit
            await drain(stream)
        await engine.shutdown(0.1)

    run(main())


def test_prompts_are_rendered_off_the_event_loop(make_engine) -> None:  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        llm_engine = make_engine()
        engine = AsyncEngine(llm_engine)
        await engine.start()
        real, threads = llm_engine.tokenizer.apply_chat_template, []

        def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread())
            return real(*args, **kwargs)

        llm_engine.tokenizer.apply_chat_template = spy
        messages = [{"role": "user", "content": "Hi"}]
        params = SamplingParams(max_tokens=2)
        await drain(await engine.submit(GenerationRequest("a", messages=messages, params=params)))
        await engine.shutdown(1)
        return threads

    threads = run(main())
    assert threads and threading.main_thread() not in threads


def test_shutdown_ends_unfinished_streams_with_an_error(make_engine) -> None:  # type: ignore[no-untyped-def]
    """A request cut by shutdown must not look complete (no finish_reason 'abort' success)."""

    async def main():  # type: ignore[no-untyped-def]
        engine = AsyncEngine(make_engine())
        await engine.start()
        stream = await engine.submit(request(0, SamplingParams(max_tokens=500, ignore_eos=True)))
        await stream.__anext__()
        await engine.shutdown(0.05)
        with pytest.raises(EngineDeadError, match="shut down"):
            await drain(stream)

    run(main())


def test_continuing_an_assistant_prefix(make_engine) -> None:  # type: ignore[no-untyped-def]
    """The answer to a request with ``assistant_prefix`` continues that text."""

    async def main():  # type: ignore[no-untyped-def]
        engine = AsyncEngine(make_engine())
        await engine.start()
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        greedy = SamplingParams(max_tokens=12, temperature=0)
        whole = await drain(
            await engine.submit(GenerationRequest("w", messages=messages, params=greedy))
        )
        text = whole.outputs[0].text
        words = text.split(" ")
        prefix = " ".join(words[: len(words) // 2])  # cut at a word: no trailing space
        rest = await drain(
            await engine.submit(
                GenerationRequest("c", messages=messages, params=greedy, assistant_prefix=prefix)
            )
        )
        await engine.shutdown(1)
        return text, prefix, rest.outputs[0].text

    text, prefix, rest = run(main())
    # the same tokens as the first answer up to the cut, so greedy decoding goes on the same way
    assert prefix and rest and prefix + rest == text
