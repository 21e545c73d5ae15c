#!/usr/bin/env python3
"""Turns one guidellm JSON report into `inferline bench` summary form, and prints one line.

usage: guidellm_summary.py GUIDELLM_JSON OUT_JSON LABEL [--skip N]

The figures come from guidellm's own per-request records (its client-side timings of each
request), after leaving out the first N requests by start time (the warm-ups that
guidellm_check.sh sends first), and are summarised the way our client summarises its own
(src/inferline/bench/metrics.py: nearest-rank percentiles, output tokens / wall time), so the
rows sit beside ours in benchmarks/peers/summarize.py:

* ``ttft_s``: time to first token, {mean, p50, p90, p99} in seconds;
* ``tpot_s``: guidellm's inter-token latency, (request latency - TTFT) / (output tokens - 1),
  the same definition as our client's TPOT;
* ``guidellm_tpot_s``: guidellm's own "TPOT", request latency / output tokens (first token
  included), kept for reference;
* ``e2e_s``: request latency;
* ``output_tokens_per_s``: the counted requests' output tokens / (last end - first start
  among them);
* ``completed``, ``failed`` (errored or incomplete), ``wall_s``, ``mean_prompt_tokens``,
  ``mean_output_tokens`` (as the server reported them);
* ``all_requests``: every request sent, warm-ups included: count and output tokens / span;
* ``guidellm_metrics``: guidellm's own aggregate over its whole run (warm-ups included, as no
  guidellm warm-up phase is configured): TTFT/ITL p50 and output tok/s, for reference.

Standard library only (runs in any venv).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any


def distribution(values: list[float]) -> dict[str, float] | None:
    """mean, p50, p90, p99 (nearest rank) of ``values``, as our client computes them.

    A copy of `inferline.bench.metrics.distribution`: this script runs in guidellm's own
    venv, where inferline is not installed."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    return {"mean": statistics.fmean(ordered), "p50": rank(50), "p90": rank(90), "p99": rank(99)}


def _span(requests: list[dict[str, Any]]) -> float:
    """Seconds from the first request's start to the last one's end."""
    timings = [r["info"]["timings"] for r in requests]
    starts = [t["request_start"] for t in timings if t.get("request_start")]
    ends = [t["request_end"] for t in timings if t.get("request_end")]
    return max(ends) - min(starts) if starts and ends else 0.0


def _tokens(requests: list[dict[str, Any]]) -> int:
    return sum(r.get("output_tokens") or 0 for r in requests)


def convert(report: dict[str, Any], skip: int) -> dict[str, Any]:
    """The first benchmark of a guidellm report as an `inferline bench`-style summary."""
    bench = report["benchmarks"][0]
    ok_ids = {id(r) for r in bench["requests"]["successful"]}
    sent = sorted(
        (r for kind in ("successful", "errored", "incomplete") for r in bench["requests"][kind]),
        key=lambda r: r["info"]["timings"].get("request_start") or math.inf,
    )
    counted = sent[skip:]
    ok = [r for r in counted if id(r) in ok_ids]
    ms = 1e-3
    wall = _span(counted)
    every_ok = [r for r in sent if id(r) in ok_ids]
    m = bench["metrics"]

    def p50(name: str, scale: float = 1.0) -> float | None:
        succ = (m.get(name) or {}).get("successful") or {}
        return succ["percentiles"]["p50"] * scale if succ.get("count") else None

    return {
        "client": "guidellm",
        "warmup_requests_skipped": min(skip, len(sent)),
        "completed": len(ok),
        "failed": len(counted) - len(ok),
        "wall_s": wall,
        "ttft_s": distribution([r["time_to_first_token_ms"] * ms for r in ok]),
        "tpot_s": distribution(
            [r["inter_token_latency_ms"] * ms for r in ok if r.get("inter_token_latency_ms")]
        ),
        "guidellm_tpot_s": distribution(
            [r["time_per_output_token_ms"] * ms for r in ok if r.get("time_per_output_token_ms")]
        ),
        "e2e_s": distribution([r["request_latency"] for r in ok if r.get("request_latency")]),
        "output_tokens_per_s": _tokens(ok) / wall if wall else 0.0,
        "mean_prompt_tokens": statistics.fmean(r.get("prompt_tokens") or 0 for r in ok)
        if ok
        else 0.0,
        "mean_output_tokens": statistics.fmean(r.get("output_tokens") or 0 for r in ok)
        if ok
        else 0.0,
        "all_requests": {
            "sent": len(sent),
            "completed": len(every_ok),
            "wall_s": _span(sent),
            "output_tokens_per_s": _tokens(every_ok) / _span(sent) if _span(sent) else 0.0,
        },
        "guidellm_metrics": {
            "requests": m["request_totals"],
            "duration_s": bench["duration"],
            "ttft_p50_s": p50("time_to_first_token_ms", ms),
            "itl_p50_s": p50("inter_token_latency_ms", ms),
            "output_tokens_per_s": (
                m["output_token_count"]["successful"]["total_sum"] / bench["duration"]
                if bench["duration"]
                else 0.0
            ),
        },
    }


def line(label: str, s: dict[str, Any]) -> str:
    """One line: TTFT p50, TPOT (= ITL, our definition) p50, guidellm TPOT p50, output tok/s."""

    def ms(d: dict[str, float] | None) -> str:
        return "-" if not d else f"{d['p50'] * 1000:.1f} ms"

    every = s["all_requests"]
    return (
        f"{label}: {s['completed']} ok, {s['failed']} failed "
        f"(after {s['warmup_requests_skipped']} warm-up), prompt {s['mean_prompt_tokens']:.0f} / "
        f"output {s['mean_output_tokens']:.0f} tok; TTFT p50 {ms(s['ttft_s'])}, "
        f"ITL p50 {ms(s['tpot_s'])} (guidellm TPOT p50 {ms(s['guidellm_tpot_s'])}), "
        f"output {s['output_tokens_per_s']:.1f} tok/s over {s['wall_s']:.1f} s "
        f"(all {every['sent']} sent: {every['output_tokens_per_s']:.1f} tok/s "
        f"over {every['wall_s']:.1f} s)"
    )


def main() -> int:
    """Command-line entry point."""
    args = sys.argv[1:]
    skip = 0
    if len(args) == 5 and args[3] == "--skip":
        skip = int(args[4])
        args = args[:3]
    if len(args) != 3:
        sys.exit(__doc__)
    src, dst, label = args
    summary = convert(json.loads(Path(src).read_text()), skip)
    Path(dst).write_text(json.dumps(summary, indent=2))
    print(line(label, summary))
    return 0 if summary["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
