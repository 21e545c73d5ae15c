"""The cascade's threshold fitted on hand-made pairs: the curve's points and the choice."""

from __future__ import annotations

import pytest

from inferline.core.errors import InvalidParameterError
from inferline.evals.threshold import Pair, choose, curve, pairs_of

# confidence, small right?, large right?  (small costs 1, large 10)
CASES = [(-0.1, True, True), (-0.5, True, True), (-1.0, False, True), (-2.0, False, False)]


def _pairs() -> list[Pair]:
    return [Pair(f"i{n}", c, s, 1.0, big, 10.0) for n, (c, s, big) in enumerate(CASES)]


def test_the_curve_by_hand() -> None:
    points = {p["threshold"]: p for p in curve(_pairs())}
    keep_all = points[float("-inf")]
    assert (keep_all["escalated"], keep_all["error"], keep_all["cost_per_item"]) == (0, 0.5, 1.0)
    # t = -1.0: keeps -0.1, -0.5, -1.0 (one wrong), escalates -2.0 (large wrong too)
    assert (points[-1.0]["escalated"], points[-1.0]["error"]) == (0.25, 0.5)
    # t = -0.5: escalates -1.0 (large right) and -2.0: one error of four; cost (4 + 20) / 4
    assert (points[-0.5]["error"], points[-0.5]["cost_per_item"]) == (0.25, 6.0)
    all_large = points[float("inf")]
    assert (all_large["error"], all_large["cost_per_item"]) == (0.25, 11.0)
    assert choose(list(points.values()), max_error=0.25)["threshold"] == -0.5
    assert choose(list(points.values()), max_cost=3.5)["threshold"] == float("-inf")
    assert choose(list(points.values()), max_error=0.1) is None
    with pytest.raises(InvalidParameterError):
        choose(list(points.values()))


def test_pairs_need_logprobs() -> None:
    rows = [{"target": t, "repetition": 0, "item_key": "a", "confidence": None, "passed": True,
             "cost_usd": 0.0} for t in ("small", "large")]  # fmt: skip
    with pytest.raises(InvalidParameterError, match="logprobs=true"):
        pairs_of(rows, "small", "large")
    rows[0]["confidence"] = -0.3
    assert pairs_of(rows, "small", "large") == [Pair("a", -0.3, True, 0.0, True, 0.0)]
