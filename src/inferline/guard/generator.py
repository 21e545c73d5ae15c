"""`GuardedGenerator`: a route's checks around its answers (a `Generator` wrapping the
response cache and the router).

Input checks run before the request is sent (no token is spent on a blocked or abstained
question). When the route has output or tool-call checks, the answer is held — a stream
too: its first token reaches the client after the checks, and the trace's time to first
token says so — and then it is sent as it was, or replaced by the route's abstain text, or
stored for review (the client gets the review text and a review id, never the draft), or
refused with a 400 naming the check. The first check that fires, in the route's order,
decides. The answer's tokens were generated and are charged whatever the decision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any

from inferline.core.decisions import CheckOutcome, Decision, DecisionKind
from inferline.core.errors import InvalidParameterError, StreamInterruptedError
from inferline.core.outputs import CompletionOutput, RequestMetrics, RequestOutput, RouteReport
from inferline.core.protocols import GenerationRequest, Generator
from inferline.core.wrapping import GeneratorWrapper
from inferline.guard.config import GuardCheck, GuardPolicy
from inferline.guard.desk import ReviewDesk
from inferline.guard.evaluate import Classify, call_dicts, input_outcomes, output_outcomes
from inferline.guard.parse import prompt_checks

Stream = AsyncGenerator[RequestOutput, None]


class GuardedGenerator(GeneratorWrapper):
    """Implements `inferline.core.Generator`; ``policies`` by route name."""

    def __init__(
        self,
        inner: Generator,
        policies: Mapping[str, GuardPolicy],
        *,
        classifiers: Mapping[str, Classify] | None = None,
        desk: ReviewDesk | None = None,
    ) -> None:
        super().__init__(inner)
        self.policies = dict(policies)
        self.classifiers = dict(classifiers or {})
        self.desk = desk
        self.check_desk(self.policies.values())
        self._prompt_checks: dict[str, tuple[GuardCheck, ...]] = {}  # by their JSON

    def check_desk(self, policies: Iterable[GuardPolicy]) -> None:
        """Raises if a review check has no store for its cases."""
        if self.desk is None and any(c.action == "review" for p in policies for c in p.checks):
            raise InvalidParameterError(
                "review checks need a store for the cases (serve with a database)", "checks"
            )

    def set_policies(
        self, policies: Mapping[str, GuardPolicy], classifiers: Mapping[str, Classify]
    ) -> None:
        """New checks (a reload)."""
        self.check_desk(policies.values())
        self.policies, self.classifiers = dict(policies), dict(classifiers)

    def policy_for(self, request: GenerationRequest) -> GuardPolicy | None:
        """The route's checks, with those of the request's stored prompt version."""
        policy = self.policies.get(request.model)
        if not request.checks:
            return policy
        key = json.dumps(request.checks, sort_keys=True)
        extra = self._prompt_checks.get(key)
        if extra is None:
            extra = self._prompt_checks[key] = prompt_checks(request.checks)
            self.check_desk([GuardPolicy(request.model, extra)])
        if policy is None:
            return GuardPolicy(request.model, extra)
        return dataclasses.replace(policy, checks=policy.checks + extra)

    async def submit(self, request: GenerationRequest) -> Stream:
        """The answer, as the route's checks decide (see the module docstring)."""
        policy = self.policy_for(request)
        if policy is None or not policy.checks:
            return await self.inner.submit(request)
        checks = await input_outcomes(policy.stage("input"), request, self.classifiers)
        fired = _first_fired(policy, checks)
        if fired is not None:
            check, outcome = fired
            decision = _decided(check, outcome, checks)
            if check.action == "block":
                raise _blocked(request, decision)
            return _single(_abstained(request, policy, decision))
        asked = request.params.logprobs
        stream = await self.inner.submit(_with_logprobs(request, policy))
        if not policy.holds_output:
            return _passed(stream, Decision("allow", checks=checks))
        return self._held(policy, request, stream, checks, asked)

    async def _held(
        self,
        policy: GuardPolicy,
        request: GenerationRequest,
        stream: Stream,
        checks: list[CheckOutcome],
        asked: int | None,
    ) -> Stream:
        held: list[RequestOutput] = []
        async with contextlib.aclosing(stream):
            async for output in stream:
                held.append(output)
        if not held or not held[-1].finished:
            return  # the wrapped stream's own error was raised above; nothing to judge
        final = held[-1]
        later = [c for c in policy.checks if c.on != "input"]
        for completion in final.outputs:
            checks += await output_outcomes(
                later, completion, request, self.classifiers, self._ask, final.route
            )
        fired = _first_fired(policy, checks)
        if fired is None:
            allowed = Decision("allow", checks=checks)
            _decide(final, allowed)
            for output in held:
                if output.route is not None:  # the first output's report names it too
                    output.route.decision = allowed
                yield _without_logprobs(output, asked)
            return
        check, outcome = fired
        decision = _decided(check, outcome, checks)
        if check.action == "block":
            raise _blocked(request, decision, final.route)
        if check.action == "review":
            assert self.desk is not None
            draft = _draft(final)
            trace_id = request.traceparent.split("-")[1] if request.traceparent else None
            decision.decision = "pending_review"
            decision.review_id = await self.desk.open(
                policy, check, outcome, request, draft, checks, trace_id
            )
            yield _replaced(final, policy.review_text, decision)
            return
        yield _replaced(final, policy.abstain_text, decision)

    async def _ask(self, request: GenerationRequest) -> RequestOutput:
        """A check's own request (a judge, more samples) to the wrapped generator: its
        final output."""
        last = None
        async with contextlib.aclosing(await self.inner.submit(request)) as stream:
            async for output in stream:
                last = output
        if last is None or not last.finished:
            raise StreamInterruptedError("a check's request ended before its answer")
        return last


def _first_fired(
    policy: GuardPolicy, outcomes: list[CheckOutcome]
) -> tuple[GuardCheck, CheckOutcome] | None:
    by_name = {c.name: c for c in policy.checks}
    for outcome in outcomes:
        if outcome.fired and outcome.action != "allow":
            return by_name[outcome.check], outcome
    return None


def _decided(check: GuardCheck, outcome: CheckOutcome, checks: list[CheckOutcome]) -> Decision:
    kind: DecisionKind = "block" if check.action == "block" else "abstain"
    reason = f"{check.kind}:{outcome.detail}" if outcome.detail else check.kind
    return Decision(kind, reason=reason, check=check.name, score=outcome.score, checks=checks)


def _blocked(
    request: GenerationRequest, decision: Decision, route: RouteReport | None = None
) -> InvalidParameterError:
    error = InvalidParameterError(
        f"the route's check {decision.check!r} refused this request ({decision.reason})",
        "messages",
        code="blocked_by_check",
    )
    report = route or RouteReport(request.model)
    report.decision = decision
    error.route_report = report  # type: ignore[attr-defined]
    return error


def _with_logprobs(request: GenerationRequest, policy: GuardPolicy) -> GenerationRequest:
    """The request as sent: with the token logprobs the logprob checks read."""
    needed, asked = policy.logprobs_needed, request.params.logprobs
    if needed is None or (asked is not None and asked >= needed):
        return request
    params = dataclasses.replace(request.params, logprobs=needed)
    return dataclasses.replace(request, params=params)


def _without_logprobs(output: RequestOutput, asked: int | None) -> RequestOutput:
    if asked is None:
        for completion in output.outputs:
            completion.logprobs = None  # asked for the checks only
    return output


async def _passed(stream: Stream, decision: Decision) -> Stream:
    async with contextlib.aclosing(stream):
        async for output in stream:
            if output.route is not None or output.finished:
                _decide(output, decision)
            yield output


def _decide(output: RequestOutput, decision: Decision) -> None:
    if output.route is None:
        output.route = RouteReport(output.model)
    output.route.decision = decision


def _draft(final: RequestOutput) -> dict[str, Any]:
    """The held answer, as a review case keeps it (first completion)."""
    completion = final.outputs[0]
    message: dict[str, Any] = {"role": "assistant", "content": completion.text or None}
    calls = call_dicts(completion)
    if calls:
        message["tool_calls"] = calls
    usage = {"prompt_tokens": final.num_prompt_tokens,
             "completion_tokens": final.num_generated_tokens}  # fmt: skip
    finish = "tool_calls" if calls else (completion.finish_reason or "stop")
    return {"message": message, "finish_reason": finish, "usage": usage, "model": final.model}


def _replaced(final: RequestOutput, text: str, decision: Decision) -> RequestOutput:
    """The final output with every completion's answer replaced by ``text`` (its tokens
    still counted: they were generated)."""
    decision.withheld = "\x1e".join(c.text for c in final.outputs)
    completions = [
        CompletionOutput(
            c.index,
            text=text,
            text_delta=text,
            num_tokens=c.num_tokens,
            num_tokens_delta=c.num_tokens,
            finish_reason="stop",
        )
        for c in final.outputs
    ]
    output = dataclasses.replace(final, outputs=completions, prompt_token_ids=[])
    _decide(output, decision)
    return output


def _abstained(
    request: GenerationRequest, policy: GuardPolicy, decision: Decision
) -> RequestOutput:
    """The answer to a question the input checks stopped: nothing was generated."""
    n = request.params.n
    completions = [CompletionOutput(i, text=policy.abstain_text,
                                    text_delta=policy.abstain_text, finish_reason="stop")
                   for i in range(n)]  # fmt: skip
    report = RouteReport(request.model, decision=decision)
    return RequestOutput(request.request_id, None, [], completions, True,
                         RequestMetrics(time.time()), num_prompt_tokens=0, model=request.model,
                         route=report)  # fmt: skip


async def _single(output: RequestOutput) -> Stream:
    yield output
