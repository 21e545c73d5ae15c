"""The rollout policy's test: Wald's sequential probability ratio test on the candidate's
pass rate, against the baseline's.

H0: the candidate passes as often as the baseline (p0 = the baseline's observed rate,
kept inside [0.02, 0.98]); H1: it passes ``delta`` less often (p1 = p0 - delta). Each
candidate answer adds its log-likelihood ratio; the test stops as soon as the sum crosses
ln((1 - beta) / alpha) (worse: roll back) or ln(beta / (1 - alpha)) (not worse: promote),
so a clear case stops early. Wald's average sample numbers under H0 and H1 are what the
policy says it will need; ``max_samples`` truncates the test (then the point estimate
decides against ``margin``). A decision needs ``min_samples`` candidate answers and as
many baseline ones, so one unlucky answer decides nothing.

The baseline's rate is treated as known; with most traffic on the baseline its error is
a fraction of the candidate's (documented as an approximation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_P_RANGE = (0.02, 0.98)


@dataclass(frozen=True)
class Policy:
    """When to decide: error rates ``alpha`` (promoting a worse candidate) and ``beta``
    (rolling back a good one), the drop ``delta`` the test is built to detect, the drop
    ``margin`` tolerated when a truncated test decides, and the sample bounds."""

    alpha: float = 0.05
    beta: float = 0.2
    delta: float = 0.1
    margin: float = 0.05
    min_samples: int = 10
    max_samples: int = 400

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 0.5 and 0 < self.beta < 0.5 and 0 < self.delta < 0.9):
            raise ValueError("alpha and beta in (0, 0.5), delta in (0, 0.9)")
        if not 1 <= self.min_samples <= self.max_samples:
            raise ValueError("1 <= min_samples <= max_samples")

    @property
    def upper(self) -> float:
        """The log-likelihood ratio at which the candidate is worse."""
        return math.log((1 - self.beta) / self.alpha)

    @property
    def lower(self) -> float:
        """The log-likelihood ratio at which the candidate is not worse."""
        return math.log(self.beta / (1 - self.alpha))


def hypotheses(policy: Policy, baseline_rate: float) -> tuple[float, float]:
    """(p0, p1) for a baseline pass rate."""
    p0 = min(_P_RANGE[1], max(_P_RANGE[0] + policy.delta, baseline_rate))
    return p0, p0 - policy.delta


def log_ratio(passes: int, fails: int, p0: float, p1: float) -> float:
    """The log-likelihood ratio of H1 to H0 after these answers."""
    return passes * math.log(p1 / p0) + fails * math.log((1 - p1) / (1 - p0))


def expected_samples(policy: Policy, baseline_rate: float) -> dict[str, int]:
    """Wald's average sample numbers: under H1 (a worse candidate: rolled back after about
    this many answers) and under H0 (an equal one: promoted after about this many), at
    least ``min_samples``, at most ``max_samples``."""
    p0, p1 = hypotheses(policy, baseline_rate)

    def drift(p: float) -> float:
        return p * math.log(p1 / p0) + (1 - p) * math.log((1 - p1) / (1 - p0))

    worse = ((1 - policy.beta) * policy.upper + policy.beta * policy.lower) / drift(p1)
    equal = (policy.alpha * policy.upper + (1 - policy.alpha) * policy.lower) / drift(p0)

    def bounded(n: float) -> int:
        return int(min(policy.max_samples, max(policy.min_samples, math.ceil(n))))

    return {"worse": bounded(worse), "equal": bounded(equal)}


@dataclass(frozen=True)
class Verdict:
    """``decision``: None (go on), ``promote`` or ``rollback``; the evidence."""

    decision: str | None
    reason: str
    llr: float
    p0: float
    p1: float


def decide(policy: Policy, candidate: tuple[int, int], baseline: tuple[int, int]) -> Verdict:
    """The verdict after (passes, fails) of each arm."""
    c_pass, c_fail = candidate
    b_pass, b_fail = baseline
    n_c, n_b = c_pass + c_fail, b_pass + b_fail
    baseline_rate = b_pass / n_b if n_b else 1.0
    p0, p1 = hypotheses(policy, baseline_rate)
    llr = log_ratio(c_pass, c_fail, p0, p1)
    if n_c < policy.min_samples or n_b < policy.min_samples:
        return Verdict(None, "collecting samples", llr, p0, p1)
    rate = c_pass / n_c
    if llr >= policy.upper:
        why = f"pass rate {rate:.3f} vs baseline {baseline_rate:.3f}: worse (SPRT, n={n_c})"
        return Verdict("rollback", why, llr, p0, p1)
    if llr <= policy.lower:
        why = f"pass rate {rate:.3f} vs baseline {baseline_rate:.3f}: not worse (SPRT, n={n_c})"
        return Verdict("promote", why, llr, p0, p1)
    if n_c >= policy.max_samples:
        worse = rate < baseline_rate - policy.margin
        why = (f"pass rate {rate:.3f} vs baseline {baseline_rate:.3f} after {n_c} samples "
               f"(margin {policy.margin})")  # fmt: skip
        return Verdict("rollback" if worse else "promote", why, llr, p0, p1)
    return Verdict(None, "undecided", llr, p0, p1)
