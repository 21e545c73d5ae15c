"""The checks around a route's answers, with a scripted inner generator and a real SQLite
review store: input checks stop a question before any token, output and tool-call checks
hold the answer, the first check that fires decides, reviews are durable and decided once."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from inferline.core import CompletionOutput, GenerationRequest, RequestMetrics, RequestOutput
from inferline.core.errors import InvalidParameterError
from inferline.core.outputs import Logprob, RouteReport, ToolCall
from inferline.core.sampling_params import SamplingParams
from inferline.guard import GuardCheck, GuardedGenerator, GuardPolicy, ReviewClosedError, ReviewDesk
from inferline.guard.evaluate import mean_entropy
from inferline.store import connect, migrate
from inferline.store.reviews import ReviewStore

pytestmark = pytest.mark.anyio


class Scripted:
    """Answers every request with ``text`` (and ``calls``), each token at ``logprob``."""

    def __init__(
        self, text: str = "Paris.", logprob: float = -0.1, calls: list[ToolCall] | None = None
    ) -> None:
        self.text, self.logprob, self.calls = text, logprob, calls or []
        self.requests: list[GenerationRequest] = []

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        self.requests.append(request)
        return self._stream(request)

    async def _stream(self, request: GenerationRequest) -> AsyncGenerator[RequestOutput, None]:
        words = self.text.split() or [""]
        for i, word in enumerate(words):
            last = i == len(words) - 1
            lps = None
            if request.params.logprobs is not None:
                lps = [Logprob(0, w, self.logprob) for w in words[: i + 1]]
            out = CompletionOutput(0, text=" ".join(words[: i + 1]), text_delta=word,
                                   num_tokens=i + 1, num_tokens_delta=1, logprobs=lps,
                                   finish_reason="stop" if last else None,
                                   tool_calls=self.calls if last else [])  # fmt: skip
            yield RequestOutput(request.request_id, None, [], [out], last,
                                RequestMetrics(time.time()), num_prompt_tokens=7,
                                route=RouteReport(request.model))  # fmt: skip


def ask(text: str, **more: Any) -> GenerationRequest:
    return GenerationRequest(
        "r1", messages=[{"role": "user", "content": text}], model="bot", **more
    )


async def collect(guarded: GuardedGenerator, request: GenerationRequest) -> list[RequestOutput]:
    return [o async for o in await guarded.submit(request)]


@pytest.fixture
def desk(tmp_path: Path) -> ReviewDesk:
    database = connect(f"sqlite:///{tmp_path / 'reviews.db'}")
    migrate(database)
    return ReviewDesk(ReviewStore(database))


def policy(*checks: GuardCheck) -> dict[str, GuardPolicy]:
    return {"bot": GuardPolicy("bot", checks, abstain_text="No answer.", review_text="Held.")}


async def test_an_input_pattern_abstains_before_any_token() -> None:
    inner = Scripted()
    check = GuardCheck("pii", "input", "pattern", "abstain", detectors=("credit_card",))
    guarded = GuardedGenerator(inner, policy(check))
    (out,) = await collect(guarded, ask("my card is 4111 1111 1111 1111, what is my limit?"))
    assert out.outputs[0].text == "No answer." and out.num_generated_tokens == 0
    assert inner.requests == []  # nothing was sent
    assert out.route is not None and out.route.decision is not None
    assert out.route.decision.as_dict() == {"decision": "abstain", "reason": "pattern:credit_card",
                                            "check": "pii", "score": None}  # fmt: skip
    allowed = await collect(guarded, ask("order 4111 1111 1111 1112 shipped?"))  # not Luhn-valid
    assert allowed[-1].outputs[0].text == "Paris." and len(inner.requests) == 1


async def test_block_is_a_400_naming_the_check_with_the_decision_on_its_report() -> None:
    check = GuardCheck("too-long", "input", "length", "block", max_chars=20)
    guarded = GuardedGenerator(Scripted(), policy(check))
    with pytest.raises(InvalidParameterError, match="too-long") as caught:
        await guarded.submit(ask("x" * 21))
    assert caught.value.code == "blocked_by_check"
    assert caught.value.route_report.decision.score == 21.0  # type: ignore[attr-defined]
    assert len(await collect(guarded, ask("x" * 20))) == 1


async def test_a_classifier_scores_the_last_user_message() -> None:
    seen: list[str] = []

    async def risky(text: str) -> float:
        seen.append(text)
        return 0.9 if "delete" in text else 0.1

    check = GuardCheck(
        "risk", "input", "classifier", "abstain", model="m", label="risky", above=0.8
    )
    guarded = GuardedGenerator(Scripted(), policy(check), classifiers={"risk": risky})
    (out,) = await collect(guarded, ask("please delete all the rows"))
    assert out.route.decision.score == 0.9 and out.route.decision.check == "risk"  # type: ignore[union-attr]
    outs = await collect(guarded, ask("what is the capital of France?"))
    assert outs[-1].route.decision.decision == "allow" and seen[-1].startswith("what")  # type: ignore[union-attr]


async def test_missing_context_reads_the_prompt_variables() -> None:
    check = GuardCheck("ctx", "input", "missing_context", "abstain", variables=("context",))
    guarded = GuardedGenerator(Scripted(), policy(check))
    for variables in (None, {"context": ""}, {"context": "  "}, {"other": "x"}):
        (out,) = await collect(guarded, ask("q", variables=variables))
        assert out.route.decision.decision == "abstain", variables  # type: ignore[union-attr]
    outs = await collect(guarded, ask("q", variables={"context": "the manual, page 3"}))
    assert outs[-1].route.decision.decision == "allow"  # type: ignore[union-attr]


async def test_low_confidence_abstains_and_logprobs_asked_only_for_the_check_are_removed() -> None:
    check = GuardCheck("unsure", "output", "logprob", "abstain", min_mean=-1.0)
    sure, unsure = Scripted("It is Paris.", -0.2), Scripted("Maybe Lyon?", -2.5)
    outs = await collect(GuardedGenerator(sure, policy(check)), ask("capital?"))
    assert sure.requests[0].params.logprobs == 0  # asked for the check
    assert [o.outputs[0].text_delta for o in outs] == ["It", "is", "Paris."]  # held, then sent
    assert all(o.outputs[0].logprobs is None for o in outs)  # the client did not ask
    (out,) = await collect(GuardedGenerator(unsure, policy(check)), ask("capital?"))
    decision = out.route.decision  # type: ignore[union-attr]
    assert (decision.decision, decision.reason, decision.score) == ("abstain", "logprob:mean", -2.5)
    assert out.outputs[0].text == "No answer." and out.outputs[0].num_tokens == 2  # still counted
    kept = await collect(GuardedGenerator(Scripted("Paris.", -0.2), policy(check)),
                         ask("capital?", params=SamplingParams(logprobs=0)))  # fmt: skip
    assert kept[-1].outputs[0].logprobs is not None  # the client asked: kept


def test_entropy_of_the_returned_alternatives() -> None:
    even = Logprob(1, "a", math.log(0.5), ((1, "a", math.log(0.5)), (2, "b", math.log(0.5))))
    sure = Logprob(1, "a", 0.0, ((1, "a", 0.0),))
    assert mean_entropy([even, sure]) == pytest.approx(math.log(2) / 2)
    assert mean_entropy([Logprob(1, "a", 0.0)]) is None


async def test_the_first_check_that_fires_in_route_order_decides() -> None:
    checks = (GuardCheck("json", "output", "json_schema", "block"),
              GuardCheck("unsure", "output", "logprob", "abstain", min_mean=-1.0))  # fmt: skip
    guarded = GuardedGenerator(Scripted("not json", -3.0), policy(*checks))
    with pytest.raises(InvalidParameterError, match="'json'"):
        await collect(guarded, ask("give JSON"))
    outs = await collect(GuardedGenerator(Scripted('{"a": 1}', -0.1), policy(*checks)), ask("x"))
    decision = outs[-1].route.decision  # type: ignore[union-attr]
    assert decision.decision == "allow" and [c.fired for c in decision.checks] == [False, False]


async def test_a_risky_tool_call_goes_to_review_and_is_decided_once(desk: ReviewDesk) -> None:
    call = ToolCall("call_1", "refund", '{"order": 42, "amount": 30}')
    check = GuardCheck("refunds", "tool_call", "tool", "review", tools=("refund",), deadline_s=60)
    guarded = GuardedGenerator(Scripted("", calls=[call]), policy(check), desk=desk)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    (out,) = await collect(guarded, ask("refund order 42", traceparent=traceparent))
    decision = out.route.decision  # type: ignore[union-attr]
    assert decision.decision == "pending_review" and decision.review_id
    assert out.outputs[0].tool_calls == [] and out.outputs[0].text == "Held."  # no call leaks
    case = desk.get(decision.review_id)
    assert case["status"] == "pending" and case["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert case["draft"]["message"]["tool_calls"][0]["function"]["name"] == "refund"
    assert 59 < case["deadline_at"] - case["created_at"] <= 60
    approved = desk.decide(decision.review_id, "approve", reviewer="rk1", comment="ok")
    assert approved["result"]["message"] == case["draft"]["message"]
    assert approved["result"]["finish_reason"] == "tool_calls" and approved["webhook_due"]
    with pytest.raises(ReviewClosedError):
        desk.decide(decision.review_id, "reject", reviewer="rk2")
    other = GuardedGenerator(
        Scripted("", calls=[ToolCall("c2", "lookup", "{}")]), policy(check), desk=desk
    )
    outs = await collect(other, ask("look it up"))
    assert outs[-1].outputs[0].tool_calls[0].name == "lookup"  # not a risky tool: allowed


async def test_rejected_edited_and_expired_cases(desk: ReviewDesk) -> None:
    check = GuardCheck("all", "output", "pattern", "review", pattern="refund", deadline_s=5)
    guarded = GuardedGenerator(Scripted("We will refund you."), policy(check), desk=desk)
    ids = []
    for _ in range(3):
        (out,) = await collect(guarded, ask("money back?"))
        ids.append(out.route.decision.review_id)  # type: ignore[union-attr]
    rejected = desk.decide(ids[0], "reject", reviewer="rk", comment="policy says no")
    assert rejected["status"] == "rejected"
    assert rejected["result"]["message"]["content"] == "No answer."
    edited = desk.decide(ids[1], "edit", reviewer="rk", answer="A refund needs a receipt.")
    assert edited["result"]["message"]["content"] == "A refund needs a receipt."
    with pytest.raises(InvalidParameterError):
        desk.decide(ids[1], "edit", reviewer="rk")  # an edit needs its answer
    assert desk.expire_overdue() == []
    desk.clock = lambda: time.time() + 6
    with pytest.raises(ReviewClosedError):  # past its deadline: no verdict changes it now
        desk.decide(ids[2], "approve", reviewer="rk")
    (expired,) = desk.store.find(status="expired")
    assert expired["id"] == ids[2] and expired["status"] == "expired"
    assert expired["result"]["reason"] == "review_expired"
    assert expired["result"]["decision"] == "abstain"


def test_a_review_check_needs_a_desk_and_escalate_belongs_to_the_router() -> None:
    check = GuardCheck("r", "tool_call", "tool", "review")
    with pytest.raises(InvalidParameterError, match="store"):
        GuardedGenerator(Scripted(), policy(check))
    with pytest.raises(InvalidParameterError, match="cascade"):
        GuardCheck("e", "output", "logprob", "escalate", min_mean=-1)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterError, match="detectors"):
        GuardCheck("p", "input", "pattern", "block", detectors=("passport",))


async def test_a_cached_answer_is_checked_again_with_its_logprobs() -> None:
    from inferline.cache import CachedGenerator, CachePolicy

    inner = Scripted("It is Paris.", -0.2)
    cached = CachedGenerator(inner, {"bot": CachePolicy(mode="exact")})
    check = GuardCheck("unsure", "output", "logprob", "abstain", min_mean=-1.0)
    guarded = GuardedGenerator(cached, policy(check))
    greedy = SamplingParams(temperature=0.0)
    first = await collect(guarded, ask("capital?", params=greedy))
    again = await collect(guarded, ask("capital?", params=greedy))
    assert len(inner.requests) == 1  # the second came from the cache
    assert again[-1].route is not None and again[-1].route.cache == "hit"
    assert again[-1].route.decision.decision == "allow"  # type: ignore[union-attr]
    assert again[-1].outputs[0].text == first[-1].outputs[0].text == "It is Paris."
