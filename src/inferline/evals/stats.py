"""The statistics of a report: bootstrap intervals, paired differences with a
sign-flip permutation test, percentiles. Seeded, so one result reads the same twice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 4000
PERMUTATIONS = 20000
_EXACT_UP_TO = 16  # pairs: every sign pattern (2**16) instead of random ones


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% percentile-bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int


def bootstrap_mean(values: Sequence[float], seed: int = 0) -> Interval:
    """The mean of ``values`` with a 95% bootstrap interval (the mean itself, twice, for
    fewer than two values)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(data.mean())
    if data.size < 2:
        return Interval(mean, mean, mean, int(data.size))
    rng = np.random.default_rng(seed)
    means = np.empty(BOOTSTRAP_SAMPLES)
    step = max(1, 4_000_000 // data.size)  # rows of resamples per pass: bounded memory
    for start in range(0, BOOTSTRAP_SAMPLES, step):
        rows = min(step, BOOTSTRAP_SAMPLES - start)
        means[start : start + rows] = data[rng.integers(0, data.size, (rows, data.size))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(mean, float(low), float(high), int(data.size))


@dataclass(frozen=True)
class PairedDifference:
    """``b - a`` over paired items: its mean with a bootstrap interval, and the two-sided
    p-value of a sign-flip permutation test (no difference: each pair's sign is a coin)."""

    diff: Interval
    p_value: float


def paired_difference(a: Sequence[float], b: Sequence[float], seed: int = 0) -> PairedDifference:
    """The paired difference of two equally long sequences."""
    if len(a) != len(b):
        raise ValueError("paired samples must have equal lengths")
    diffs = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    return PairedDifference(bootstrap_mean(diffs.tolist(), seed), sign_flip_p_value(diffs, seed))


def sign_flip_p_value(diffs: np.ndarray, seed: int = 0) -> float:
    """P(|mean of randomly signed diffs| >= |observed mean|): exact over every sign pattern
    up to 16 pairs, else over `PERMUTATIONS` random ones (with the observed one counted)."""
    nonzero = diffs[diffs != 0]
    if nonzero.size == 0:
        return 1.0
    observed = abs(nonzero.sum()) - 1e-12
    if nonzero.size <= _EXACT_UP_TO:
        patterns = (np.arange(2**nonzero.size)[:, None] >> np.arange(nonzero.size)) & 1
        sums = np.abs(((patterns * 2 - 1) * nonzero).sum(1))
        return float((sums >= observed).mean())
    rng = np.random.default_rng(seed)
    hits, done = 0, 0
    while done < PERMUTATIONS:
        rows = min(2000, PERMUTATIONS - done)
        signs = rng.integers(0, 2, (rows, nonzero.size)) * 2 - 1
        hits += int((np.abs((signs * nonzero).sum(1)) >= observed).sum())
        done += rows
    return (hits + 1) / (PERMUTATIONS + 1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear), None without values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else None
