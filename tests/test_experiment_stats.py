"""experiments/stats.py on synthetic data with known answers: the tests' type-I error near 5%
under the null, their power where an effect is planted, and exact values where they exist."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from experiments import claims, stats


def _rejections(test, draws, alpha=0.05):
    return float(np.mean([test(*d).p < alpha for d in draws]))


def test_welch_is_scipys_unequal_variance_t_test():
    a, b = [0.91, 0.93, 0.90], [0.86, 0.89, 0.84, 0.88]
    got = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert got.p == pytest.approx(ref.pvalue) and got.effect == pytest.approx(np.mean(a) - 0.8675)
    assert stats.welch([0.9], [0.8]).p == 1.0  # one seed: no spread, no evidence
    assert stats.welch([0.9, 0.9], [0.8, 0.8]).p == 0.0


def test_three_seeds_keep_welchs_type_one_error_near_5pct_where_the_normal_doubles_it():
    rng = np.random.default_rng(1)
    draws = [(rng.normal(0, 1, 3), rng.normal(0, 1, 3)) for _ in range(4000)]
    assert 0.035 <= _rejections(stats.welch, draws) <= 0.065

    def normal(a, b):  # the old rule: z = diff / se with the normal's tails
        t = stats.welch(a, b)
        return stats.Test("z", t.effect, t.se, math.erfc(abs(t.effect / t.se) / math.sqrt(2)))

    assert _rejections(normal, draws) > 0.10


def test_welch_has_the_power_of_the_t_test_where_an_effect_is_planted():
    """d = 1.5 standard deviations, 8 seeds each: the noncentral t gives the power (equal
    variances: Welch's degrees of freedom are about Student's 14)."""
    rng = np.random.default_rng(2)
    draws = [(rng.normal(1.5, 1, 8), rng.normal(0, 1, 8)) for _ in range(2000)]
    crit = sps.t(14).ppf(0.975)
    theory = sps.nct(14, 1.5 * math.sqrt(8 / 2)).sf(crit)
    assert _rejections(stats.welch, draws) == pytest.approx(theory, abs=0.04)


def test_the_exact_permutation_test_cannot_reach_5pct_with_three_seeds_against_three():
    t = stats.permutation([0.95, 0.96, 0.97], [0.90, 0.91, 0.92])
    assert t.p == pytest.approx(2 / math.comb(6, 3))  # the two extreme splits of 20
    assert stats.permutation([1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]).p == 1.0
    rng = np.random.default_rng(3)
    draws = [(rng.normal(0, 1, 4), rng.normal(0, 1, 4)) for _ in range(400)]
    assert _rejections(stats.permutation, draws) <= 0.07  # exact: at most alpha, up to noise
    planted = [(rng.normal(2.5, 1, 5), rng.normal(0, 1, 5)) for _ in range(200)]
    assert _rejections(stats.permutation, planted) > 0.8


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images():
    a = np.array([1] * 10 + [1] * 50 + [0] * 40, bool)
    b = np.array([0] * 10 + [1] * 50 + [0] * 40, bool)
    t = stats.mcnemar(a, b)
    assert t.p == pytest.approx(2 * 0.5 ** 10) and t.effect == pytest.approx(0.1)
    assert stats.mcnemar(b, b).p == 1.0
    rng = np.random.default_rng(4)
    draws = [(rng.random(300) < 0.7, rng.random(300) < 0.7) for _ in range(1000)]
    assert _rejections(stats.mcnemar, draws) <= 0.065


def test_the_cluster_bootstrap_counts_seeds_not_reused_images():
    """Null: two arms differ only by seed-level luck shared by all images of a seed. A test
    that pools 3 seeds x 300 images as 900 independent pairs rejects far too often; the
    two-stage bootstrap stays near 5%."""
    rng = np.random.default_rng(5)

    def null_arms():
        p_a = np.clip(0.7 + rng.normal(0, 0.05, (3, 1)), 0, 1)  # each seed's own accuracy
        p_b = np.clip(0.7 + rng.normal(0, 0.05, (3, 1)), 0, 1)
        u = rng.random((3, 300))
        return u < p_a, rng.random((3, 300)) < p_b

    draws = [null_arms() for _ in range(150)]
    boot = _rejections(lambda a, b: stats.cluster_bootstrap(a, b, n_boot=300, seed=1), draws)
    naive = _rejections(lambda a, b: stats.mcnemar(a.ravel(), b.ravel()), draws)
    assert boot <= 0.15 and naive > 2 * max(boot, 0.05)
    a = rng.random((3, 300)) < 0.9
    b = rng.random((3, 300)) < 0.6
    # no draw reaches 0: p is 1 / (n_boot + 1), never a printed "p 0"
    assert stats.cluster_bootstrap(a, b, n_boot=300).p == pytest.approx(1 / 301)
    with pytest.raises(ValueError, match=r"^a_correct, b_correct"):
        stats.cluster_bootstrap(a, b[:, :10])


def test_the_trend_test_finds_a_planted_slope_in_log_t_and_holds_its_level_without_one():
    temps = [0.5, 1, 2, 4, 8, 16]
    rng = np.random.default_rng(6)
    planted = stats.trend(temps, [list(0.2 + 0.03 * math.log(t) + rng.normal(0, 0.01, 3))
                                  for t in temps])
    assert planted.effect == pytest.approx(0.03, abs=0.005) and planted.p < 1e-6
    nulls = [(temps, [list(rng.normal(0.2, 0.02, 3)) for _ in temps]) for _ in range(2000)]
    assert 0.035 <= _rejections(stats.trend, nulls) <= 0.065
    assert stats.trend([1.0], [[0.2, 0.3]]).p == 1.0


def test_the_minimum_detectable_effect_follows_the_quantiles():
    assert stats.minimum_detectable_effect(1.0) == pytest.approx(1.95996 + 0.84162, rel=1e-4)
    assert stats.minimum_detectable_effect(0.01, df=2) == pytest.approx(
        0.01 * (sps.t(2).ppf(0.975) + sps.t(2).ppf(0.8)))
    t = stats.welch([0.91, 0.93, 0.90], [0.86, 0.89, 0.84])
    assert t.mde(comparisons=6) > t.mde() > abs(t.effect) * 0  # Holm's k widens it
    assert stats.minimum_detectable_effect(math.inf) == math.inf


def test_one_seed_borrows_the_spread_of_the_other_cell_instead_of_the_binomial_floor():
    # an interim sweep: T = 4 has one seed 1.5 points above three T = 1 seeds 0.7 apart
    base, one = claims.Cell(1.0, (0.692, 0.699, 0.706)), claims.Cell(4.0, (0.714,))
    t = stats.borrowed_spread([0.714], list(base.values))
    s = np.std(base.values, ddof=1) * math.sqrt(1 + 1 / 3)
    assert t.df == 2 and t.se == pytest.approx(s)
    assert t.p == pytest.approx(2 * sps.t.sf((0.714 - 0.699) / s, 2))
    v = claims.versus_t1([base, one], 10_000)
    assert v.test == "borrowed" and v.label == "not supported" and v.p > 0.1
    # the binomial floor alone (what the verdict used before) would have called it
    floor = claims.accuracy_se(one, base, 10_000)
    assert claims.two_sided_p(0.015, floor) < 0.05
    # never below the floor; other shapes are refused
    assert stats.borrowed_spread([0.5], [0.5, 0.5 + 1e-9], floor_se=0.01).se == 0.01
    with pytest.raises(ValueError, match="borrowed_spread"):
        stats.borrowed_spread([0.5, 0.6], [0.5, 0.6])
