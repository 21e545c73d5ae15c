"""What a route's checks decided about a request: each check's score and verdict, and the
one decision that reached the client (``allow``, ``abstain``, ``pending_review``...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CheckStage = Literal["input", "output", "tool_call"]
Action = Literal["allow", "escalate", "abstain", "review", "block"]
ACTIONS = ("allow", "escalate", "abstain", "review", "block")
DecisionKind = Literal["allow", "abstain", "pending_review", "block"]


@dataclass(frozen=True)
class CheckOutcome:
    """One check run on one request: ``fired`` when its condition held (its action applies).

    ``score`` is what the check measured (a probability, a mean logprob, a length...; None
    for a yes/no check); ``detail`` says what it saw (the pattern kind, the tool name).
    """

    check: str
    on: CheckStage
    kind: str
    action: Action
    fired: bool
    score: float | None = None
    detail: str | None = None
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON form kept in traces and review cases."""
        return {
            "check": self.check,
            "on": self.on,
            "kind": self.kind,
            "action": self.action,
            "fired": self.fired,
            "score": self.score,
            "detail": self.detail,
            "duration_s": round(self.duration_s, 6),
        }


@dataclass
class Decision:
    """The decision about a request that the client sees in the response's ``inferline``
    object and its ``x-inferline-decision`` header; ``check``/``score``/``reason`` name the
    check that decided it (none for ``allow``); ``checks`` are every check that ran;
    ``withheld`` is the answer replaced by an abstention or a review (for the trace)."""

    decision: DecisionKind
    reason: str | None = None
    check: str | None = None
    score: float | None = None
    review_id: str | None = None
    checks: list[CheckOutcome] = field(default_factory=list)
    withheld: str | None = None  # the answer the client did not get (abstain, review)

    def as_dict(self) -> dict[str, Any]:
        """The response's ``inferline`` object (every check is in the trace, not here)."""
        body: dict[str, Any] = {"decision": self.decision}
        if self.decision != "allow":
            body.update(reason=self.reason, check=self.check, score=self.score)
        if self.review_id is not None:
            body["review_id"] = self.review_id
        return body
