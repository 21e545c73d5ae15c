"""One request served by a route: attempts, retries, fallbacks, deadline, continuation.

`RoutedRequest.stream` is the request's output stream. Each attempt runs in a pump task
that copies the target's outputs into a queue; the request reads that queue, so a deadline
timer (or an abort) can end the wait at once by putting a marker in it, whatever the
target is doing, and the target's stream is closed (a local engine frees the KV blocks).

Before the first token reaches the client, any failure falls back invisibly (retries of
the same target for retryable errors, within its retry budget and the deadline, then the
next target). After it, a cut, stalled or failed stream is continued on the next target
that can continue an assistant message; where none can, the stream ends with an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from inferline.core.errors import (
    DeadlineExceededError,
    InvalidParameterError,
    StreamInterruptedError,
    UpstreamError,
)
from inferline.core.outputs import Attempt, RequestOutput, RouteReport
from inferline.core.protocols import GenerationRequest
from inferline.core.tool_calls import ToolCalling
from inferline.router.attempt import (
    ABORT,
    DEADLINE,
    END,
    Outcome,
    end_for_budget,
    fallback_reason,
    note_output,
    pump,
    record_attempt,
    skipped,
)
from inferline.router.checks import Scorer, question_of, run_checks
from inferline.router.config import RouteConfig
from inferline.router.failures import (
    deadline,
    describe,
    exhausted_error,
    is_clients_fault,
    is_retryable,
)
from inferline.router.progress import Progress
from inferline.router.target import Target

Clock = Callable[[], float]


class RoutedRequest:
    """The life of one request on one route (see the module docstring)."""

    def __init__(
        self,
        route: RouteConfig,
        plan: list[Target],
        request: GenerationRequest,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        scorers: Mapping[str, Scorer] | None = None,
    ) -> None:
        self.route, self.plan, self.request = route, plan, request
        self.scorers = scorers or {}
        self.clock = clock
        self.rng = rng or random.Random()
        self.report = RouteReport(route.name)
        self.progress = Progress()
        self.deadline = deadline(request.deadline, route.deadline_s, clock())
        self._queue: asyncio.Queue[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expired = asyncio.Event()
        self._aborted = False
        self._errors: list[Exception] = []  # of every attempt that failed
        self._charged: dict[int, float] = {}  # what each attempt was charged so far
        self._last_sent: RequestOutput | None = None

    # ---- the stream ------------------------------------------------------------------

    async def stream(self) -> AsyncGenerator[RequestOutput, None]:
        """The outputs the client sees; raises with ``route_report`` set on failure."""
        if self.deadline is not None:
            delay = max(0.0, self.deadline - self.clock())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)
        try:
            async with contextlib.aclosing(self._serve()) as outputs:
                async for output in outputs:
                    yield output
        except BaseException as error:
            if isinstance(error, Exception):
                error.route_report = self.report  # type: ignore[attr-defined]
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def abort(self) -> None:
        """Ends the request now (its stream ends with finish reason ``abort``)."""
        self._aborted = True
        if self._queue is not None:
            self._queue.put_nowait(ABORT)

    def _expire(self) -> None:
        self._expired.set()
        if self._queue is not None:
            self._queue.put_nowait(DEADLINE)

    async def _serve(self) -> AsyncGenerator[RequestOutput, None]:
        reason = "first"
        last_error: BaseException | None = None
        for target in self.plan:
            if self.progress.started and not self._can_continue_on(target):
                continue
            skip = self._skip_reason(target)
            if skip is not None:
                self.report.attempts.append(skipped(len(self.report.attempts) + 1, target, skip))
                last_error = last_error or UpstreamError(skip, target=target.name)
                continue
            tries = 0
            while True:
                tries += 1
                outcome = Outcome()
                async with contextlib.aclosing(self._attempt(target, reason, outcome)) as tried:
                    async for output in tried:
                        yield output
                if outcome.finished:
                    return
                if outcome.out_of_budget:
                    yield end_for_budget(self._last_sent, self.report)
                    return
                last_error = outcome.error
                if self.progress.started and not self.request.streaming:
                    self.progress = Progress()  # nobody saw it: answer again from the start
                delay = self._retry_delay(target, outcome, tries)
                if delay is None:
                    break
                await self._sleep(delay)
                reason = "continuation" if self.progress.started else "retry"
            reason = self._next_reason(outcome)
            if self.report.fallback_reason is None:
                self.report.fallback_reason = fallback_reason(outcome)
        raise self._exhausted(last_error)

    # ---- decisions -------------------------------------------------------------------

    def _skip_reason(self, target: Target) -> str | None:
        """Why ``target`` is not tried at all (its breaker, its load, the time left)."""
        if target.is_full():
            return "target_full"
        if self.deadline is not None:
            left = self.deadline - self.clock()
            typical = target.window.p50_ttft_s()
            if left <= 0 or (typical is not None and left < typical):
                return "no_time"
        if not target.breaker.allow():
            return "breaker_open"
        return None

    def _can_continue_on(self, target: Target) -> bool:
        """A stream the client has part of can go on only where a prefix can be continued,
        for one choice without structure that would restart (JSON, a call under way)."""
        if not target.config.can_continue or self.request.params.n != 1:
            return False
        structured = self.request.params.structured
        if structured is None:
            return True
        if structured.kind != "tool_calls" or self.progress.num_tool_calls:
            return False
        return not ToolCalling.from_spec(structured.spec).answer_schema  # free text so far

    def _retry_delay(self, target: Target, outcome: Outcome, tries: int) -> float | None:
        """Seconds to wait before retrying the same target, or None to move on.

        Raises the error when no target can help (the request itself is wrong)."""
        error = outcome.error
        if outcome.rejected_by is not None or error is None:
            return None
        if isinstance(error, DeadlineExceededError) or self._aborted:
            raise error
        if self.progress.started:  # a continuation is our request, not the client's
            if getattr(error, "retry_here", False) and tries < self.route.retry.attempts:
                return 0.0  # another replica of this target continues it
            return None  # the next target continues it
        if is_clients_fault(error):
            raise error
        if not is_retryable(error):
            return None
        if tries >= self.route.retry.attempts or not target.budget.try_retry():
            return None
        retry_after = getattr(error, "retry_after_s", None)
        if retry_after is not None:
            delay = float(retry_after)  # honoured exactly, or not at all
        else:
            cap = min(
                self.route.retry.max_backoff_ms, self.route.retry.backoff_ms * 2 ** (tries - 1)
            )
            delay = self.rng.uniform(0, cap) / 1000
        if self.deadline is not None and self.clock() + delay >= self.deadline:
            return None  # it would not fit: the next target at once
        return delay

    def _next_reason(self, outcome: Outcome) -> str:
        """Why the next attempt is made (recorded on it): a continuation of a stream the
        client has part of, or a fallback for the reason `fallback_reason` gives."""
        return "continuation" if self.progress.started else fallback_reason(outcome)

    async def _sleep(self, delay: float) -> None:
        """Waits ``delay`` seconds, or less if the deadline passes first."""
        try:
            await asyncio.wait_for(self._expired.wait(), delay)
        except TimeoutError:
            return
        raise DeadlineExceededError(self._deadline_message())

    def _exhausted(self, error: BaseException | None) -> Exception:
        """The error after every target was tried (or skipped)."""
        if self.progress.started:
            return StreamInterruptedError(
                "the answer could not be completed: the stream failed "
                f"({describe(error)}) and no other target could continue it",
                code="stream_incomplete",
            )
        return exhausted_error(
            self.route.name,
            self.report,
            self._errors,
            single_target=len(self.plan) == 1,
            retry_after_s=self._breaker_retry_after(),
        )

    def _breaker_retry_after(self) -> float | None:
        waits = [t.breaker.retry_after_s() for t in self.plan if t.breaker.state == "open"]
        return min(waits) if waits and len(waits) == len(self.plan) else None

    def _deadline_message(self) -> str:
        limit = self.route.deadline_s
        return (
            f"the request's deadline passed before an answer was complete "
            f"(route {self.route.name!r}, deadline {limit} s or the client's timeout)"
        )

    # ---- one attempt -----------------------------------------------------------------

    def _attempt_request(self, target: Target, attempt_number: int) -> GenerationRequest:
        request, params = self.request, self.request.params
        changes: dict[str, Any] = {
            "request_id": f"{request.request_id}-a{attempt_number}",
            "model": target.model_name,
        }
        if self.progress.started:
            changes["assistant_prefix"] = self.progress.continuation_prefix(
                request.assistant_prefix
            )
            if params.max_tokens is not None:
                left = max(1, params.max_tokens - self.progress.num_tokens)
                params = dataclasses.replace(params, max_tokens=left)
        needs_logprobs = any(c.needs_logprobs for c in self.route.checks)
        if self._is_cascade_stage(target) and params.logprobs is None and needs_logprobs:
            params = dataclasses.replace(params, logprobs=0)
        changes["params"] = params
        return dataclasses.replace(request, **changes)

    def _is_cascade_stage(self, target: Target) -> bool:
        """A stage whose answer is checked before the client sees it (not the last)."""
        return self.route.strategy == "cascade" and target is not self.plan[-1]

    async def _attempt(
        self, target: Target, reason: str, outcome: Outcome
    ) -> AsyncGenerator[RequestOutput, None]:
        attempt = Attempt(len(self.report.attempts) + 1, target.name, reason, time.time())
        self.report.attempts.append(attempt)
        request = self._attempt_request(target, attempt.number)
        buffered: list[RequestOutput] | None = [] if self._is_cascade_stage(target) else None
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queue = queue
        if reason != "retry":
            target.budget.record_request()
        target.in_flight += 1
        started = self.clock()
        pumping = asyncio.ensure_future(pump(target, request, queue))
        try:
            async with contextlib.aclosing(
                self._read(queue, attempt, target, outcome, started)
            ) as outputs:
                async for output in outputs:
                    if buffered is None:
                        yield self._forward(output, target)
                    else:
                        buffered.append(output)
            if outcome.finished and buffered is not None:
                for output in await self._accepted(buffered, target, outcome):
                    yield output
        finally:
            # the bookkeeping first: a consumer that was cancelled (a client that left, under
            # a cancel scope that cancels every await again) must not skip it
            pumping.cancel()
            target.in_flight -= 1
            self._record(target, attempt, outcome, started)
            await asyncio.gather(pumping, return_exceptions=True)

    async def _read(
        self,
        queue: asyncio.Queue[Any],
        attempt: Attempt,
        target: Target,
        outcome: Outcome,
        started: float,
    ) -> AsyncGenerator[RequestOutput, None]:
        """The attempt's outputs, each charged first, until its end (``outcome`` says how)."""
        last: RequestOutput | None = None
        while True:
            item = await queue.get()
            if item is END:
                break
            if item is DEADLINE or item is ABORT:
                outcome.error = self._stop_error(item)
                return
            if isinstance(item, BaseException):
                outcome.error = item
                return
            last = item
            counted = (
                attempt.num_prompt_tokens,
                attempt.num_output_tokens,
                attempt.num_cached_tokens,
                attempt.engine_s,
            )
            note_output(attempt, item, self.clock() - started)
            if not self._charge(attempt, target):  # not sent, not billed: the budget holds
                attempt.num_prompt_tokens, attempt.num_output_tokens = counted[:2]
                attempt.num_cached_tokens, attempt.engine_s = counted[2:]
                outcome.out_of_budget = True
                return
            yield item
        self._finish(last, outcome)

    def _stop_error(self, marker: object) -> Exception:
        if marker is ABORT:
            return InvalidParameterError("the request was aborted", "request_id")
        return DeadlineExceededError(self._deadline_message())

    def _charge(self, attempt: Attempt, target: Target) -> bool:
        """Charges what the attempt cost since its last output to the request's key; False
        when the budget cannot pay for it (the output is then not sent)."""
        guard = self.request.spend
        if guard is None:
            return True
        cost = target.config.price.cost_usd(
            attempt.num_prompt_tokens,
            attempt.num_output_tokens,
            attempt.num_cached_tokens,
            attempt.engine_s,
        )
        delta = cost - self._charged.get(attempt.number, 0.0)
        if delta <= 0:
            return True
        if not guard.charge(delta):
            return False
        self._charged[attempt.number] = cost
        return True

    def _forward(self, output: RequestOutput, target: Target) -> RequestOutput:
        if not self.report.target:
            self.report.target = target.name
        self.report.model = target.name
        if self.request.params.logprobs is None:
            for completion in output.outputs:
                completion.logprobs = None  # asked only for a cascade check
        self._last_sent = self.progress.rebase(output, self.report)
        return self._last_sent

    def _finish(self, last: RequestOutput | None, outcome: Outcome) -> None:
        """Decides whether the attempt's end is the answer's end."""
        if last is None or not last.finished:
            outcome.error = StreamInterruptedError(
                "the stream ended before its answer did", code="stream_cut"
            )
            return
        if any(c.finish_reason == "abort" for c in last.outputs):
            outcome.error = StreamInterruptedError("the target aborted the request")
            return
        outcome.finished = True

    async def _accepted(
        self, buffered: list[RequestOutput], target: Target, outcome: Outcome
    ) -> list[RequestOutput]:
        """A cascade stage's answer, if every check passes (else nothing, and the next
        stage answers)."""
        final = buffered[-1]
        for completion in final.outputs:
            result = await run_checks(
                self.route.checks,
                completion,
                self.request.params,
                question_of(self.request),
                self.scorers,
            )
            if not result.passed:
                outcome.finished = False
                outcome.rejected_by = result.failed
                return []
        return [self._forward(output, target) for output in buffered]

    def _record(self, target: Target, attempt: Attempt, outcome: Outcome, started: float) -> None:
        """Closes the attempt's record and tells the target's breaker and window."""
        if isinstance(outcome.error, Exception):
            self._errors.append(outcome.error)
        record_attempt(target, attempt, outcome, self.clock() - started, self._aborted)
