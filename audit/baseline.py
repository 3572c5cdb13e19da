"""Gates against a baseline: fail when a metric got significantly worse than in a previous audit."""

from __future__ import annotations

from collections.abc import Mapping

from audit.config import GateSpec
from audit.errors import ConfigError, DataError
from audit.probe import Metric
from audit.results import AuditResults, GateOutcome

__all__ = ["check_compatible", "regression_gates"]


def check_compatible(current: AuditResults, baseline: AuditResults, *, allow_different_models: bool = False,
                     source: str = "baseline") -> None:
    """Refuse a baseline from another model unless told, so a comparison means what it says."""
    if current.manifest.fingerprint != baseline.manifest.fingerprint and not allow_different_models:
        if current.manifest.model_id != baseline.manifest.model_id:
            what = f"model {baseline.manifest.model_id!r}, not {current.manifest.model_id!r}"
        else:
            what = f"a different model (fingerprint parts that differ: {_differing_parts(current, baseline)})"
        raise DataError(
            f"{source} was audited on {what}. Pass --allow-different-models "
            "(allow_different_models=True) to compare a new model against an old one's audit."
        )


def _differing_parts(current: AuditResults, baseline: AuditResults) -> str:
    """Which fingerprint parts (weights, config, tokenizer, ...) differ, or "fingerprints" when unknown."""
    mine, theirs = current.manifest.fingerprint_parts, baseline.manifest.fingerprint_parts
    parts = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return ", ".join(parts) if mine and theirs and parts else "fingerprints"


def _worsening(metric: Metric, current: float, base: float, *, signed: bool = False) -> float:
    """How much worse ``current`` is than ``base`` (positive = worse): further from the ideal for a
    metric with one (unless ``signed``), lower for higher-is-better, higher otherwise."""
    if metric.ideal is not None and not signed:
        return abs(current - metric.ideal) - abs(base - metric.ideal)
    return base - current if metric.direction == "higher_is_better" else current - base


def _best_case(metric: Metric, *, signed: bool) -> float:
    """The value in the metric's interval that is best by the metric's own measure of worse."""
    low, high = metric.ci  # type: ignore[misc]
    if metric.ideal is not None and not signed:
        return min(max(metric.ideal, low), high)
    return high if metric.direction == "higher_is_better" else low


def regression_gates(
    current: AuditResults,
    baseline: AuditResults,
    gates: Mapping[str, Mapping[str, GateSpec]],
) -> list[GateOutcome]:
    """Compare each metric that has a ``tolerance`` (or, without any, each probe's headline) to the baseline.

    A metric regresses when it is worse than the baseline by more than the tolerance *and* the
    whole of its confidence interval lies beyond ``baseline + tolerance`` (in the metric's worse
    direction), so noise inside the interval never fails a build. Metrics without an interval
    are compared by value. Direction comes from the metric (``lower_is_better`` by default); a
    metric with an ideal (a signed effect size) gets worse when it moves further from the ideal,
    on either side, unless the gate says ``signed: true``.

    Examples
    --------
    >>> from audit.config import GateSpec
    >>> from audit.baseline import regression_gates
    >>> callable(regression_gates)
    True
    """
    baseline_by_probe = {r.probe: r for r in baseline.results}
    wanted: dict[tuple[str, str], tuple[float, bool]] = {}
    for probe, specs in gates.items():
        for metric, spec in specs.items():
            if spec.tolerance is not None:
                wanted[(probe, metric)] = (spec.tolerance, spec.signed)
    if not wanted:
        wanted = {(r.probe, r.headline): (0.0, False) for r in current.results
                  if r.headline and r.status not in ("errored", "skipped", "not_applicable")}
    outcomes = []
    for (probe, metric_name), (tolerance, signed) in sorted(wanted.items()):
        if tolerance < 0:
            raise ConfigError(f"probes.{probe}.gates.{metric_name}.tolerance must be >= 0, got {tolerance}.")
        result = next((r for r in current.results if r.probe == probe), None)
        old = baseline_by_probe.get(probe)
        metric = result.metrics.get(metric_name) if result else None
        old_metric = old.metrics.get(metric_name) if old else None
        common = dict(probe=probe, metric=metric_name, bound="tolerance", threshold=tolerance, kind="regression")
        if metric is None or metric.value is None or old_metric is None or old_metric.value is None:
            missing = "this audit" if metric is None or metric.value is None else "the baseline"
            outcomes.append(GateOutcome(**common, value=metric.value if metric else None, passed=False,
                                        baseline=old_metric.value if old_metric else None,
                                        message=f"{probe}.{metric_name} is missing from {missing}; cannot compare"))
            continue
        if metric.direction is None and old_metric.direction is not None:
            metric = metric.model_copy(update={"direction": old_metric.direction, "ideal": old_metric.ideal})
        change = _worsening(metric, metric.value, old_metric.value, signed=signed)
        if metric.ci is not None:
            significant = _worsening(metric, _best_case(metric, signed=signed), old_metric.value, signed=signed) > tolerance
        else:
            significant = change > tolerance
        interval = f" [{metric.ci[0]:.4g}, {metric.ci[1]:.4g}]" if metric.ci else ""
        measure = f" in distance from the ideal {metric.ideal:g}" if metric.ideal is not None and not signed else ""
        verdict = "significantly worse than" if significant else "within tolerance of"
        outcomes.append(GateOutcome(
            **common, value=metric.value, passed=not significant, baseline=old_metric.value, change=change,
            interval=metric.ci,
            message=(f"{probe}.{metric_name} = {metric.value:.4g}{interval} vs baseline {old_metric.value:.4g}: "
                     f"{'worse' if change > 0 else 'better'} by {abs(change):.4g}{measure}, {verdict} the baseline "
                     f"(tolerance {tolerance:g})"),
        ))
    return outcomes
