"""The calibration suite: its statistics, its target checks, and a reduced run of real probes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from benchmarks.calibration.core import Case, Outcome, clopper_pearson, run_case


@pytest.mark.parametrize(("k", "n"), [(0, 40), (2, 40), (17, 40), (40, 40), (3, 7)])
def test_clopper_pearson_matches_the_beta_quantiles(k, n):
    rate, low, high = clopper_pearson(k, n)
    # Clopper and Pearson (1934): the interval's ends are beta quantiles.
    expected_low = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
    expected_high = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
    assert rate == k / n
    assert low == pytest.approx(expected_low, abs=1e-9)
    assert high == pytest.approx(expected_high, abs=1e-9)


def _coin_case(p_alarm: float, p_cover: float) -> Case:
    def run(seed: int, effect: float) -> Outcome:
        rng = np.random.default_rng(seed)
        return Outcome(status="warned", alarm=bool(rng.random() < p_alarm + effect),
                       covered={"interval": bool(rng.random() < p_cover)})

    return Case(probe="coin", verdict="coin", description="", effect_unit="", effects={"null": 0.0, "large": 0.5},
                run=run)


def test_targets_fail_for_a_verdict_that_alarms_too_often():
    result = run_case(_coin_case(p_alarm=0.3, p_cover=0.99), runs=60)
    assert result.null.alarms > 6
    assert result.targets()["false_alarm"] is False
    assert result.targets()["coverage"] is True


def test_targets_fail_for_intervals_that_cover_too_rarely():
    result = run_case(_coin_case(p_alarm=0.0, p_cover=0.7), runs=60)
    assert result.targets() == {"false_alarm": True, "coverage": False, "no_errors": True}


def _counted_case(alarms: int) -> Case:
    """Alarms on exactly the first ``alarms`` null runs (counted in the closure), whatever the seed."""
    seen = []

    def run(seed: int, effect: float) -> Outcome:
        seen.append(seed)
        return Outcome(status="warned", alarm=len(seen) <= alarms)

    return Case(probe="counted", verdict="v", description="", effect_unit="", effects={"null": 0.0}, run=run,
                max_null_runs=200)


@pytest.mark.parametrize(("alarms", "met", "within"), [(10, True, None), (11, False, True), (12, False, False),
                                                      (18, False, False), (21, False, False)])
def test_a_rate_just_above_5_percent_is_within_error_not_met(alarms, met, within):
    result = run_case(_counted_case(alarms), runs=40, null_runs=200)
    assert result.null.runs == 200 and result.null.alarms == alarms
    targets = result.targets()
    assert targets["false_alarm"] is met
    assert targets.get("false_alarm_within_error") is within
    if within is not None:  # one-sided exact binomial test against 5%, summed term by term
        from math import comb

        tail = sum(comb(200, k) * 0.05**k * 0.95 ** (200 - k) for k in range(alarms, 201))
        assert (tail > 0.05 and clopper_pearson(alarms, 200)[2] <= 0.10) is within


def test_an_erroring_run_is_counted_not_dropped():
    def run(seed: int, effect: float) -> Outcome:
        raise RuntimeError("probe broke")

    case = Case(probe="broken", verdict="v", description="", effect_unit="", effects={"null": 0.0}, run=run)
    result = run_case(case, runs=3)
    assert result.null.runs == 0 and result.null.statuses == {"errored": 3}
    assert result.targets()["no_errors"] is False and result.targets()["false_alarm"] is None


def test_every_run_gets_its_own_seed():
    seen = []

    def run(seed: int, effect: float) -> Outcome:
        seen.append(seed)
        return Outcome(status="passed", alarm=False)

    run_case(Case(probe="p", verdict="v", description="", effect_unit="", effects={"null": 0.0, "large": 1.0},
                  run=run), runs=20)
    assert len(set(seen)) == 40


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["seat", "crows_pairs", "membership_inference"])
def test_reduced_calibration_run(probe):
    """A reduced run of the suite on real probes: few false alarms on the null, a large effect detected.

    40 null runs: at most 4 false alarms (the full suite's target is 5% with an upper bound of
    10%); 15 runs with a large planted effect: detected in at least 80% and covered by the 95%
    interval in at least 80% (a reduced run cannot resolve 93%).
    """
    from benchmarks.calibration.suite import all_cases

    (case,) = [c for c in all_cases() if c.probe == probe and "clustered" not in c.verdict]
    null = run_case(case, runs=40, conditions=["null"]).null
    assert null.errors == []
    assert null.alarms <= 4, f"{probe}: {null.alarms}/40 false alarms on a model with nothing planted"
    (large,) = run_case(case, runs=15, conditions=["large"]).conditions
    assert large.alarms >= 12, f"{probe}: a large planted effect was detected in {large.alarms}/15 runs"
    for name, (rate, _, _, n) in large.coverage().items():
        assert n == 15 and rate >= 0.8, f"{probe}: {name} interval covered the truth in {rate:.0%}"


@pytest.mark.slow
def test_suite_command_writes_a_partial_run_where_asked(tmp_path):
    from benchmarks.calibration.__main__ import main

    out = tmp_path / "cal.json"
    assert main(["--runs", "2", "--null-runs", "2", "--cases", "crows_pairs", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["runs_per_condition"] == 2 and list(data["probes"]) == ["crows_pairs"]
    conditions = data["probes"]["crows_pairs"][0]["conditions"]
    assert [c["condition"] for c in conditions] == ["null", "small", "medium", "large"]
    assert all(c["runs"] == 2 for c in conditions)


@pytest.mark.slow
def test_changed_only_reruns_exactly_the_cases_whose_source_changed(tmp_path, capsys):
    from benchmarks.calibration.__main__ import main

    out = tmp_path / "cal.json"
    # SEAT is the unchanged case: two runs per condition take seconds (membership inference, used
    # here before, trains reference models in every run and made this the suite's slowest test).
    assert main(["--runs", "2", "--null-runs", "2", "--cases", "crows_pairs", "seat", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    crows = data["probes"]["crows_pairs"][0]
    assert crows["source_digest"].startswith("sha256:")
    # Pretend the CrowS-Pairs code changed since its result was measured.
    crows["source_digest"] = "sha256:0000000000000000"
    out.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["--runs", "2", "--null-runs", "2", "--cases", "crows_pairs", "seat", "--changed-only", "--json",
                 str(out)]) == 0
    log = capsys.readouterr().out
    seat = ["seat:significant association (independent sentences)",
            "seat:significant association (sentences clustered by word)"]
    assert all(f"{key}: source unchanged" in log for key in seat)
    assert "crows_pairs:metric score significantly different from 50: source unchanged" not in log
    rerun = json.loads(out.read_text())
    assert rerun["probes"]["crows_pairs"][0]["source_digest"] != "sha256:0000000000000000"
    assert rerun["reused_from_earlier_run"] == seat
