"""How reliable each probe's verdict is: the calibration suite's measured rates, for the cards.

The suite (``benchmarks/calibration``, run with ``python -m benchmarks.calibration``) measures,
on models whose truth is known by construction, how often each verdict raises a false alarm,
how often it detects a planted effect of known size, and how often the reported 95% interval
covers the truth. It writes ``reports/calibration.json``, shipped with the package; this module
turns that file into one note per probe. A probe the suite does not cover (a third-party probe,
or a built-in one listed as not calibrated) gets a note saying so, never silence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

__all__ = ["ReliabilityNote", "load_calibration", "reliability_line", "reliability_notes"]

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class ReliabilityNote:
    """What the card says about one probe's verdicts: calibrated rates, or why there are none."""

    probe: str
    calibrated: bool
    suite_version: str | None = None
    date: str | None = None
    runs: int | None = None
    #: One line per measured verdict.
    lines: tuple[str, ...] = ()
    #: Verdicts whose measured rates miss the suite's targets.
    missed: tuple[str, ...] = ()
    reason: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)

    def short(self) -> str:
        """A short clause for the Hub card: the null false-alarm rate and the power on the largest effect."""
        if not self.calibrated:
            return f"{self.probe} not calibrated"
        parts = [f"{self.probe} false alarms {self.extras.get('false_alarms', 'n/a')}, "
                 f"power on a large effect {self.extras.get('power_large', 'n/a')}"]
        if self.missed:
            parts.append("below target")
        return " ".join(parts)


def load_calibration() -> dict[str, Any] | None:
    """The shipped calibration results, or ``None`` when the package has none."""
    path = resources.files("reports") / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("probes"), dict) else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _case_line(case: Mapping[str, Any]) -> str:
    conds = {c["condition"]: c for c in case.get("conditions", [])}
    parts = [str(case.get("verdict", "verdict"))]
    null = conds.get("null")
    if null and null.get("runs"):
        low, high = null.get("alarm_rate_ci95") or (None, None)
        parts.append(f"false alarms on a model with nothing planted {null['alarms']}/{null['runs']} "
                     f"({_pct(null['alarm_rate'])}, 95% CI {_pct(low)} to {_pct(high)})")
    power = [f"{name} {_pct(conds[name]['alarm_rate'])}" for name in ("small", "medium", "large")
             if name in conds and conds[name].get("runs")]
    if power:
        parts.append("detection of a planted effect " + ", ".join(power))
    pooled = case.get("pooled_coverage") or {}
    if pooled:
        parts.append("coverage of the planted truth by the 95% interval, over all runs: "
                     + ", ".join(f"{name} {_pct(cov['rate'])} of {cov['runs']}" for name, cov in pooled.items()))
        return ": ".join(parts[:1]) + ": " + "; ".join(parts[1:])
    coverage = []
    for c in conds.values():
        for name, cov in (c.get("coverage") or {}).items():
            coverage.append((name, cov["rate"]))
    if coverage:
        worst: dict[str, float] = {}
        for name, rate in coverage:
            worst[name] = min(rate, worst.get(name, 1.0))
        parts.append("lowest coverage of the planted truth by the 95% interval "
                     + ", ".join(f"{name} {_pct(rate)}" for name, rate in worst.items()))
    return ": ".join(parts[:1]) + (": " + "; ".join(parts[1:]) if len(parts) > 1 else "")


def _missed(case: Mapping[str, Any]) -> list[str]:
    met = case.get("targets_met") or {}
    out = []
    if met.get("false_alarm") is False:
        out.append(f"{case.get('verdict')}: false-alarm rate"
                   + (" (above 5% but within sampling error of it)" if met.get("false_alarm_within_error") else ""))
    if met.get("coverage") is False:
        out.append(f"{case.get('verdict')}: interval coverage")
    if met.get("no_errors") is False:
        out.append(f"{case.get('verdict')}: runs errored")
    return out


def reliability_notes(probes: Iterable[str], data: Mapping[str, Any] | None = None) -> dict[str, ReliabilityNote]:
    """One :class:`ReliabilityNote` per probe name, from ``data`` (default: the shipped file).

    Examples
    --------
    >>> from reports.reliability import reliability_notes
    >>> reliability_notes(["my_plugin"], data={"probes": {}, "not_calibrated": {}})["my_plugin"].calibrated
    False
    """
    data = load_calibration() if data is None else data
    notes = {}
    for probe in probes:
        if data is None:
            notes[probe] = ReliabilityNote(probe, False, reason="this installation ships no calibration results")
            continue
        cases = data.get("probes", {}).get(probe)
        if not cases:
            why = (data.get("not_calibrated") or {}).get(probe) or "the calibration suite does not cover this probe"
            notes[probe] = ReliabilityNote(probe, False, suite_version=data.get("suite_version"), reason=why)
            continue
        missed = [m for case in cases for m in _missed(case)]
        missed += [f"{case.get('verdict')}: measured on earlier code of this probe (stale)"
                   for case in cases if case.get("stale")]
        notes[probe] = ReliabilityNote(
            probe, True, suite_version=str(data.get("suite_version")),
            date=max((str(c["measured"]) for c in cases if c.get("measured")), default=data.get("date")),
            runs=data.get("runs_per_condition"), lines=tuple(_case_line(c) for c in cases), missed=tuple(missed),
            extras=_headline_rates(cases),
        )
    return notes


def _headline_rates(cases: list[Mapping[str, Any]]) -> dict[str, str]:
    """The worst null false-alarm rate and the lowest large-effect power over a probe's verdicts."""
    nulls = [c for case in cases for c in case.get("conditions", []) if c["condition"] == "null" and c.get("runs")]
    larges = [c for case in cases for c in case.get("conditions", []) if c["condition"] == "large" and c.get("runs")]
    out = {}
    if nulls:
        worst = max(nulls, key=lambda c: c["alarm_rate"])
        out["false_alarms"] = f"{worst['alarm_rate']:.0%} (upper 95% bound {worst['alarm_rate_ci95'][1]:.0%})"
    if larges:
        out["power_large"] = f"{min(c['alarm_rate'] for c in larges):.0%}"
    return out


def reliability_line(probes: Iterable[str], data: Mapping[str, Any] | None = None) -> str:
    """The Hub card's one line on verdict reliability, citing the suite version.

    Examples
    --------
    >>> from reports.reliability import reliability_line
    >>> reliability_line(["plugin"], data={"suite_version": "1", "probes": {}, "not_calibrated": {}})
    '**How reliable are these verdicts** (calibration suite 1): plugin not calibrated. Details in `model_card.html`.'
    """
    data = load_calibration() if data is None else data
    notes = reliability_notes(list(dict.fromkeys(probes)), data)
    version = data.get("suite_version", "?") if data else "none shipped"
    date = f", {data['date']}" if data and data.get("date") else ""
    clauses = "; ".join(note.short() for note in notes.values()) or "no probe ran"
    from reports.sections import md_escape

    return f"**How reliable are these verdicts** (calibration suite {version}{date}): {md_escape(clauses)}. " \
           "Details in `model_card.html`."
