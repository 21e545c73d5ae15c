"""One attempt of a routed request: its outcome, the task that pumps a target's outputs
into the request's queue, and the record of how it went."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from inferline.core.errors import ContextLengthExceededError, LimitExceededError
from inferline.core.outputs import Attempt, RequestOutput, RouteReport
from inferline.core.protocols import GenerationRequest
from inferline.router.failures import counts_as_failure, error_type
from inferline.router.target import Target

END, DEADLINE, ABORT = object(), object(), object()  # queue markers besides outputs, errors


@dataclasses.dataclass
class Outcome:
    """How an attempt ended: finished (its final output sent or buffered), an error, or
    stopped because the key's budget could not pay for more (``out_of_budget``)."""

    finished: bool = False
    error: BaseException | None = None
    rejected_by: str | None = None  # a cascade check the answer failed
    out_of_budget: bool = False


async def pump(target: Target, request: GenerationRequest, queue: asyncio.Queue[Any]) -> None:
    """Copies one attempt's outputs (or its error) into ``queue``; cancelled to stop it,
    which closes the target's stream (a local engine aborts the request at once)."""
    stream = None
    try:
        stream = await target.generator.submit(request)
        async for output in stream:
            queue.put_nowait(output)
        queue.put_nowait(END)
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 - handed to the request, which decides
        queue.put_nowait(error)
    finally:
        if stream is not None:
            await stream.aclose()


def record_attempt(
    target: Target, attempt: Attempt, outcome: Outcome, duration_s: float, aborted: bool
) -> None:
    """Closes ``attempt``'s record (duration, cost, status) and tells the target's breaker
    and window: an answer is a success (a cascade's rejected answer too: the target
    worked), a client that left is no verdict, an error counts if it is the target's."""
    attempt.duration_s = duration_s
    attempt.cost_usd = target.config.price.cost_usd(
        attempt.num_prompt_tokens,
        attempt.num_output_tokens,
        attempt.num_cached_tokens,
        attempt.engine_s,
    )
    target.note_engine_time(attempt.engine_s, attempt.num_output_tokens)
    error = outcome.error
    if outcome.rejected_by is not None:
        attempt.error_type = f"check_failed:{outcome.rejected_by}"
    if outcome.out_of_budget:
        attempt.error_type = "budget_exhausted"  # stopped by us: the target did its part
    if outcome.finished or outcome.rejected_by is not None or outcome.out_of_budget:
        target.breaker.record_success()
        target.window.record(True, attempt.first_token_s, duration_s)
        return
    if error is None or aborted:
        attempt.status = "aborted"
        target.breaker.release_probe()
        return
    attempt.status = "error"
    attempt.error_type = error_type(error)
    attempt.error = str(error)[:500]
    if counts_as_failure(error):
        target.breaker.record_failure()
        target.window.record(False, None, None)
    else:
        target.breaker.release_probe()


def note_output(attempt: Attempt, output: RequestOutput, elapsed_s: float) -> None:
    """What an output says about its attempt: first token time, token counts, engine time."""
    if attempt.first_token_s is None and any(c.num_tokens_delta for c in output.outputs):
        attempt.first_token_s = elapsed_s
    attempt.num_prompt_tokens = output.num_prompt_tokens
    attempt.num_output_tokens = output.num_generated_tokens
    attempt.num_cached_tokens = output.metrics.num_cached_prompt_tokens
    attempt.engine_s = output.metrics.engine_s


def end_for_budget(last: RequestOutput | None, report: RouteReport) -> RequestOutput:
    """The end of an answer the key's budget could not pay for: what was sent so far,
    finished with ``length`` (as a ``max_tokens`` cut would be), or a 429 if nothing was
    sent."""
    report.stopped_by = "budget"
    if last is None:
        raise LimitExceededError(
            "this key's budget cannot pay for this request", code="insufficient_quota"
        )
    completions = [
        dataclasses.replace(
            c,
            text_delta="",
            token_ids_delta=[],
            num_tokens_delta=0,
            tool_call_deltas=[],
            finish_reason=c.finish_reason or "length",
        )
        for c in last.outputs
    ]
    return dataclasses.replace(last, outputs=completions, finished=True)


def fallback_reason(outcome: Outcome) -> str:
    """What made the request leave a target (the ``x-inferline-fallback-reason``)."""
    if outcome.rejected_by is not None:
        return f"cascade:{outcome.rejected_by}"
    if isinstance(outcome.error, ContextLengthExceededError):
        return "context_window"
    return error_type(outcome.error) if outcome.error is not None else "error"


def skipped(number: int, target: Target, reason: str) -> Attempt:
    """The record of a target not tried (its breaker, its load, the time left)."""
    attempt = Attempt(number, target.name, "skipped", time.time(), status="skipped")
    attempt.error_type = reason
    attempt.duration_s = 0.0
    return attempt
