"""audit.stats against brute-force and textbook computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from audit.stats import bootstrap_ci, holm_bonferroni, paired_permutation_test, permutation_test


def brute_force_p(x, y):
    pooled = np.concatenate([x, y])
    observed = x.mean() - y.mean()
    hits = total = 0
    for idx in itertools.combinations(range(pooled.size), x.size):
        mask = np.zeros(pooled.size, bool)
        mask[list(idx)] = True
        stat = pooled[mask].mean() - pooled[~mask].mean()
        hits += stat >= observed - 1e-12
        total += 1
    return hits / total, total


def test_exact_permutation_matches_enumeration():
    rng = np.random.default_rng(0)
    x, y = rng.normal(0.5, 1, 6), rng.normal(0, 1, 5)
    expected, total = brute_force_p(x, y)
    result = permutation_test(x, y, rng=np.random.default_rng(1), alternative="greater", n_resamples=10_000)
    assert result.exact and result.n_permutations == total == math.comb(11, 6)
    assert result.p_value == pytest.approx(expected, abs=1e-12)


def test_sampled_permutation_is_close_to_exact_and_seeded():
    rng = np.random.default_rng(2)
    x, y = rng.normal(0.3, 1, 9), rng.normal(0, 1, 9)
    expected, _ = brute_force_p(x, y)
    a = permutation_test(x, y, rng=np.random.default_rng(5), alternative="greater", n_resamples=20_000)
    b = permutation_test(x, y, rng=np.random.default_rng(5), alternative="greater", n_resamples=20_000)
    assert not a.exact and a.p_value == b.p_value
    assert a.p_value == pytest.approx(expected, abs=0.01)


def test_paired_sign_flip_exact():
    d = np.array([0.5, 1.2, -0.3, 0.8, 0.9])
    flips = np.array(list(itertools.product([1, -1], repeat=d.size)))
    null = (flips * d).mean(axis=1)
    expected = np.mean(np.abs(null) >= abs(d.mean()) - 1e-12)
    result = paired_permutation_test(d, np.zeros_like(d), rng=np.random.default_rng(0))
    assert result.exact and result.p_value == pytest.approx(expected)


def test_holm_matches_textbook_procedure():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    m = p.size
    order = np.argsort(p)
    expected = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        expected[i] = running
    adjusted, reject = holm_bonferroni(p, alpha=0.05)
    np.testing.assert_allclose(adjusted, expected)
    assert reject.tolist() == (expected <= 0.05).tolist()


def test_bootstrap_interval_covers_and_is_reproducible():
    data = np.random.default_rng(3).normal(2.0, 1.0, 200)
    a = bootstrap_ci(data, rng=np.random.default_rng(0))
    b = bootstrap_ci(data, rng=np.random.default_rng(0))
    assert a == b and a.low < data.mean() < a.high
    half_width = 1.96 * data.std(ddof=1) / math.sqrt(data.size)
    assert (a.high - a.low) / 2 == pytest.approx(half_width, rel=0.2)


def test_bootstrap_degenerate_sample_gives_point_interval():
    ci = bootstrap_ci(np.ones(10), rng=np.random.default_rng(0))
    assert (ci.low, ci.high) == (1.0, 1.0)


def test_bad_alternative_is_rejected():
    with pytest.raises(ValueError, match="alternative"):
        permutation_test(np.ones(2), np.zeros(2), rng=np.random.default_rng(0), alternative="bigger")


# -- issue 13: exact sign flips, t, Wilson, range and two-stage intervals, stratified permutations --
def test_sign_flips_are_enumerated_up_to_a_million_vectors():
    from audit.stats import sign_flip_tests

    d = np.random.default_rng(4).normal(0.4, 1, 16)
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=16)))
    null = signs @ d / 16
    expected = 2 * min(np.mean(null <= d.mean() + 1e-12), np.mean(null >= d.mean() - 1e-12))
    (result,) = sign_flip_tests(d[None], rng=np.random.default_rng(0), n_resamples=10_000)
    assert result.exact and result.n_permutations == 2**16
    assert result.p_value == pytest.approx(expected, rel=1e-12)
    (sampled,) = sign_flip_tests(np.ones((1, 21)), rng=np.random.default_rng(0))
    assert not sampled.exact and sampled.n_permutations == 10_000


def test_t_interval_matches_scipy_and_keeps_coverage_with_16_units():
    from scipy import stats

    from audit.stats import t_interval

    x = np.random.default_rng(1).normal(0.2, 1, 16)
    ci = t_interval(x)
    assert ci.as_tuple() == pytest.approx(tuple(stats.ttest_1samp(x, 0).confidence_interval(0.95)))
    rng = np.random.default_rng(2)
    covered = [(lambda c: c.low <= 0.3 <= c.high)(t_interval(rng.normal(0.3, 1, 16))) for _ in range(2000)]
    assert abs(np.mean(covered) - 0.95) < 0.015
    assert t_interval(np.array([0.2, 0.9]), bounds=(0.0, 1.0)).high == 1.0


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    from audit.stats import wilson_interval

    for k, n in [(0, 10), (3, 10), (47, 50), (120, 300)]:
        expected = binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_range_interval_covers_a_true_gap_of_zero_and_a_planted_one():
    from audit.stats import range_interval

    rng = np.random.default_rng(5)
    n = np.array([80, 120, 60])
    null = [range_interval(rng.binomial(n, 0.4), n) for _ in range(500)]
    assert np.mean([c.low <= 0.0 for c in null]) >= 0.95
    planted = [range_interval(rng.binomial(n, [0.2, 0.5, 0.4]), n) for _ in range(500)]
    assert np.mean([c.low <= 0.3 <= c.high for c in planted]) >= 0.95


def test_two_stage_bootstrap_variance_matches_its_formula():
    from audit.stats import two_stage_bootstrap

    rng = np.random.default_rng(6)
    clusters = [rng.normal(m, 1, (k, 1)) for m, k in [(0, 5), (1, 12), (3, 8), (2, 30)]]
    reps = two_stage_bootstrap(clusters, rng=np.random.default_rng(7), n_resamples=40_000)[:, 0]
    means = np.array([c.mean() for c in clusters])
    within = np.array([c.var() / c.size for c in clusters])  # variance of a resampled unit mean
    # One drawn slot: between-cluster variance of the means plus the average within variance.
    expected = (means.var() + within.mean()) / len(clusters)
    assert reps.mean() == pytest.approx(means.mean(), abs=0.02)
    assert reps.var() == pytest.approx(expected, rel=0.04)


def test_stratified_permutation_test_matches_enumeration():
    from audit.stats import stratified_permutation_test

    values = np.array([1.0, 1, 0, 1, 0, 0, 1, 1, 0])
    group = np.array([0, 0, 0, 1, 1, 1, 0, 1, 1])
    strata = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])

    def gap(v):
        return np.abs(v[..., group == 0].mean(-1) - v[..., group == 1].mean(-1))

    observed = gap(values[None])[0]
    first, second = np.flatnonzero(strata == 0), np.flatnonzero(strata == 1)
    null = []
    for p1 in itertools.permutations(values[first]):
        for p2 in itertools.permutations(values[second]):
            v = values.copy()
            v[first], v[second] = p1, p2
            null.append(gap(v[None])[0])
    expected = np.mean(np.array(null) >= observed - 1e-12)
    result = stratified_permutation_test(values, gap, strata=strata, rng=np.random.default_rng(0), n_resamples=20_000)
    assert result.p_value == pytest.approx(expected, abs=0.01)


def test_max_abs_mean_interval_covers_zero_and_a_planted_largest_gap():
    from audit.stats import max_abs_mean_interval

    rng = np.random.default_rng(8)
    null = [max_abs_mean_interval([rng.normal(0, 1, 16) for _ in range(3)]) for _ in range(1000)]
    assert np.mean([c.low <= 0.0 for c in null]) >= 0.935  # 0.9833 ** 3 = 0.951 for independent gaps
    planted = [max_abs_mean_interval([rng.normal(m, 1, 16) for m in (0.8, -0.2, 0.1)]) for _ in range(400)]
    assert np.mean([c.low <= 0.8 <= c.high for c in planted]) >= 0.95


def test_welch_interval_matches_the_textbook_formula():
    from scipy import stats as st

    from audit.stats import welch_interval

    rng = np.random.default_rng(4)
    x, y = rng.normal(1.0, 1.0, 12), rng.normal(0.0, 3.0, 20)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    df = (vx + vy) ** 2 / (vx ** 2 / (x.size - 1) + vy ** 2 / (y.size - 1))  # Welch-Satterthwaite
    half = st.t.ppf(0.975, df) * np.sqrt(vx + vy)
    ci = welch_interval(x, y)
    assert ci.estimate == pytest.approx(x.mean() - y.mean())
    assert (ci.low, ci.high) == pytest.approx((ci.estimate - half, ci.estimate + half), rel=1e-10)
    flat = welch_interval(np.ones(3), np.zeros(4))
    assert (flat.low, flat.estimate, flat.high) == (1.0, 1.0, 1.0)
