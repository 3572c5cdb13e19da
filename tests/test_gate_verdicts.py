"""Gates say what they did: unchecked tolerance gates, the overall verdict, probes that were not run."""

from __future__ import annotations

import json

import pytest

from audit.cli import main
from audit.results import AuditResults
from tests.tiny import make_tiny_model

SEAT = "probes:\n  seat:\n    params: {tests: [weat6], n_samples: 500, n_boot: 100}\n"
TOLERANCE = SEAT + "    gates:\n      mean_abs_effect_size: {tolerance: 0.1}\n"
IMPOSSIBLE = SEAT + "    gates:\n      mean_abs_effect_size: {max: 0.0}\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model("encoder", tmp_path_factory.mktemp("verdicts") / "model")


@pytest.fixture
def run(model, tmp_path, capsys):
    """``rai-audit run`` on the tiny model with ``config``: exit code, stdout, stderr, results."""

    def run(config: str, *extra: str, out: str = "out") -> tuple[int, str, str, AuditResults]:
        path = tmp_path / f"{out}.yaml"
        path.write_text("select: [seat]\n" + config)
        argv = ["run", "--model", str(model), "--config", str(path), "--out", str(tmp_path / out), "--no-progress", *extra]
        code = main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err, AuditResults.load(tmp_path / out / "results.json")

    return run


def _card_top(tmp_path, out: str) -> tuple[str, str]:
    markdown = (tmp_path / out / "README.md").read_text()
    html = (tmp_path / out / "model_card.html").read_text()
    return markdown[: markdown.index("## Model details")], html[: html.index('<section id="summary">')]


def test_tolerance_gate_without_baseline_is_said_not_checked(run, tmp_path):
    code, out, err, results = run(TOLERANCE)
    assert code == 0
    assert "gate not checked: seat.mean_abs_effect_size: no --baseline given" in err
    (gate,) = results.gates_not_checked
    assert (gate.probe, gate.metric, gate.bound, gate.threshold) == ("seat", "mean_abs_effect_size", "tolerance", 0.1)
    assert "Verdict:    passed (no release gate was checked: 1 gate(s) not checked: no --baseline given" in out
    markdown, html = _card_top(tmp_path, "out")
    assert "**Verdict: passed (no release gate was checked" in markdown
    assert "Verdict:</strong> passed (no release gate was checked" in html
    card = (tmp_path / "out" / "README.md").read_text()
    assert "### Gates not checked" in card and r"| seat | mean\_abs\_effect\_size | tolerance 0.1 |" in card
    assert "<h3>Gates not checked</h3>" in (tmp_path / "out" / "model_card.html").read_text()

    # with the baseline the same gate is checked, and nothing is said to be unchecked
    code, out, err, results = run(TOLERANCE, "--baseline", str(tmp_path / "out" / "results.json"),
                                   out="again")
    assert code == 0 and "gate not checked" not in err and not results.gates_not_checked
    assert [g.kind for g in results.gates] == ["regression"] and "Verdict:    passed\n" in out


def test_no_gates_configured_is_said(run, tmp_path):
    code, out, _, results = run(SEAT)
    assert code == 0 and not results.gates
    assert "Verdict:    passed (no release gates configured: only probe statuses were checked)" in out
    markdown, html = _card_top(tmp_path, "out")
    assert "no release gates configured" in markdown and "no release gates configured" in html


def test_failed_gate_verdict_names_it(run, tmp_path):
    code, out, _, results = run(IMPOSSIBLE)
    assert code == 1 and not results.passed
    expected = "failed because gate seat.mean_abs_effect_size (max 0) failed"
    assert results.verdict() == expected and f"Verdict:    {expected}" in out
    markdown, html = _card_top(tmp_path, "out")
    assert expected.replace("_", "\\_") in markdown and expected in html
    # --quiet prints only failures: the verdict of a failed audit is one
    code, out, err, _ = run(IMPOSSIBLE, "--quiet", out="quiet")
    assert code == 1 and out == "" and f"Verdict: {expected}" in err


def test_probes_not_run_are_listed_with_the_reason(run, tmp_path):
    code, out, _, results = run(SEAT, "--disable", "attention", "--json")
    assert code == 0
    summary = json.loads(out)
    assert results.probes_not_run["attention"] == "disabled (--disable)"
    assert results.probes_not_run["counterfactual"] == "not selected (--probe / select)"
    assert "seat" not in results.probes_not_run and summary["probes_not_run"] == results.probes_not_run
    assert summary["verdict"] == results.verdict()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "### Probes not run" in card and "- counterfactual: not selected" in card
    assert "<li>attention: disabled (--disable)</li>" in (tmp_path / "out" / "model_card.html").read_text()


def test_unchecked_gate_is_a_skipped_junit_case(run, tmp_path):
    from tests.test_pipeline import validate_junit

    code, *_ = run(TOLERANCE, "--junit", str(tmp_path / "junit.xml"))
    assert code == 0
    root = validate_junit(tmp_path / "junit.xml")
    (suite,) = [s for s in root.iter("testsuite") if s.get("name") == "rai-audit.gates"]
    (case,) = suite.iter("testcase")
    assert case.get("name") == "seat.mean_abs_effect_size no regression (tolerance 0.1)"
    assert case.find("skipped").get("message").startswith("no --baseline given")
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"


#: A gate on a probe that does not apply to an encoder (counterfactual needs a classifier or an LM).
NOT_APPLICABLE = SEAT + "  counterfactual:\n    gates:\n      max_score_gap: {max: 0.1}\n"


def test_gate_on_a_probe_that_did_not_run_fails(run):
    """It used to be recorded as passed ("gate not checked") and the audit exited 0."""
    code, out, err, results = run("select: [seat, counterfactual]\n" + NOT_APPLICABLE)
    assert results.results[[r.probe for r in results.results].index("counterfactual")].status == "not_applicable"
    (gate,) = [g for g in results.gates if g.probe == "counterfactual"]
    assert gate.passed is False and gate.value is None
    assert "could not be checked because counterfactual did not run (not_applicable" in gate.message
    assert "required: false" in gate.message
    assert code == 1 and "gate failed: counterfactual.max_score_gap" in err
    assert "failed because gate counterfactual.max_score_gap (max 0.1) failed" in out


def test_optional_gate_on_a_probe_that_did_not_run_is_said_not_checked(run):
    config = "select: [seat, counterfactual]\n" + NOT_APPLICABLE.replace("{max: 0.1}", "{max: 0.1, required: false}")
    code, _, err, results = run(config)
    assert code == 0 and not [g for g in results.gates if g.probe == "counterfactual"]
    (gate,) = results.gates_not_checked
    assert (gate.probe, gate.metric, gate.bound) == ("counterfactual", "max_score_gap", "max")
    assert "counterfactual did not run (not_applicable" in gate.reason
    assert "gate not checked: counterfactual.max_score_gap" in err


def test_gate_on_a_probe_left_out_of_the_plan_is_said_not_checked(run):
    code, _, err, results = run(NOT_APPLICABLE)  # select: [seat] only
    assert code == 0
    (gate,) = results.gates_not_checked
    assert gate.probe == "counterfactual" and "not in this audit's plan (not selected" in gate.reason
    assert "gate not checked: counterfactual.max_score_gap" in err
