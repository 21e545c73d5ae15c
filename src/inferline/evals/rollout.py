"""Rollouts that decide by themselves: a candidate (a prompt version behind a label, or a
route in place of another) gets a share of live traffic, sticky per user, session or key;
online scorers score a sample of both arms' answers; the sequential test (`sequential`)
and the SLOs promote the candidate or roll it back, and every decision is an event with
its evidence.

A prompt rollout moves the label to the candidate when it starts and pins the rest of the
traffic to the baseline version; promoting ends the pinning, rolling back moves the label
back. A route rollout sends its share of the route's requests to the candidate route;
once decided, all of them go to the winner.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from inferline.evals.scorers import Scorer
from inferline.evals.sequential import Policy, decide, expected_samples
from inferline.evals.stats import percentile
from inferline.store.datasets import DatasetItem
from inferline.store.prompts import PromptStore
from inferline.store.rollouts import RolloutStore

ARMS = ("baseline", "candidate")


@dataclass(frozen=True)
class Slo:
    """Limits the candidate must keep (None: not checked): the share of failed requests,
    and the 95th percentile of its latency."""

    error_rate: float | None = None
    latency_p95_s: float | None = None


@dataclass(frozen=True)
class RolloutSpec:
    """One rollout as configured. ``baseline`` and ``candidate`` are version numbers of
    prompt ``subject`` (kind ``prompt``) or route names (kind ``route``, ``subject`` being
    the route clients name). ``scorers``: (scorer spec, share of answers scored)."""

    name: str
    kind: str
    subject: str
    baseline: str
    candidate: str
    share: float
    label: str = "production"
    sticky: str = "user"  # user | session | key | request
    scorers: tuple[tuple[str, float], ...] = ()
    slo: Slo = field(default_factory=Slo)
    policy: Policy = field(default_factory=Policy)

    def row(self) -> dict[str, Any]:
        """The store's row."""
        return {"name": self.name, "kind": self.kind, "subject": self.subject,
                "label": self.label if self.kind == "prompt" else None,
                "baseline": self.baseline, "candidate": self.candidate, "share": self.share,
                "config": {"sticky": self.sticky, "scorers": [list(s) for s in self.scorers],
                           "slo": vars(self.slo), "policy": vars(self.policy)}}  # fmt: skip


def in_candidate(spec: RolloutSpec, who: str | None) -> bool:
    """Whether a caller's requests go to the candidate: a hash of (rollout, caller) below
    the share, so one caller stays on one arm; a request with no caller draws by chance."""
    if who is None:
        return random.random() < spec.share
    digest = hashlib.sha256(f"{spec.name}\x00{who}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < spec.share


@dataclass
class Observation:
    """One finished request of one arm."""

    arm: str
    request_id: str
    status_code: int
    latency_s: float | None
    messages: list[dict[str, Any]]
    output: str | None


class RolloutController:
    """The state of one rollout: which arm a request takes, its answers scored and
    recorded, and the decision when the evidence is in."""

    def __init__(
        self,
        spec: RolloutSpec,
        store: RolloutStore,
        scorers: Sequence[tuple[Scorer, float]],
        prompts: PromptStore | None = None,
    ) -> None:
        self.spec, self.store, self.scorers, self.prompts = spec, store, list(scorers), prompts
        self.state = "running"

    def start(self) -> dict[str, Any]:
        """Creates the rollout (or finds it after a restart); moves the label to the
        candidate when it starts now."""
        spec = self.spec
        expected = expected_samples(spec.policy, 1.0)
        row, created = self.store.ensure(spec.row(), {"expected_samples": expected})
        self.state = row["state"]
        if created and spec.kind == "prompt" and self.prompts is not None:
            self.prompts.move_label(spec.subject, spec.label, int(spec.candidate))
        elif self.state == "rolled_back":
            self._repair_label(row)
        return row

    def _repair_label(self, row: dict[str, Any]) -> None:
        """A crash between a rollback and its label move: the label still names the
        candidate and nobody moved it since the decision: move it back now."""
        spec = self.spec
        if spec.kind != "prompt" or self.prompts is None:
            return
        if self.prompts.label_map(spec.subject).get(spec.label) != int(spec.candidate):
            return
        moves = [m for m in self.prompts.label_moves(spec.subject) if m["label"] == spec.label]
        if moves and moves[-1]["moved_at"] > (row["decided_at"] or 0.0):
            return  # a person moved it after the decision: theirs stands
        self._apply("rolled_back")
        self.store.event(spec.name, "label_repaired", "the label moved back after a restart",
                         {"label": spec.label, "version": int(spec.baseline)})  # fmt: skip

    def arm(self, who: str | None) -> str | None:
        """The arm of a request (None: the rollout does not touch it any more)."""
        if self.state == "running":
            return "candidate" if in_candidate(self.spec, who) else "baseline"
        if self.spec.kind == "route":
            return "candidate" if self.state == "promoted" else "baseline"
        return None  # a decided prompt rollout: the label says which version

    async def observe(self, seen: Observation) -> str | None:
        """Scores and records one answer of a running rollout; the decision it led to."""
        if self.state != "running":
            return None
        scores: dict[str, float | None] = {}
        passed: bool | None = None
        if seen.status_code < 400 and seen.output is not None:
            item = DatasetItem(seen.request_id, seen.messages or "(no messages)")
            verdicts = []
            for scorer, share in self.scorers:
                if share >= 1.0 or random.random() < share:
                    verdict = await scorer.score(item, seen.output)
                    scores[scorer.name] = verdict.value
                    verdicts.append(verdict.passed)
            passed = all(verdicts) if verdicts else None
        sample = {"arm": seen.arm, "request_id": seen.request_id, "status_code": seen.status_code,
                  "latency_s": seen.latency_s, "passed": passed, "scores": scores}  # fmt: skip
        # the store is synchronous: off the event loop, which streams tokens meanwhile
        return await asyncio.to_thread(self._record, sample)

    def _record(self, sample: dict[str, Any]) -> str | None:
        self.store.add_sample(self.spec.name, sample)
        return self.judge()

    def judge(self) -> str | None:
        """Decides when the SLOs are broken or the test has stopped."""
        counts = self.store.counts(self.spec.name)
        candidate, baseline = counts["candidate"], counts["baseline"]
        policy = self.spec.policy
        verdict = decide(policy, (candidate["passes"], candidate["fails"]),
                         (baseline["passes"], baseline["fails"]))  # fmt: skip
        breach = self._slo_breach(candidate)
        decision, reason = ("rolled_back", breach) if breach else (None, verdict.reason)
        if decision is None and verdict.decision is not None:
            decision = "promoted" if verdict.decision == "promote" else "rolled_back"
        if decision is None:
            return None
        evidence = {
            "arms": {arm: {k: v for k, v in counts[arm].items() if k != "latencies"}
                     | {"latency_p95_s": percentile(counts[arm]["latencies"], 95)}
                     for arm in ARMS},
            "llr": verdict.llr, "p0": verdict.p0, "p1": verdict.p1,
            "bounds": {"promote": policy.lower, "rollback": policy.upper},
            "expected_samples": expected_samples(policy, verdict.p0),
        }  # fmt: skip
        if not self.store.decide(self.spec.name, decision, reason, evidence):
            return None
        self.state = decision
        self._apply(decision)
        return decision

    def _slo_breach(self, candidate: dict[str, Any]) -> str | None:
        slo, n = self.spec.slo, candidate["n"]
        if n < self.spec.policy.min_samples:
            return None
        if slo.error_rate is not None and candidate["errors"] / n > slo.error_rate:
            return f"SLO: error rate {candidate['errors'] / n:.3f} > {slo.error_rate}"
        p95 = percentile(candidate["latencies"], 95)
        if slo.latency_p95_s is not None and p95 is not None and p95 > slo.latency_p95_s:
            return f"SLO: latency p95 {p95:.3f} s > {slo.latency_p95_s} s"
        return None

    def _apply(self, decision: str) -> None:
        """A rolled-back prompt: its label moves back to the baseline version."""
        if self.spec.kind == "prompt" and decision == "rolled_back" and self.prompts is not None:
            self.prompts.move_label(self.spec.subject, self.spec.label, int(self.spec.baseline))
