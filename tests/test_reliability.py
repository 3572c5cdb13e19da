"""The cards' "How reliable are these verdicts" notes, from the calibration suite's results."""

from __future__ import annotations

import re

import pytest

from audit import AuditConfig, Auditor, Metric, ProbeResult
from reports import render_html_card, render_markdown_card
from reports.reliability import load_calibration, reliability_notes
from tests.tiny import write_seat_test

CALIBRATION = {
    "suite_version": "7", "date": "2026-12-01 13:00 UTC", "runs_per_condition": 40,
    "probes": {"seat": [{
        "verdict": "significant association", "targets_met": {"false_alarm": True, "coverage": False, "no_errors": True},
        "conditions": [
            {"condition": "null", "runs": 40, "alarms": 2, "alarm_rate": 0.05, "alarm_rate_ci95": [0.0061, 0.1692],
             "coverage": {"effect size": {"rate": 0.95, "ci95": [0.83, 0.99], "runs": 40}}},
            {"condition": "large", "runs": 40, "alarms": 39, "alarm_rate": 0.975, "alarm_rate_ci95": [0.87, 1.0],
             "coverage": {"effect size": {"rate": 0.85, "ci95": [0.70, 0.94], "runs": 40}}},
        ]}]},
    "not_calibrated": {"attention": "gives no verdict"},
}


@pytest.fixture(scope="module")
def audit_with_plugin(tiny_targets, tmp_path_factory):
    test = write_seat_test(tmp_path_factory.mktemp("seat") / "t.jsonl", ["he", "him", "his"], ["she", "her", "hers"],
                           ["doctor", "engineer"], ["nurse", "teacher"])
    config = AuditConfig(select=["seat"], probes={"seat": {"params": {"test_files": [str(test)], "n_samples": 200,
                                                                      "n_boot": 50}}})
    results = Auditor(config).run(tiny_targets["encoder"])
    plugin = ProbeResult(probe="third_party_probe", status="warned", summary="A plugin's verdict.",
                         metrics={"score": Metric(value=0.3)})
    return results.model_copy(update={"results": [*results.results, plugin]})


@pytest.fixture
def shipped(monkeypatch):
    monkeypatch.setattr("reports.reliability.load_calibration", lambda: CALIBRATION)


def _article(html: str, probe: str) -> str:
    match = re.search(rf'<article id="probe-{probe}">(.*?)</article>', html, re.S)
    assert match, f"no article for {probe}"
    return match.group(1)


def test_card_cites_measured_rates_for_a_calibrated_probe(audit_with_plugin, shipped):
    seat = _article(render_html_card(audit_with_plugin), "seat")
    assert "How reliable are these verdicts" in seat
    assert "calibration suite (version 7, 2026-12-01 13:00 UTC, 40 independent runs" in seat
    assert "false alarms on a model with nothing planted 2/40 (5%, 95% CI 1% to 17%)" in seat
    assert "detection of a planted effect large 98%" in seat
    # Coverage 85% misses the 93% target, and the card says so.
    assert "lowest coverage of the planted truth by the 95% interval effect size 85%" in seat
    assert "Below the suite's targets" in seat and "interval coverage" in seat


def test_card_says_not_calibrated_for_a_third_party_probe(audit_with_plugin, shipped):
    plugin = _article(render_html_card(audit_with_plugin), "third_party_probe")
    assert "How reliable are these verdicts" in plugin
    assert "Not calibrated: the calibration suite does not cover this probe" in plugin
    assert "false alarms" not in plugin


def test_hub_card_has_one_reliability_line(audit_with_plugin, shipped):
    markdown = render_markdown_card(audit_with_plugin)
    lines = [line for line in markdown.splitlines() if "How reliable are these verdicts" in line]
    assert len(lines) == 1
    assert "calibration suite 7" in lines[0]
    assert "seat false alarms 5% (upper 95% bound 17%), power on a large effect 98% below target" in lines[0]
    assert "third\\_party\\_probe not calibrated" in lines[0]


def test_built_in_probe_listed_as_not_calibrated_says_why():
    note = reliability_notes(["attention"], CALIBRATION)["attention"]
    assert not note.calibrated and note.reason == "gives no verdict"


def test_without_shipped_results_every_probe_is_not_calibrated(monkeypatch):
    monkeypatch.setattr("reports.reliability.load_calibration", lambda: None)
    note = reliability_notes(["seat"])["seat"]
    assert not note.calibrated and "ships no calibration results" in note.reason


def test_shipped_results_cover_the_built_in_verdicts():
    data = load_calibration()
    if data is None:
        pytest.skip("reports/calibration.json not written yet: run python -m benchmarks.calibration")
    assert data["runs_per_condition"] >= 40
    covered = set(data["probes"]) | set(data["not_calibrated"])
    for probe in ("seat", "counterfactual", "group_fairness", "crows_pairs", "stereoset", "generation",
                  "membership_inference", "faithfulness", "decision_path"):
        assert probe in covered, probe


def test_a_result_measured_on_earlier_code_is_marked_stale():
    data = {**CALIBRATION, "probes": {"seat": [{**CALIBRATION["probes"]["seat"][0], "stale": True}]}}
    note = reliability_notes(["seat"], data)["seat"]
    assert note.calibrated
    assert "significant association: measured on earlier code of this probe (stale)" in note.missed
