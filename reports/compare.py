"""Side-by-side comparison of audits: what each debiasing technique bought, and what it cost.

The first results file is the baseline. For every probe that ran on all inputs, every metric is
shown side by side with its change against the baseline, an interval for that change and whether
it is significant after Holm-Bonferroni; fairness gains sit beside the change in task performance
(accuracy, or the language-modelling score), so a technique that "removes bias" by destroying the
model is visible at once. Python builds plain data here; ``templates/compare.html.j2`` only
presents it, with the model card's escaping rules (one offline file, no URLs).

Intervals for a change. A results file keeps each metric's value and its confidence interval,
not the per-unit data, so the change ``d = v_i - v_0`` gets a normal-approximation interval from
the two intervals: each standard error is the interval's width over ``2 z`` (``z`` the normal
quantile of its level), ``se_d = sqrt(se_0^2 + se_i^2)``, interval ``d +/- z se_d`` and two-sided
p-value ``2 (1 - Phi(|d| / se_d))``. Treating the audits as independent is conservative when both
ran on the same inputs (their errors are then positively correlated, so the true ``se_d`` is
smaller). Metrics without an interval get the change and no test.

Metrics with an ideal inside their range (a signed SEAT effect size, ideal 0; a stereotype score,
ideal 50) improve by moving closer to it: their tested change is the change in distance from the
ideal, ``|v_i - ideal| - |v_0 - ideal|``, with the same standard error (a distance moves with
its value away from the ideal, and the approximation is conservative near it). A value that
crosses to the other side of the ideal is reported as ``reversed`` (0.728 -> -0.745 is a
reversal, 0.017 further from 0, not an improvement of 1.47), and as a significant reversal when
both intervals exclude the ideal.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as _st

from audit._io import ensure_writable_dir, write_json_atomic, write_text_atomic
from audit.baseline import check_compatible
from audit.errors import DataError
from audit.results import AuditResults
from audit.stats import holm_bonferroni

__all__ = ["COMPARISON_VERSION", "PERFORMANCE_METRICS", "compare_results", "ideal_change", "render_comparison_html",
           "write_comparison"]

COMPARISON_VERSION = "1.1"
#: Metric names (before any ``[group]`` suffix) that measure task performance, not fairness.
PERFORMANCE_METRICS = frozenset({"accuracy", "balanced_accuracy", "f1", "roc_auc", "lms", "lm_score"})
_RAN = ("passed", "warned", "failed")


def _base_name(metric: str) -> str:
    return metric.split("[", 1)[0]


def _source_fingerprints(results: AuditResults) -> set[str]:
    """Fingerprints of the models this one was derived from, as its training records state them."""
    found = set()
    for section in results.manifest.records.values():
        if isinstance(section, dict) and isinstance(section.get("source_fingerprint"), str):
            found.add(section["source_fingerprint"])
    return found


def _check_inputs(results: Sequence[AuditResults], names: list[str], allow_different_models: bool) -> list[str]:
    baseline = results[0]
    warnings = []
    for name, other in zip(names[1:], results[1:]):
        if other.manifest.fingerprint == baseline.manifest.fingerprint:
            continue
        if baseline.manifest.fingerprint in _source_fingerprints(other):
            continue  # a debiased copy of the baseline model: the comparison this command is for
        check_compatible(other, baseline, allow_different_models=allow_different_models,
                         source=f"Results {name!r}")
        warnings.append(f"{name} was audited on model {other.manifest.model_id!r}, which is not derived from the "
                        f"baseline {baseline.manifest.model_id!r} (allowed by --allow-different-models).")
    ran = [{r.probe: r for r in res.results if r.status in _RAN} for res in results]
    common = set(ran[0]).intersection(*ran[1:])
    every = set().union(*ran)
    if every != common:
        detail = "; ".join(f"{n}: {sorted(r)}" for n, r in zip(names, ran))
        if not allow_different_models:
            raise DataError(f"The results files ran different probe sets ({detail}). Audit every model with the "
                            "same probes, or pass --allow-different-models to compare only the probes they share.")
        warnings.append(f"Only the probes every audit ran are compared; left out: {sorted(every - common)}.")
    for probe in sorted(common):
        params = [r[probe].params for r in ran]
        if any(p != params[0] for p in params[1:]):
            if not allow_different_models:
                raise DataError(f"Probe {probe!r} ran with different parameters in the results files, so its numbers "
                                "are not comparable. Re-run the audits with one config, or pass "
                                "--allow-different-models.")
            warnings.append(f"Probe {probe!r} ran with different parameters in different audits.")
    data = [res.manifest.data.fingerprint if res.manifest.data else None for res in results]
    if any(d != data[0] for d in data[1:]):
        warnings.append("The audits used different evaluation data (fingerprints differ); data-based metrics "
                        "measure different rows.")
    return warnings


def _se(ci: Sequence[float] | None, level: float | None) -> float | None:
    if ci is None:
        return None
    z = _st.norm.ppf(0.5 + (level or 0.95) / 2)
    return (float(ci[1]) - float(ci[0])) / (2 * z)


def delta_interval(base: tuple[float, Sequence[float] | None, float | None],
                   other: tuple[float, Sequence[float] | None, float | None],
                   level: float = 0.95) -> dict[str, Any]:
    """Change ``other - base`` with its normal-approximation interval and p-value (see the module doc).

    Each argument is ``(value, ci, ci_level)``.

    Examples
    --------
    >>> from reports.compare import delta_interval
    >>> d = delta_interval((0.30, (0.25, 0.35), 0.95), (0.10, (0.05, 0.15), 0.95))
    >>> round(d["delta"], 2), d["p_value"] < 0.001
    (-0.2, True)
    """
    delta = float(other[0]) - float(base[0])
    se_base, se_other = _se(base[1], base[2]), _se(other[1], other[2])
    if se_base is None or se_other is None:
        return {"delta": delta, "ci": None, "p_value": None}
    se = float(np.hypot(se_base, se_other))
    if se == 0:
        return {"delta": delta, "ci": None, "p_value": None}
    z = _st.norm.ppf(0.5 + level / 2)
    return {"delta": delta, "ci": [delta - z * se, delta + z * se], "p_value": float(2 * _st.norm.sf(abs(delta) / se))}


def _improved(direction: str | None, delta: float) -> bool | None:
    if direction is None or delta == 0:
        return None
    return delta > 0 if direction == "higher_is_better" else delta < 0


def _side(value: float, ideal: float) -> int:
    return int(np.sign(value - ideal))


def ideal_change(base: tuple[float, Sequence[float] | None, float | None],
                 other: tuple[float, Sequence[float] | None, float | None],
                 ideal: float, level: float = 0.95) -> dict[str, Any]:
    """Change of a metric with an ideal: in distance from it, plus whether it changed side.

    ``delta`` (and its interval and p-value) is ``|other - ideal| - |base - ideal|``, negative
    when ``other`` is closer to the ideal; ``value_change`` is the plain ``other - base``.

    Examples
    --------
    >>> from reports.compare import ideal_change
    >>> d = ideal_change((0.728, (0.70, 0.75), 0.95), (-0.745, (-0.77, -0.72), 0.95), 0.0)
    >>> round(d["delta"], 3), d["improved"], d["reversed"], d["significantly_reversed"]
    (0.017, False, True, True)
    """
    d = delta_interval((abs(base[0] - ideal), base[1], base[2]), (abs(other[0] - ideal), other[1], other[2]), level)
    sides = (_side(base[0], ideal), _side(other[0], ideal))
    excludes = [ci is not None and not ci[0] <= ideal <= ci[1] for ci in (base[1], other[1])]
    reversed_ = sides[0] * sides[1] < 0
    return {**d, "value_change": float(other[0]) - float(base[0]), "ideal": ideal,
            "improved": None if d["delta"] == 0 else d["delta"] < 0,
            "reversed": reversed_, "significantly_reversed": reversed_ and all(excludes)}


def compare_results(
    results: Sequence[AuditResults],
    *,
    names: Sequence[str] | None = None,
    allow_different_models: bool = False,
    alpha: float = 0.05,
    level: float = 0.95,
) -> dict[str, Any]:
    """Compare audits against the first one (the baseline) and return plain, JSON-ready data.

    Parameters
    ----------
    results : sequence of AuditResults
        The baseline first, then one audit per technique (or model).
    names : sequence of str, optional
        A label per input; defaults to the debiasing technique in each model's training record,
        else the model id.
    allow_different_models : bool, default=False
        Compare models that are neither the baseline nor derived from it (their training record
        names the baseline's fingerprint as ``source_fingerprint``), and audits that ran different
        probe sets or probe parameters (only the shared probes are compared).
    alpha : float, default=0.05
        Family-wise level of the Holm-Bonferroni adjustment over each input's changes.
    level : float, default=0.95
        Confidence level of the intervals for the changes.
    """
    if len(results) < 2:
        raise DataError(f"compare needs at least two results files (a baseline and one more), got {len(results)}. "
                        "Pass the baseline's results.json first, then the others.")
    if not 0 < alpha < 1 or not 0 < level < 1:
        raise DataError(f"alpha and level must be in (0, 1), got alpha={alpha!r}, level={level!r}.")
    labels = list(names) if names is not None else [_default_name(r, i) for i, r in enumerate(results)]
    if len(labels) != len(results):
        raise DataError(f"Got {len(labels)} names for {len(results)} results files. Give one name per file.")
    labels = _unique(labels)
    warnings = _check_inputs(results, labels, allow_different_models)
    ran = [{r.probe: r for r in res.results if r.status in _RAN} for res in results]
    common = [p for p in ran[0] if all(p in r for r in ran[1:])]

    probes = []
    tests: dict[int, list[dict[str, Any]]] = {i: [] for i in range(1, len(results))}
    for probe in common:
        per_input = [r[probe] for r in ran]
        metric_names = [m for m in per_input[0].metrics
                        if all(m in r.metrics and r.metrics[m].value is not None for r in per_input)]
        rows = []
        for metric in metric_names:
            ms = [r.metrics[metric] for r in per_input]
            ideal = next((m.ideal for m in ms if m.ideal is not None), None)
            direction = "closer_to_ideal" if ideal is not None else next((m.direction for m in ms if m.direction), None)
            values = [{"value": m.value, "ci": list(m.ci) if m.ci else None, "ci_level": m.ci_level} for m in ms]
            deltas: list[dict[str, Any] | None] = [None]
            for i, m in enumerate(ms[1:], start=1):
                pair = ((ms[0].value, ms[0].ci, ms[0].ci_level), (m.value, m.ci, m.ci_level))
                if ideal is not None:
                    d = ideal_change(*pair, ideal, level)
                else:
                    d = delta_interval(*pair, level)
                    d["improved"] = _improved(direction, d["delta"])
                    d["reversed"] = False
                d["p_holm"] = None
                d["significant"] = None
                deltas.append(d)
                if d["p_value"] is not None:
                    tests[i].append(d)
            rows.append({
                "metric": metric, "direction": direction, "ideal": ideal, "description": ms[0].description,
                "performance": _base_name(metric) in PERFORMANCE_METRICS,
                "headline": metric == per_input[0].headline, "values": values, "deltas": deltas,
            })
        probes.append({"probe": probe, "category": per_input[0].category, "headline": per_input[0].headline,
                       "summaries": [r.summary for r in per_input], "metrics": rows})
    for family in tests.values():
        if family:
            adjusted, reject = holm_bonferroni([d["p_value"] for d in family], alpha)
            for d, p, r in zip(family, adjusted, reject):
                d["p_holm"], d["significant"] = float(p), bool(r)

    return {
        "comparison_version": COMPARISON_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "alpha": alpha,
        "level": level,
        "method": ("change = value - baseline value (for a metric with an ideal inside its range: the change in "
                   "distance from the ideal, and a sign change is reported as reversed); interval and p-value from the "
                   "two metrics' confidence intervals (normal approximation, audits treated as independent: "
                   "conservative for shared inputs); Holm-Bonferroni over each input's tested changes"),
        "inputs": [_input_summary(r, label) for r, label in zip(results, labels)],
        "probes": probes,
        "tradeoffs": _tradeoffs(probes, labels),
        "warnings": warnings,
    }


def _default_name(results: AuditResults, index: int) -> str:
    section = results.manifest.records.get("debiasing")
    if index > 0 and isinstance(section, dict) and isinstance(section.get("technique"), str):
        return section["technique"]
    return "baseline" if index == 0 else results.manifest.model_id.rstrip("/").rsplit("/", 1)[-1]


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _input_summary(results: AuditResults, name: str) -> dict[str, Any]:
    m = results.manifest
    section = m.records.get("debiasing") if isinstance(m.records.get("debiasing"), dict) else {}
    return {"name": name, "model_id": m.model_id, "fingerprint": m.fingerprint, "kind": m.kind,
            "finished_at": m.finished_at, "technique": section.get("technique"),
            "parameters": section.get("parameters")}


def _tradeoffs(probes: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    """Per input after the baseline: each bias probe's headline change beside every performance change."""
    out = []
    for i, label in enumerate(labels[1:], start=1):
        fairness, performance = [], []
        for probe in probes:
            for row in probe["metrics"]:
                entry = {"probe": probe["probe"], "metric": row["metric"], "direction": row["direction"],
                         "baseline": row["values"][0]["value"], "value": row["values"][i]["value"],
                         "ideal": row["ideal"], "reversed": row["deltas"][i]["reversed"],
                         **{k: row["deltas"][i][k] for k in ("delta", "ci", "p_holm", "significant", "improved")}}
                if row["performance"]:
                    performance.append(entry)
                elif row["headline"] and probe["category"] == "bias":
                    fairness.append(entry)
        out.append({"name": label, "fairness": fairness, "performance": performance})
    return out


def render_comparison_html(comparison: dict[str, Any]) -> str:
    """The comparison card: one self-contained, escaped HTML file (no scripts, no URLs)."""
    from reports.model_card import _environment

    return _environment().get_template("compare.html.j2").render(c=comparison)


def write_comparison(comparison: dict[str, Any], out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``comparison.json`` and ``comparison.html`` into ``out_dir`` (rendered first, written atomically)."""
    directory = ensure_writable_dir(out_dir)
    html = render_comparison_html(comparison)
    return {"json": write_json_atomic(directory / "comparison.json", comparison),
            "html": write_text_atomic(directory / "comparison.html", html)}
