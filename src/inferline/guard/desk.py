"""The review desk: opens a case when a check sends an answer to review, and turns a
reviewer's verdict (or the deadline passing) into the answer the client gets.

A case keeps the request, the draft answer (content and tool calls, never sent to the
client), every check's score and the route's abstain text at the time, so its result
never depends on a config that changed since.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

from inferline.core.decisions import CheckOutcome
from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.core.protocols import GenerationRequest
from inferline.guard.config import GuardCheck, GuardPolicy
from inferline.store.reviews import ReviewStore

Verdict = Literal["approve", "edit", "reject"]
VERDICTS = ("approve", "edit", "reject")
_STATUS = {"approve": "approved", "edit": "edited", "reject": "rejected"}


class ReviewClosedError(Exception):
    """The case was decided already (by another reviewer, or it expired)."""

    def __init__(self, case: dict[str, Any]) -> None:
        super().__init__(f"review {case['id']} is {case['status']}, not pending")
        self.case = case


class ReviewDesk:
    """Review cases over a `ReviewStore` (blocking calls run in a worker thread)."""

    def __init__(self, store: ReviewStore, clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock

    async def open(
        self,
        policy: GuardPolicy,
        check: GuardCheck,
        outcome: CheckOutcome,
        request: GenerationRequest,
        draft: dict[str, Any],
        checks: list[CheckOutcome],
        trace_id: str | None,
    ) -> str:
        """Stores a pending case (durably, before the client hears of it); its id."""
        now = self.clock()
        case = {
            "id": f"rev_{secrets.token_hex(12)}",
            "request_id": request.request_id,
            "trace_id": trace_id,
            "route": policy.route,
            "key_id": request.key_id,
            "created_at": now,
            "deadline_at": now + check.deadline_s,
            "on_expiry": policy.on_review_expiry,
            "check_name": check.name,
            "score": outcome.score,
            "request": {
                "model": request.model,
                "messages": request.messages,
                "prompt": request.prompt,
                "tools": request.tools,
            },  # fmt: skip
            "draft": draft,
            "checks": [c.as_dict() for c in checks],
            "texts": {"abstain": policy.abstain_text},
        }
        await asyncio.to_thread(self.store.create, case)
        return str(case["id"])

    def get(self, review_id: str) -> dict[str, Any]:
        """One case (raises `NotFoundError`)."""
        case = self.store.get(review_id)
        if case is None:
            raise NotFoundError(f"no review {review_id!r}", "review_id")
        return case

    def decide(
        self,
        review_id: str,
        verdict: str,
        *,
        reviewer: str,
        answer: Any = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Applies a reviewer's verdict; raises `ReviewClosedError` for a decided case."""
        if verdict not in VERDICTS:
            raise InvalidParameterError(f"action must be one of {', '.join(VERDICTS)}", "action")
        if (verdict == "edit") != (answer is not None):
            raise InvalidParameterError("answer is given with edit, and only then", "answer")
        case = self.get(review_id)
        if case["status"] == "pending" and self.clock() >= case["deadline_at"]:
            self.expire_overdue()  # too late: the route's expiry action, not the verdict
            case = self.get(review_id)
        if case["status"] != "pending":
            raise ReviewClosedError(case)
        result = _result(case, verdict, answer)
        decided = self.store.decide(
            review_id, _STATUS[verdict], result, reviewer=reviewer, comment=comment,
            now=self.clock(),
        )  # fmt: skip
        if decided is None:
            raise ReviewClosedError(self.get(review_id))
        return decided

    def expire_overdue(self) -> list[dict[str, Any]]:
        """Gives every pending case past its deadline its route's expiry action."""
        expired = []
        for case in self.store.overdue(self.clock()):
            verdict = "approve" if case["on_expiry"] == "allow" else "reject"
            result = {**_result(case, verdict, None), "reason": "review_expired"}
            done = self.store.decide(case["id"], "expired", result, reviewer=None,
                                     now=self.clock())  # fmt: skip
            if done is not None:
                expired.append(done)
        return expired


def _result(case: dict[str, Any], verdict: str, answer: Any) -> dict[str, Any]:
    """The answer the client gets for a verdict: the draft, an edited answer, or the
    abstention."""
    draft = case["draft"]
    if verdict == "approve":
        return {"decision": "allow", "message": draft["message"],
                "finish_reason": draft["finish_reason"]}  # fmt: skip
    if verdict == "edit":
        message = _edited(answer)
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        return {"decision": "allow", "message": message, "finish_reason": finish}
    text = case["texts"]["abstain"]
    return {"decision": "abstain", "reason": "rejected_by_reviewer",
            "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}  # fmt: skip


def _edited(answer: Any) -> dict[str, Any]:
    if isinstance(answer, str):
        return {"role": "assistant", "content": answer}
    if not isinstance(answer, dict) or not set(answer) <= {"content", "tool_calls"}:
        raise InvalidParameterError(
            "answer is a string, or an object with content and/or tool_calls", "answer"
        )
    calls = answer.get("tool_calls")
    if calls is not None and not (isinstance(calls, list) and all(_is_call(c) for c in calls)):
        raise InvalidParameterError(
            "answer.tool_calls: each is {id, type: function, function: {name, arguments}}",
            "answer.tool_calls",
        )
    message: dict[str, Any] = {"role": "assistant", "content": answer.get("content")}
    if calls:
        message["tool_calls"] = calls
    return message


def _is_call(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return (
        isinstance(call.get("id"), str)
        and isinstance(function, dict)
        and isinstance(function.get("name"), str)
        and isinstance(function.get("arguments"), str)
    )
