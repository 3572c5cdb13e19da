"""Membership inference at low FPR and with reference models (privacy/mia.py, the membership probe).

Every number is checked against an independent computation: brute force over scikit-learn's ROC
thresholds for TPR at FPR, explicit loops for LiRA and RMIA, unbatched forward passes written in
the tests for Min-K% Prob and zlib.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from audit import AuditConfig, Auditor, load_target
from audit.errors import ConfigError
from privacy.mia import (
    NOT_A_PROOF,
    attack_metrics,
    lira_offline_scores,
    min_k_scores,
    rmia_scores,
    tpr_at_fpr,
    zlib_scores,
)
from privacy.probes import MembershipInferenceProbe
from tests.test_leakage import _write_jsonl, direct_token_log_probs, random_sentences, train_causal_lm
from tests.tiny import make_tiny_model


def brute_tpr(members: np.ndarray, others: np.ndarray, level: float) -> float:
    truth = np.r_[np.ones(members.size), np.zeros(others.size)]
    fpr, tpr, _ = roc_curve(truth, np.r_[members, others], drop_intermediate=False)
    return float(tpr[fpr <= level + 1e-12].max())


def test_tpr_at_fpr_matches_brute_force_over_roc_thresholds():
    rng = np.random.default_rng(0)
    for n_m, n_o in ((50, 200), (300, 1000), (20, 20)):
        members = np.round(rng.normal(0.7, 1, n_m), 1)  # ties between and within groups
        others = np.round(rng.normal(0, 1, n_o), 1)
        for level in (0.0, 0.001, 0.01, 0.1, 0.5):
            assert tpr_at_fpr(members, others, level) == pytest.approx(brute_tpr(members, others, level), abs=1e-12)
    batch_m, batch_o = rng.normal(1, 1, (5, 40)), rng.normal(0, 1, (5, 120))
    np.testing.assert_allclose(tpr_at_fpr(batch_m, batch_o, 0.05),
                               [brute_tpr(batch_m[i], batch_o[i], 0.05) for i in range(5)], atol=1e-12)


def test_attack_metrics_match_sklearn_and_say_when_the_fpr_cannot_be_resolved():
    rng = np.random.default_rng(1)
    members, others = rng.normal(1.5, 1, 200), rng.normal(0, 1, 500)
    result = attack_metrics("demo", members, others, rng=np.random.default_rng(0), n_boot=400)
    truth = np.r_[np.ones(200), np.zeros(500)]
    assert result.auc.estimate == pytest.approx(roc_auc_score(truth, np.r_[members, others]), abs=1e-12)
    for level, tpr in result.tpr.items():
        assert tpr.estimate == pytest.approx(brute_tpr(members, others, level), abs=1e-12)
        assert tpr.low <= tpr.estimate <= tpr.high
    assert result.resolved(0.01) and not result.resolved(0.001) and result.smallest_fpr == pytest.approx(0.002)


def test_lira_offline_matches_an_explicit_computation():
    rng = np.random.default_rng(2)
    refs = rng.gamma(2, 1, (4, 30))
    target = rng.gamma(2, 1, 30)
    for logit in (False, True):
        ours = lira_offline_scores(target, refs, logit=logit)
        phi = (lambda loss: math.log(math.exp(-loss) / (1 - math.exp(-loss)))) if logit else (lambda loss: -loss)
        ref_phi = [[phi(v) for v in row] for row in refs]
        means = [sum(ref_phi[j][i] for j in range(4)) / 4 for i in range(30)]
        deviations = [ref_phi[j][i] - means[i] for j in range(4) for i in range(30)]
        spread = math.sqrt(sum(d * d for d in deviations) / (len(deviations) - 1))
        np.testing.assert_allclose(ours, [(phi(target[i]) - means[i]) / spread for i in range(30)], rtol=1e-9)


def test_rmia_offline_matches_pairwise_counting():
    rng = np.random.default_rng(3)
    tx, rx = rng.gamma(2, 1, 25), rng.gamma(2, 1, (3, 25))
    tz, rz = rng.gamma(2, 1, 40), rng.gamma(2, 1, (3, 40))
    a = 0.3

    def p_of(ref_col):
        return ((1 + a) * np.mean(np.exp(-ref_col)) + (1 - a)) / 2

    expected = []
    for i in range(25):
        dominated = 0
        for j in range(40):
            lr = (math.exp(-tx[i]) / p_of(rx[:, i])) / (math.exp(-tz[j]) / p_of(rz[:, j]))
            dominated += lr >= 1.0
        expected.append(dominated / 40)
    np.testing.assert_allclose(rmia_scores(tx, rx, tz, rz, a=a), expected, atol=1e-12)
    broken = rmia_scores(tx, rx, tz, rz, a=a, tie_break=True)
    fractions = np.asarray(expected)
    assert np.all(np.floor(broken * 40 + 1e-9) == np.round(fractions * 40))  # less than one step added
    ratio = [math.exp(-tx[i]) / p_of(rx[:, i]) for i in range(25)]
    assert list(np.argsort(broken, kind="stable")) == list(np.argsort(ratio, kind="stable"))  # ties go by the ratio
    with pytest.raises(ConfigError, match="a must be in"):
        rmia_scores(tx, rx, tz, rz, a=2)


def test_min_k_and_zlib_match_direct_computation(tiny_dirs, tiny_targets):
    texts = ["the doctor said that she was happy .", "john works as a nurse", "good movie"]
    target = tiny_targets["causal-lm"]
    for k in (0.2, 0.5, 1.0):
        expected = []
        for text in texts:
            logp = np.sort(direct_token_log_probs(tiny_dirs["causal-lm"], text))
            expected.append(logp[: max(1, math.ceil(k * logp.size))].mean())
        np.testing.assert_allclose(min_k_scores(target, texts, k=k), expected, rtol=1e-4)
    losses = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(zlib_scores(losses, texts), [-v / len(zlib.compress(t.encode())) for v, t in zip(losses, texts)])


@pytest.fixture(scope="module")
def mia_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("mia")
    base = make_tiny_model("causal-lm", root / "base")
    members = random_sentences(32, seed=11)
    overfit = train_causal_lm(base, members, root / "overfit")
    return base, overfit, members


def _probe_run(model_dir, members, others, tmp_path, **params):
    probe = MembershipInferenceProbe(members=_write_jsonl(tmp_path / "m.jsonl", members),
                                     non_members=_write_jsonl(tmp_path / "n.jsonl", others), n_boot=500, **params)
    return Auditor(AuditConfig(seed=0), probes=[probe]).run(load_target(model_dir, progress=False, device="cpu")).results[0]


@pytest.mark.slow  # trains a tiny GPT-2 until it memorises (10-20 s on 2 shared cores)
def test_low_fpr_tpr_is_high_on_an_overfit_model_and_near_the_fpr_on_a_non_member_model(mia_models, tmp_path):
    base, overfit, members = mia_models
    others = random_sentences(32, seed=12)
    leaky = _probe_run(overfit, members, others, tmp_path)
    for name in ("tpr_at_0.01_fpr", "min_k_tpr_at_0.01_fpr", "zlib_tpr_at_0.01_fpr"):
        metric = leaky.metrics[name]
        assert metric.value > 0.3 and metric.ci[0] > 0.01, (name, metric)
    scores = -np.asarray([direct_token_log_probs(overfit, t).mean() for t in members + others])
    assert leaky.metrics["tpr_at_0.01_fpr"].value == pytest.approx(brute_tpr(-scores[:32], -scores[32:], 0.01), abs=1e-9)
    assert "TPR at FPR 0" in leaky.metrics["tpr_at_0.001_fpr"].description  # 32 non-members cannot show 0.1%
    assert NOT_A_PROOF in leaky.summary and "lira, rmia" in leaky.summary  # what did not run is said
    assert leaky.tables[0].title == "Attacks at low false-positive rates" and "<svg" in leaky.figures[0].svg
    # a model that saw none of the samples: 400 members and 400 non-members alike
    clean = _probe_run(base, random_sentences(400, seed=13), random_sentences(400, seed=14), tmp_path)
    tpr = clean.metrics["tpr_at_0.01_fpr"]
    assert tpr.value < 0.05 and tpr.ci[0] <= 0.01 <= tpr.ci[1] + 0.02, tpr


@pytest.mark.slow  # also fine-tunes two reference models (about 20 s on 2 shared cores)
def test_reference_model_attacks_run_from_the_base_model_on_population_data(mia_models, tmp_path):
    base, overfit, members = mia_models
    population = random_sentences(64, seed=15)
    result = _probe_run(overfit, members, random_sentences(32, seed=12), tmp_path, reference_base=str(base),
                        reference_data=_write_jsonl(tmp_path / "pop.jsonl", population), n_reference_models=2,
                        reference_epochs=2)
    for name in ("lira", "rmia"):
        assert result.metrics[f"{name}_auc"].value > 0.8, name
        assert f"{name}_tpr_at_0.01_fpr" in result.metrics
    assert "not run" not in result.summary or "lira" not in result.summary.split("not run")[-1]
    with pytest.raises(ConfigError, match="give both reference_base"):
        MembershipInferenceProbe(reference_data="pop.jsonl")
