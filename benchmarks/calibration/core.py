"""The machinery of the calibration suite: conditions, runs, binomial intervals, aggregation.

A *case* is one verdict of one probe, measured on models whose truth is known by construction.
It has a null condition (no planted effect) and planted conditions of known size; each run of a
condition builds a fresh model and data set from its own seed, runs the probe through its public
``probe.run(target, context)`` with a context seeded from the same run, and reports whether the
verdict raised an alarm and whether the reported 95% interval covered the planted truth.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st

__all__ = ["Case", "CaseResult", "ConditionResult", "Outcome", "binomial_tail", "clopper_pearson", "run_case"]

#: What a run reports: the probe's status, whether the verdict is an alarm (a warning, failure or
#: distrust, as the case defines it), and whether the reported interval covered the truth
#: (``None`` where the case has no interval for this condition).
ALARM_STATUSES = ("warned", "failed")


@dataclass(frozen=True)
class Outcome:
    status: str
    alarm: bool
    #: Interval name -> whether it covered the planted truth (absent: no interval in this run).
    covered: Mapping[str, bool | None] = field(default_factory=dict)
    #: The planted truth on the scale the probe reports (an effect size, a gap, a score).
    truth: float | None = None
    #: Further per-run yes/no observations reported as rates without a target (e.g. which method was trusted).
    flags: Mapping[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One verdict of one probe and how to measure it.

    ``run(seed, effect)`` builds a model and data with the planted ``effect`` (0 for the null),
    runs the probe once and returns an :class:`Outcome`. ``effects`` maps a condition name
    (``"null"``, ``"small"``, ...) to the planted effect size, in the unit ``effect_unit``.
    """

    probe: str
    verdict: str
    description: str
    effect_unit: str
    effects: Mapping[str, float]
    run: Callable[[int, float], Outcome]
    interval: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    alarm_means: str = "status warned or failed"
    #: Most null runs this case gets (a 5% false-alarm rate can only be told from 10% with ~200 runs;
    #: the slowest cases, run on real networks, get fewer).
    max_null_runs: int = 200


@dataclass
class ConditionResult:
    condition: str
    effect: float
    runs: int = 0
    alarms: int = 0
    #: Interval name -> [runs covering the truth, runs with an interval].
    coverage_counts: dict[str, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    truths: list[float] = field(default_factory=list)
    flag_counts: dict[str, list[int]] = field(default_factory=dict)

    def mean_truth(self) -> float | None:
        return float(np.mean(self.truths)) if self.truths else None

    def alarm_rate(self) -> tuple[float, float, float] | None:
        return clopper_pearson(self.alarms, self.runs) if self.runs else None

    def coverage(self) -> dict[str, tuple[float, float, float, int]]:
        """Interval name -> (coverage, its 95% binomial interval, runs with that interval)."""
        return {name: (*clopper_pearson(k, n), n) for name, (k, n) in self.coverage_counts.items() if n}

    def to_json(self) -> dict[str, Any]:
        rate = self.alarm_rate()
        return {
            "condition": self.condition, "effect": self.effect, "runs": self.runs, "alarms": self.alarms,
            "alarm_rate": rate[0] if rate else None, "alarm_rate_ci95": list(rate[1:]) if rate else None,
            "coverage": {name: {"rate": c[0], "ci95": [c[1], c[2]], "runs": c[3]}
                         for name, c in self.coverage().items()},
            "mean_truth": self.mean_truth(),
            "flags": {name: {"count": k, "runs": n, "rate": k / n} for name, (k, n) in self.flag_counts.items() if n},
            "statuses": dict(sorted(self.statuses.items())), "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None, "seconds": round(self.seconds, 2),
        }


@dataclass
class CaseResult:
    case: Case
    conditions: list[ConditionResult]

    @property
    def null(self) -> ConditionResult | None:
        return next((c for c in self.conditions if c.condition == "null"), None)

    def targets(self, *, max_false_alarm: float = 0.05, max_upper: float = 0.10,
                min_coverage: float = 0.93) -> dict[str, bool | None]:
        """Which targets this case meets: the null false-alarm rate and its upper bound, and the
        interval coverage in every condition that has one. ``None``: not measured.

        ``false_alarm_within_error`` is for a rate above ``max_false_alarm`` that an exact test
        cannot tell from it: the upper bound is within ``max_upper`` and ``k`` alarms in ``n`` runs
        are not significantly more than ``max_false_alarm`` would give (one-sided exact binomial
        p > 0.05). A test whose size is exactly 5% shows a point estimate above 5% in about half of
        all measurements, however many runs are made; this says so rather than calling it met.
        """
        null = self.null
        rate = null.alarm_rate() if null and null.runs else None
        false_alarm = None if rate is None else (rate[0] <= max_false_alarm and rate[2] <= max_upper)
        within = None
        if rate is not None and not false_alarm:
            within = bool(rate[2] <= max_upper and binomial_tail(null.alarms, null.runs, max_false_alarm) > 0.05)
        pooled = self.pooled_coverage()
        coverage = None if not pooled else all(c[0] >= min_coverage for c in pooled.values())
        errors = any(c.errors for c in self.conditions)
        out: dict[str, bool | None] = {"false_alarm": false_alarm, "coverage": coverage, "no_errors": not errors}
        if within is not None:
            out["false_alarm_within_error"] = within
        return out

    def pooled_coverage(self) -> dict[str, tuple[float, float, float, int]]:
        """Interval name -> coverage over every run of every condition (with its binomial interval):
        the coverage target is judged on this, as 40 runs of one condition cannot resolve 93%."""
        totals: dict[str, list[int]] = {}
        for c in self.conditions:
            for name, (k, n) in c.coverage_counts.items():
                t = totals.setdefault(name, [0, 0])
                t[0] += k
                t[1] += n
        return {name: (*clopper_pearson(k, n), n) for name, (k, n) in totals.items() if n}

    def to_json(self) -> dict[str, Any]:
        return {
            "pooled_coverage": {name: {"rate": c[0], "ci95": [c[1], c[2]], "runs": c[3]}
                                for name, c in self.pooled_coverage().items()},
            "probe": self.case.probe, "verdict": self.case.verdict, "description": self.case.description,
            "alarm_means": self.case.alarm_means, "effect_unit": self.case.effect_unit,
            "interval": self.case.interval, "settings": dict(self.case.settings),
            "conditions": [c.to_json() for c in self.conditions], "targets_met": self.targets(),
        }


def binomial_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``: the one-sided exact p-value of ``k`` alarms in ``n`` runs.

    >>> round(binomial_tail(11, 200, 0.05), 3)
    0.417
    >>> binomial_tail(0, 10, 0.5)
    1.0
    """
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, p))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """Rate ``k / n`` with its exact (Clopper-Pearson) two-sided binomial interval.

    >>> rate, low, high = clopper_pearson(0, 40)
    >>> rate, low, round(high, 4)
    (0.0, 0.0, 0.0881)
    """
    if n <= 0:
        raise ValueError("clopper_pearson needs at least one trial")
    ci = _st.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return k / n, float(ci.low), float(ci.high)


def run_seed(case: Case, condition: str, run: int, base_seed: int) -> int:
    """A distinct, reproducible seed per (case, condition, run): model, data and probe all derive from it."""
    import zlib

    key = zlib.crc32(f"{case.probe}/{case.verdict}/{condition}".encode())
    return int(np.random.SeedSequence([base_seed, key, run]).generate_state(1)[0])


def run_case(case: Case, *, runs: int, base_seed: int = 2026, conditions: Sequence[str] | None = None,
             null_runs: int | None = None, progress: Callable[[str], None] | None = None) -> CaseResult:
    """Run every condition of ``case`` ``runs`` times (the null ``null_runs`` times, at most the
    case's ``max_null_runs`` and at least ``runs``), each run on its own seed."""
    out = []
    for condition, effect in case.effects.items():
        if conditions is not None and condition not in conditions:
            continue
        result = ConditionResult(condition=condition, effect=float(effect))
        start = time.perf_counter()
        n = runs if condition != "null" or null_runs is None else max(runs, min(null_runs, case.max_null_runs))
        for i in range(n):
            seed = run_seed(case, condition, i, base_seed)
            try:
                outcome = case.run(seed, float(effect))
            except Exception as exc:  # a probe that errors is recorded, never silently dropped
                result.errors.append(f"{type(exc).__name__}: {exc}"[:300] + "\n" + traceback.format_exc(limit=3)[-600:])
                result.statuses["errored"] = result.statuses.get("errored", 0) + 1
                continue
            result.runs += 1
            result.alarms += int(outcome.alarm)
            result.statuses[outcome.status] = result.statuses.get(outcome.status, 0) + 1
            for name, flag in outcome.flags.items():
                counts = result.flag_counts.setdefault(name, [0, 0])
                counts[0] += int(flag)
                counts[1] += 1
            if outcome.truth is not None:
                result.truths.append(float(outcome.truth))
            for name, hit in outcome.covered.items():
                if hit is not None:
                    counts = result.coverage_counts.setdefault(name, [0, 0])
                    counts[0] += int(hit)
                    counts[1] += 1
        result.seconds = time.perf_counter() - start
        out.append(result)
        if progress:
            rate = result.alarm_rate()
            cover = ", ".join(f"{name} {c[0]:.0%} of {c[3]}" for name, c in result.coverage().items())
            truth = result.mean_truth()
            progress(f"{case.probe}/{case.verdict} {condition}" + (f" (truth {truth:.3g})" if truth is not None else "")
                     + f": alarms {result.alarms}/{result.runs}"
                     + (f" ({rate[0]:.0%})" if rate else "")
                     + (f", coverage {cover}" if cover else "")
                     + (f", {len(result.errors)} errored" if result.errors else "")
                     + f", {result.seconds:.1f}s")
    return CaseResult(case=case, conditions=out)


def covers(interval: Sequence[float] | None, truth: float, *, tol: float = 1e-9) -> bool | None:
    """Whether ``interval`` contains ``truth`` (``None`` when no interval was reported)."""
    if interval is None:
        return None
    low, high = float(interval[0]), float(interval[1])
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low - tol <= truth <= high + tol
