"""Tests a reviewer accepts for a handful of seeds (issue 26, item 1).

The claims compare a metric between temperatures over 2-8 seeds, often on the same test
images. This module holds the tests, each returning a :class:`Test` (the effect, its p-value
and what it rests on); :mod:`experiments.claims` turns them into verdicts.

* :func:`welch`: seed-level means, Welch's t-test (unequal variances, Welch-Satterthwaite
  degrees of freedom). With 2-3 seeds the t distribution's tails are far heavier than the
  normal's: a difference of 2.8 standard errors is p = 0.005 under the normal, about 0.05
  with 3 degrees of freedom.
* :func:`borrowed_spread`: a cell of one seed against one of several (an interim sweep):
  Student's t with the larger cell's spread standing in for both.
* :func:`permutation`: the exact permutation test over seeds (every split of the pooled
  seed values): no distribution assumed. Its smallest attainable p is ``2 / C(n_a + n_b,
  n_a)`` two-sided: 0.1 for 3 seeds against 3, so three seeds alone can never reach 0.05.
* :func:`mcnemar`: paired per-example correctness on the same images (one seed): the exact
  binomial test on the discordant pairs.
* :func:`cluster_bootstrap`: paired per-example correctness over several seeds: a two-stage
  bootstrap (seeds resampled, then images within each seed), so that images reused across
  seeds are not counted as independent evidence.
* :func:`trend`: the slope of the metric against ``log T`` over every (seed, T) point, with
  its t-test: one test for "robustness rises with T", beside best-of-k with Holm.
* :func:`minimum_detectable_effect`: the effect a test of standard error ``se`` detects with
  probability ``power`` at level ``alpha`` (two-sided): ``(t_{1 - alpha/2} + t_power) se``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class Test:
    """A test's outcome: ``effect`` (difference of means, or slope), its standard error,
    the degrees of freedom behind the p-value (None: not a t-test), the two-sided ``p`` and
    the test's name."""

    name: str
    effect: float
    se: float
    p: float
    df: float | None = None

    def mde(self, alpha: float = ALPHA, power: float = POWER, comparisons: int = 1) -> float:
        """The minimum detectable effect of this test (see the module docstring), at level
        ``alpha / comparisons`` (Bonferroni's bound of Holm's first step)."""
        return minimum_detectable_effect(self.se, alpha / comparisons, power, self.df)


def welch(a: list[float], b: list[float]) -> Test:
    """Welch's t-test of ``mean(a) - mean(b)`` (two-sided). Fewer than two values in either
    group, or no spread in both: the test is undefined; p = 1 (no evidence), except that
    identical-within, different-between groups of 2+ values each give p = 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean()) if a.size and b.size else 0.0
    if a.size < 2 or b.size < 2:
        return Test("welch", diff, math.inf, 1.0)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Test("welch", diff, 0.0, 1.0 if diff == 0 else 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return Test("welch", diff, se, p, float(df))


def borrowed_spread(a: list[float], b: list[float], floor_se: float = 0.0) -> Test:
    """Student's t-test of ``mean(a) - mean(b)`` where one group has a single value and the
    other two or more with some spread: the larger group's sample variance stands in for both
    (equal variances assumed), ``se = s sqrt(1 / n_a + 1 / n_b)`` on ``n - 1`` degrees of
    freedom (``n`` the larger group's size), and never below ``floor_se``. A single seed says
    nothing of how seeds vary; without this, its cell would look as certain as its test
    images alone make it. Other shapes raise ValueError."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(a.size, b.size) != 1 or max(a.size, b.size) < 2:
        raise ValueError("borrowed_spread: expected one group of one value and one of 2+")
    group = a if a.size > 1 else b
    diff = float(a.mean() - b.mean())
    se = max(float(group.std(ddof=1)) * math.sqrt(1 / a.size + 1 / b.size), floor_se)
    df = float(group.size - 1)
    if se == 0:
        return Test("borrowed", diff, 0.0, 1.0 if diff == 0 else 0.0, df)
    return Test("borrowed", diff, se, float(2 * sps.t.sf(abs(diff) / se, df)), df)


def permutation(a: list[float], b: list[float]) -> Test:
    """The exact two-sided permutation test of ``mean(a) - mean(b)``: the share of all
    ``C(n_a + n_b, n_a)`` relabellings whose ``|difference|`` reaches the observed one
    (the observed labelling counted). ``se``: the spread of the permutation distribution."""
    a, b = list(map(float, a)), list(map(float, b))
    pooled = np.array(a + b)
    n, k = len(pooled), len(a)
    observed = float(np.mean(a) - np.mean(b))
    total = pooled.sum()
    diffs = []
    for idx in itertools.combinations(range(n), k):
        s = pooled[list(idx)].sum()
        diffs.append(s / k - (total - s) / (n - k))
    diffs = np.array(diffs)
    p = float(np.mean(np.abs(diffs) >= abs(observed) - 1e-12))
    return Test("permutation", observed, float(diffs.std()), p)


def mcnemar(a_correct: np.ndarray, b_correct: np.ndarray) -> Test:
    """McNemar's exact test on paired per-example correctness (same images): with ``n01``
    images right under ``b`` only and ``n10`` under ``a`` only, p is the two-sided binomial
    probability of a split at least as uneven as ``(n10, n01)`` at one half. ``effect``: the
    difference in accuracy."""
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    n10 = int(np.sum(a_correct & ~b_correct))
    n01 = int(np.sum(~a_correct & b_correct))
    n = n10 + n01
    effect = (n10 - n01) / a_correct.size
    if n == 0:
        return Test("mcnemar", effect, 0.0, 1.0)
    p = float(min(1.0, 2 * sps.binom.cdf(min(n10, n01), n, 0.5)))
    return Test("mcnemar", effect, math.sqrt(n) / a_correct.size, p)


def cluster_bootstrap(a_correct: np.ndarray, b_correct: np.ndarray, n_boot: int = 2000,
                      seed: int = 0) -> Test:
    """The paired difference in accuracy ``a - b`` over ``(seeds, images)`` correctness
    arrays (row ``s`` of both: seed ``s``'s runs on the same images), with a two-stage
    bootstrap: seeds resampled with replacement, then images within each drawn seed (the
    same images for ``a`` and ``b``: paired). p: the share of bootstrap differences, centred
    on the observed one, at least as far from 0 as the observed difference, counted as
    ``(k + 1) / (n_boot + 1)`` so that it is never 0 (the smallest is ``1 / (n_boot + 1)``)."""
    a_correct = np.asarray(a_correct, float)
    b_correct = np.asarray(b_correct, float)
    if a_correct.shape != b_correct.shape or a_correct.ndim != 2:
        raise ValueError("a_correct, b_correct: expected two (seeds, images) arrays alike")
    d = a_correct - b_correct
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    seeds, images = d.shape
    draws = np.empty(n_boot)
    for i in range(n_boot):
        rows = rng.integers(0, seeds, seeds)
        cols = rng.integers(0, images, (seeds, images))
        draws[i] = d[rows[:, None], cols].mean()
    k = int(np.sum(np.abs(draws - observed) >= abs(observed) - 1e-12))
    p = (k + 1) / (n_boot + 1)
    return Test("cluster_bootstrap", observed, float(draws.std(ddof=1)), p)


def trend(temps: list[float], values: list[list[float]]) -> Test:
    """Least-squares slope of the metric against ``log T`` over every (seed, T) point
    (``values[i]``: the seeds' values at ``temps[i]``), with its t-test (``n - 2`` degrees
    of freedom). Fewer than three points, or one temperature: p = 1."""
    xs = np.array([math.log(t) for t, vs in zip(temps, values, strict=True) for _ in vs])
    ys = np.array([v for vs in values for v in vs], float)
    if xs.size < 3 or np.ptp(xs) == 0:
        return Test("trend", 0.0, math.inf, 1.0)
    fit = sps.linregress(xs, ys)
    if not math.isfinite(fit.stderr) or fit.stderr == 0:
        return Test("trend", float(fit.slope), 0.0, 1.0 if fit.slope == 0 else 0.0,
                    float(xs.size - 2))
    return Test("trend", float(fit.slope), float(fit.stderr), float(fit.pvalue),
                float(xs.size - 2))


def minimum_detectable_effect(se: float, alpha: float = ALPHA, power: float = POWER,
                              df: float | None = None) -> float:
    """``(q_{1 - alpha / 2} + q_power) x se``: q the t quantiles at ``df`` degrees of freedom
    (the normal's when ``df`` is None)."""
    if not math.isfinite(se):
        return math.inf
    dist = sps.norm if df is None else sps.t(df)
    return float((dist.ppf(1 - alpha / 2) + dist.ppf(power)) * se)
