"""rai-audit compare: deltas and intervals against a direct computation, refusals, the card."""

from __future__ import annotations

import json
import math

import pytest

from audit.cli import main
from audit.errors import DataError
from audit.probe import Metric, ProbeResult
from audit.results import AuditResults, Manifest
from reports.compare import compare_results, render_comparison_html


def manifest(model_id="tiny/classifier", fingerprint="sha256:base", records=None):
    return Manifest(rai_audit_version="0.1.0", model_id=model_id, model_path="/m", fingerprint=fingerprint,
                    kind="sequence-classification", n_parameters=10, device="cpu", max_length=64, seed=0,
                    started_at="2025-01-01T00:00:00", finished_at="2025-01-01T00:01:00", duration_s=1.0,
                    library_versions={}, records=records or {})


def audit(dpd, dpd_ci, acc, acc_ci, flip=0.2, *, fingerprint="sha256:base", records=None, model_id="tiny/classifier",
          probes=("group_fairness", "counterfactual")):
    results = []
    if "group_fairness" in probes:
        results.append(ProbeResult(probe="group_fairness", status="failed", summary="gap", category="bias",
                                   headline="max_demographic_parity_difference", params={"alpha": 0.05}, metrics={
            "max_demographic_parity_difference": Metric(value=dpd, ci=dpd_ci, ci_level=0.95,
                                                        direction="lower_is_better"),
            "accuracy": Metric(value=acc, ci=acc_ci, ci_level=0.95, direction="higher_is_better")}))
    if "counterfactual" in probes:
        results.append(ProbeResult(probe="counterfactual", status="passed", summary="ok", category="bias",
                                   headline="flip_rate", params={}, metrics={
            "flip_rate": Metric(value=flip, direction="lower_is_better")}))
    return AuditResults(manifest=manifest(model_id, fingerprint, records), results=results)


def derived(technique, **kw):
    return {"debiasing": {"technique": technique, "source_fingerprint": "sha256:base"}, **kw}


def test_deltas_intervals_and_holm_match_a_direct_computation():
    base = audit(0.30, (0.22, 0.38), 0.90, (0.87, 0.93))
    thr = audit(0.05, (0.01, 0.09), 0.86, (0.83, 0.89), flip=0.1, fingerprint="sha256:t",
                records=derived("threshold"))
    cmp = compare_results([base, thr])
    assert [i["name"] for i in cmp["inputs"]] == ["baseline", "threshold"]

    # direct computation with the standard library only
    z = 1.959963984540054
    def se(ci):
        return (ci[1] - ci[0]) / (2 * z)

    def change(b, b_ci, v, v_ci):
        d = v - b
        s = math.sqrt(se(b_ci) ** 2 + se(v_ci) ** 2)
        p = math.erfc(abs(d) / s / math.sqrt(2))
        return d, (d - z * s, d + z * s), p

    d_dpd, ci_dpd, p_dpd = change(0.30, (0.22, 0.38), 0.05, (0.01, 0.09))
    d_acc, ci_acc, p_acc = change(0.90, (0.87, 0.93), 0.86, (0.83, 0.89))
    rows = {r["metric"]: r for r in cmp["probes"][0]["metrics"]}
    got_dpd, got_acc = rows["max_demographic_parity_difference"]["deltas"][1], rows["accuracy"]["deltas"][1]
    assert got_dpd["delta"] == pytest.approx(d_dpd)
    assert got_dpd["ci"] == pytest.approx(list(ci_dpd), abs=1e-9)
    assert got_dpd["p_value"] == pytest.approx(p_dpd, rel=1e-6)
    assert got_acc["delta"] == pytest.approx(d_acc) and got_acc["ci"] == pytest.approx(list(ci_acc), abs=1e-9)
    # Holm over the two tested changes of this input
    lo, hi = sorted([p_dpd, p_acc])
    holm = {lo: min(1, 2 * lo), hi: min(1, max(2 * lo, hi))}
    assert got_dpd["p_holm"] == pytest.approx(holm[p_dpd]) and got_acc["p_holm"] == pytest.approx(holm[p_acc])
    assert got_dpd["significant"] is True and got_dpd["improved"] is True
    assert got_acc["improved"] is False and got_acc["significant"] is (holm[p_acc] < 0.05)
    # a metric without an interval: change only, no test
    flip = cmp["probes"][1]["metrics"][0]["deltas"][1]
    assert flip["delta"] == pytest.approx(-0.1) and flip["ci"] is None and flip["significant"] is None

    (trade,) = cmp["tradeoffs"]
    assert [(e["probe"], e["metric"]) for e in trade["fairness"]] == [
        ("group_fairness", "max_demographic_parity_difference"), ("counterfactual", "flip_rate")]
    assert [e["metric"] for e in trade["performance"]] == ["accuracy"]
    assert trade["performance"][0]["delta"] == pytest.approx(-0.04)
    json.dumps(cmp, allow_nan=False)


def test_refuses_other_models_and_other_probe_sets_unless_allowed():
    base = audit(0.3, (0.2, 0.4), 0.9, (0.85, 0.95))
    other = audit(0.1, (0.0, 0.2), 0.9, (0.85, 0.95), fingerprint="sha256:x", model_id="someone/else")
    with pytest.raises(DataError, match="--allow-different-models"):
        compare_results([base, other])
    cmp = compare_results([base, other], allow_different_models=True)
    assert any("not derived from the baseline" in w for w in cmp["warnings"])

    fewer = audit(0.1, (0.0, 0.2), 0.9, (0.85, 0.95), fingerprint="sha256:t", records=derived("cda"),
                  probes=("group_fairness",))
    with pytest.raises(DataError, match="different probe sets"):
        compare_results([base, fewer])
    cmp = compare_results([base, fewer], allow_different_models=True)
    assert [p["probe"] for p in cmp["probes"]] == ["group_fairness"]
    with pytest.raises(DataError, match="at least two results files"):
        compare_results([base])


def test_card_is_self_contained_and_escaped():
    base = audit(0.3, (0.2, 0.4), 0.9, (0.85, 0.95))
    evil = audit(0.1, (0.05, 0.15), 0.88, (0.85, 0.91), fingerprint="sha256:t",
                 records=derived("<script>alert(1)</script>"))
    html = render_comparison_html(compare_results([base, evil]))
    assert html.startswith("<!DOCTYPE html>")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "http://" not in html and "https://" not in html
    assert "significantly better" in html


def test_cli_writes_json_and_html_and_refuses_in_one_line(tmp_path, capsys):
    base = audit(0.3, (0.2, 0.4), 0.9, (0.85, 0.95))
    thr = audit(0.05, (0.01, 0.09), 0.86, (0.83, 0.89), fingerprint="sha256:t", records=derived("threshold"))
    other = audit(0.1, (0.0, 0.2), 0.9, (0.85, 0.95), fingerprint="sha256:x", model_id="someone/else")
    paths = [base.save(tmp_path / "a.json"), thr.save(tmp_path / "b.json"), other.save(tmp_path / "c.json")]
    assert main(["compare", str(paths[0]), str(paths[1]), "--out", str(tmp_path / "out")]) == 0
    saved = json.loads((tmp_path / "out" / "comparison.json").read_text())
    assert saved["inputs"][1]["technique"] == "threshold"
    assert (tmp_path / "out" / "comparison.html").read_text().startswith("<!DOCTYPE html>")
    capsys.readouterr()
    assert main(["compare", str(paths[0]), str(paths[2]), "--out", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-different-models" in err[0]
    assert not (tmp_path / "out2").exists()
