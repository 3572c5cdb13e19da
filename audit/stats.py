"""Statistics every probe reports the same way: intervals, permutation tests, Holm-Bonferroni.

All randomness comes from the generator the caller passes (a probe uses ``context.rng``), so an
audit is reproducible from its seed. The resampling itself is scipy's
(:func:`scipy.stats.bootstrap`, :func:`scipy.stats.permutation_test`); this module fixes the
conventions: which interval, how degenerate samples are handled, what "exact" means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import stats as _st

__all__ = [
    "Interval",
    "PermutationResult",
    "bootstrap_ci",
    "holm_bonferroni",
    "paired_permutation_test",
    "permutation_test",
]

Alternative = Literal["greater", "less", "two-sided"]
_ALTERNATIVES = ("greater", "less", "two-sided")


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    #: The bootstrap replicates of the statistic (empty for a degenerate sample), so a caller
    #: can build intervals for quantities derived from several estimates.
    distribution: np.ndarray = field(default_factory=lambda: np.zeros(0), compare=False, repr=False)

    def as_tuple(self) -> tuple[float, float]:
        return (self.low, self.high)


@dataclass(frozen=True)
class PermutationResult:
    """Outcome of a permutation test.

    ``exact`` is true when every distinct re-arrangement was enumerated; the p-value then counts
    the observed arrangement among them, so it is never below ``1 / n_permutations``. When
    sampled, the p-value is ``(k + 1) / (n + 1)`` (Phipson and Smyth 2010).
    """

    statistic: float
    p_value: float
    exact: bool
    n_permutations: int


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")


def bootstrap_ci(
    data: Sequence[np.ndarray] | np.ndarray,
    statistic: Callable[..., np.ndarray] = np.mean,
    *,
    rng: np.random.Generator,
    n_resamples: int = 2000,
    confidence_level: float = 0.95,
    paired: bool = False,
    method: Literal["percentile", "BCa", "basic"] = "percentile",
) -> Interval:
    """Bootstrap confidence interval of ``statistic`` over one or more samples.

    Parameters
    ----------
    data : array or sequence of arrays
        One sample, or several (e.g. the two groups of a gap). ``paired=True`` resamples the
        samples' positions together.
    statistic : callable
        Vectorised statistic taking one array per sample and an ``axis`` keyword.
    rng : numpy.random.Generator
        Source of randomness; pass ``context.rng``.
    method : {"percentile", "BCa", "basic"}, default="percentile"
        scipy's interval method. A degenerate sample (all values equal) yields the point
        estimate as both bounds instead of NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from audit.stats import bootstrap_ci
    >>> ci = bootstrap_ci(np.arange(100.0), rng=np.random.default_rng(0))
    >>> round(ci.estimate, 1), ci.low < 49.5 < ci.high
    (49.5, True)
    """
    samples = (np.asarray(data, dtype=float),) if isinstance(data, np.ndarray) else tuple(
        np.asarray(d, dtype=float) for d in data
    )
    if any(s.size == 0 for s in samples):
        raise ValueError("bootstrap_ci needs non-empty samples")
    estimate = float(statistic(*samples, axis=-1))
    if all(s.size < 2 or np.all(s == s.flat[0]) for s in samples):
        return Interval(estimate, estimate, estimate, confidence_level, np.full(n_resamples, estimate))
    res = _st.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        confidence_level=confidence_level,
        method=method,
        paired=paired,
        vectorized=True,
        rng=rng,
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        low = high = estimate
    return Interval(estimate, low, high, confidence_level, np.asarray(res.bootstrap_distribution, dtype=float))


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    rng: np.random.Generator,
    statistic: Callable[..., np.ndarray] = _mean_difference,
    alternative: Alternative = "two-sided",
    n_resamples: int = 10_000,
) -> PermutationResult:
    """Two-sample permutation test over re-partitions of ``x`` and ``y`` (sizes kept).

    Exact (every distinct partition enumerated) when ``C(len(x) + len(y), len(x))`` is at
    most ``n_resamples``; sampled with ``rng`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from audit.stats import permutation_test
    >>> r = permutation_test(np.array([3.0, 4, 5]), np.array([0.0, 1, 2]),
    ...                      rng=np.random.default_rng(0), alternative="greater")
    >>> r.exact, r.p_value == 1 / 20
    (True, True)
    """
    _check_alternative(alternative)
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n_partitions = math.comb(x.size + y.size, x.size)
    res = _st.permutation_test(
        (x, y),
        statistic,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alternative,
        rng=rng,
        batch=max(1, 4_000_000 // max(1, x.size + y.size)),
    )
    exact = n_partitions <= n_resamples
    return PermutationResult(
        statistic=float(res.statistic),
        p_value=float(min(1.0, res.pvalue)),
        exact=exact,
        n_permutations=n_partitions if exact else n_resamples,
    )


def paired_permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    *,
    rng: np.random.Generator,
    alternative: Alternative = "two-sided",
    n_resamples: int = 10_000,
) -> PermutationResult:
    """Sign-flip permutation test of the mean paired difference ``x - y``.

    Exact when ``2 ** n`` is at most ``n_resamples``.
    """
    _check_alternative(alternative)
    diff = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if diff.size == 0:
        raise ValueError("paired_permutation_test needs at least one pair")
    if np.all(diff == 0):
        return PermutationResult(0.0, 1.0, True, 1)
    res = _st.permutation_test(
        (diff,),
        lambda d, axis=-1: np.mean(d, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=n_resamples,
        alternative=alternative,
        rng=rng,
    )
    exact = 2 ** diff.size <= n_resamples
    return PermutationResult(float(res.statistic), float(min(1.0, res.pvalue)), exact,
                             2 ** diff.size if exact else n_resamples)


def holm_bonferroni(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values.

    Returns the adjusted p-values (monotone, capped at 1, in the input order) and whether each
    hypothesis is rejected at family-wise level ``alpha``.

    Examples
    --------
    >>> from audit.stats import holm_bonferroni
    >>> adj, reject = holm_bonferroni([0.01, 0.04, 0.03])
    >>> [round(float(a), 2) for a in adj], reject.tolist()
    ([0.03, 0.06, 0.06], [True, False, False])
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p.copy(), np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted, adjusted <= alpha
