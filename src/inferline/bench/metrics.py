"""Per-request timings and the summary a benchmark run reports."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestResult:
    """What one request measured (seconds on the client's monotonic clock)."""

    ok: bool
    start_s: float
    ttft_s: float | None = None
    e2e_s: float | None = None
    chunk_gaps_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first."""
        if self.ttft_s is None or self.e2e_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True)
class SLO:
    """A request is "good" when it meets both bounds."""

    ttft_s: float = 2.0
    tpot_s: float = 0.1

    def is_met(self, result: RequestResult) -> bool:
        """True for a successful request within both bounds."""
        tpot = result.tpot_s
        return bool(
            result.ok
            and result.ttft_s is not None
            and result.ttft_s <= self.ttft_s
            and (tpot is None or tpot <= self.tpot_s)
        )


def distribution(values: list[float]) -> dict[str, float] | None:
    """mean, p50, p90, p99 (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    return {"mean": statistics.fmean(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99)}


def summarize(results: list[RequestResult], wall_s: float, slo: SLO) -> dict[str, Any]:
    """The figures of one run: counts, latency distributions, throughput, goodput."""
    ok = [r for r in results if r.ok]
    output_tokens = sum(r.output_tokens for r in ok)
    total_tokens = output_tokens + sum(r.prompt_tokens for r in ok)
    return {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "wall_s": wall_s,
        "ttft_s": distribution([r.ttft_s for r in ok if r.ttft_s is not None]),
        "tpot_s": distribution([t for r in ok if (t := r.tpot_s) is not None]),
        "itl_s": distribution([g for r in ok for g in r.chunk_gaps_s]),
        "e2e_s": distribution([r.e2e_s for r in ok if r.e2e_s is not None]),
        "output_tokens_per_s": output_tokens / wall_s if wall_s else 0.0,
        "total_tokens_per_s": total_tokens / wall_s if wall_s else 0.0,
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "goodput_requests_per_s": sum(slo.is_met(r) for r in results) / wall_s if wall_s else 0.0,
        "slo": asdict(slo),
        "mean_prompt_tokens": statistics.fmean(r.prompt_tokens for r in ok) if ok else 0.0,
        "mean_output_tokens": statistics.fmean(r.output_tokens for r in ok) if ok else 0.0,
    }
