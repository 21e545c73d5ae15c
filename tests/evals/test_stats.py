"""The report's statistics against known distributions and hand-computed cases; judge
calibration figures by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inferline.evals.calibration import agreement_stats, best_threshold
from inferline.evals.stats import bootstrap_mean, paired_difference, percentile, sign_flip_p_value


def test_bootstrap_intervals_have_their_coverage_and_width() -> None:
    rng = np.random.default_rng(1)
    p, n, trials = 0.7, 200, 200
    covered, widths = 0, []
    for seed in range(trials):
        sample = (rng.random(n) < p).astype(float).tolist()
        interval = bootstrap_mean(sample, seed=seed)
        covered += interval.low <= p <= interval.high
        widths.append(interval.high - interval.low)
    # 95% intervals: coverage near 0.95 (binomial sd over 200 trials: 1.5 points)
    assert 0.90 <= covered / trials <= 0.99
    normal_width = 2 * 1.96 * math.sqrt(p * (1 - p) / n)
    assert np.mean(widths) == pytest.approx(normal_width, rel=0.08)
    one = bootstrap_mean([0.5])
    assert (one.mean, one.low, one.high, one.n) == (0.5, 0.5, 0.5, 1)
    assert bootstrap_mean([1.0, 0.0], seed=3) == bootstrap_mean([1.0, 0.0], seed=3)  # seeded


def test_the_sign_flip_test_by_hand() -> None:
    # 4 pairs all +1: of 16 sign patterns, |sum| >= 4 for 2 (all + or all -): p = 1/8
    assert sign_flip_p_value(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.125)
    # diffs (1, 1, -1): |sum| >= 1 for every pattern (sums are odd): p = 1
    assert sign_flip_p_value(np.array([1.0, 1.0, -1.0])) == pytest.approx(1.0)
    assert sign_flip_p_value(np.zeros(5)) == 1.0
    result = paired_difference([0, 0, 0, 0, 0, 1] * 10, [1, 1, 1, 1, 0, 1] * 10)
    assert result.diff.mean == pytest.approx(4 / 6) and result.p_value < 0.001
    assert result.diff.low > 0.5
    same = paired_difference([0.0, 1.0] * 30, [1.0, 0.0] * 30)
    assert same.diff.mean == 0 and same.p_value > 0.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 95) is None


def test_calibration_figures_by_hand() -> None:
    humans = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.2, None, 0.1, 0.3, 0.7, 0.4]
    stats = agreement_stats(scores, humans, 0.5)
    # judge good: 0.9 0.8 0.7 0.6 | 0.7  -> tp 4, fn 2 (0.2 and no score), fp 1, tn 3
    assert stats["confusion"] == {"tp": 4, "tn": 3, "fp": 1, "fn": 2}
    assert stats["agreement"] == pytest.approx(0.7)
    assert (stats["tpr"], stats["tnr"]) == (pytest.approx(4 / 6), pytest.approx(3 / 4))
    # chance = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5
    assert stats["kappa"] == pytest.approx(0.4)
    assert stats["baseline_agreement"] == pytest.approx(0.6)
    constant = agreement_stats([1.0] * 10, humans, 0.5)  # always "good"
    assert constant["agreement"] == pytest.approx(0.6) and constant["kappa"] == pytest.approx(0.0)
    best = best_threshold(scores, humans)
    assert best["kappa"] >= stats["kappa"] and best["threshold"] in {s for s in scores if s}
