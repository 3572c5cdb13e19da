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
