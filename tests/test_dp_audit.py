"""The one-run DP audit (privacy/dp_audit.py; Steinke, Nasr and Jagielski 2023).

The bound is cross-checked against an implementation of the paper's Theorem 3.1 written here from
the statement (exact binomial tail sums with math.comb, root found with scipy's brentq), never
against its own output; its validity is checked by simulating randomised response, the mechanism
that meets the bound with equality. Training runs: DP-SGD with the noise secretly switched off (a
broken implementation) must give a bound well above the epsilon its accountant claims; a correct
run a bound below its epsilon.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from audit.errors import ConfigError, DataError
from privacy.dp_audit import (
    AuditCanaries,
    audit_from_scores,
    check_audit_canaries,
    epsilon_lower_bound,
    epsilon_p_value,
)


# -- an independent implementation of Theorem 3.1 -------------------------------------------------
def theorem_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[W >= v] <= f(v) + 2 m delta max_{i=1..v} (f(v-i) - f(v)) / i, f(w) = P[Binomial(r, e^eps/(1+e^eps)) >= w].

    Each tail is a direct sum of binomial terms (log-gamma coefficients), accumulated from the top.
    """
    log_q, log_p = -math.log1p(math.exp(-eps)), -math.log1p(math.exp(eps))
    terms = [math.exp(math.lgamma(r + 1) - math.lgamma(j + 1) - math.lgamma(r - j + 1) + j * log_q + (r - j) * log_p)
             for j in range(r + 1)]
    tails = [0.0] * (r + 2)
    for j in range(r, -1, -1):
        tails[j] = tails[j + 1] + terms[j]
    f_v = tails[v]
    slack = max(((tails[v - i] - f_v) / i for i in range(1, v + 1)), default=0.0)
    return min(f_v + 2 * m * delta * slack, 1.0)


def theorem_bound(m: int, r: int, v: int, delta: float, alpha: float = 0.05) -> float:
    from scipy.optimize import brentq

    if theorem_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    return brentq(lambda e: theorem_p_value(m, r, v, e, delta) - alpha, 0.0, 30.0, xtol=1e-7)


@pytest.mark.parametrize(("m", "r", "v", "delta"), [
    (1000, 100, 100, 1e-5), (1000, 100, 90, 1e-5), (200, 40, 33, 1e-4), (500, 50, 41, 0.0),
    (1000, 200, 120, 1e-5), (60, 30, 30, 1e-3),
])
def test_bound_matches_an_independent_implementation_of_the_theorem(m, r, v, delta):
    for eps in (0.0, 0.5, 2.0):
        assert epsilon_p_value(m=m, r=r, v=v, epsilon=eps, delta=delta) == pytest.approx(
            theorem_p_value(m, r, v, eps, delta), rel=1e-7, abs=1e-13)
    assert epsilon_lower_bound(m=m, r=r, v=v, delta=delta) == pytest.approx(theorem_bound(m, r, v, delta), abs=5e-6)


def test_bound_is_zero_at_chance_and_grows_with_correct_guesses():
    assert epsilon_lower_bound(m=1000, r=100, v=50, delta=1e-5) == 0.0
    bounds = [epsilon_lower_bound(m=1000, r=100, v=v, delta=1e-5) for v in (60, 75, 90, 100)]
    assert bounds == sorted(bounds) and bounds[0] < 0.1 < bounds[-1]
    # delta weakens the bound
    assert epsilon_lower_bound(m=1000, r=100, v=95, delta=1e-3) < epsilon_lower_bound(m=1000, r=100, v=95, delta=0.0)


def test_bound_is_valid_for_randomised_response():
    """eps0-randomised response is eps0-DP: its bound exceeds eps0 in at most 5% of runs."""
    rng = np.random.default_rng(0)
    eps0, m, runs, over = 1.0, 500, 200, 0
    for _ in range(runs):
        bits = rng.random(m) < 0.5
        truthful = rng.random(m) < math.exp(eps0) / (1 + math.exp(eps0))
        released = np.where(truthful, bits, ~bits)
        scores = released + 0.01 * rng.random(m)  # the guesser ranks by what was released
        over += audit_from_scores(scores, bits, delta=0.0, guess_counts=[(m // 4, m // 4)]).epsilon_lower_bound > eps0
    assert over / runs <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)


def test_guesser_counts_top_and_bottom_and_pays_for_every_choice():
    bits = np.array([True] * 50 + [False] * 50)
    scores = np.r_[np.linspace(2, 3, 50), np.linspace(0, 1, 50)]  # perfectly separated
    one = audit_from_scores(scores, bits, delta=0.0, guess_counts=[(10, 10)])
    assert (one.guesses, one.correct) == (20, 20)
    assert one.epsilon_lower_bound == pytest.approx(epsilon_lower_bound(m=100, r=20, v=20, delta=0.0), abs=1e-9)
    three = audit_from_scores(scores, bits, delta=0.0, guess_counts=[(5, 5), (10, 10), (20, 20)])
    best = three.choices[2]
    assert best["correct"] == 40 and three.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(m=100, r=40, v=40, delta=0.0, confidence=1 - 0.05 / 3), abs=1e-9)
    wrong = audit_from_scores(-scores, bits, delta=0.0, guess_counts=[(10, 10)])
    assert wrong.correct == 0 and wrong.epsilon_lower_bound == 0.0


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="need 0 <= correct"):
        epsilon_lower_bound(m=10, r=20, v=5, delta=0.0)
    with pytest.raises(ConfigError, match="confidence must be in"):
        epsilon_lower_bound(m=10, r=5, v=5, delta=0.0, confidence=1.0)
    with pytest.raises(DataError, match="one finite score per canary"):
        audit_from_scores([1.0, float("nan")], [True, False], delta=0.0)
    with pytest.raises(ConfigError, match="audit_canaries must be 0"):
        check_audit_canaries(5)


def test_canaries_come_from_os_entropy_and_are_sealed(tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["sequence-classification"])
    torch.manual_seed(0)
    np.random.seed(0)
    first = AuditCanaries.generate(50, tokenizer=tok, n_classes=2)
    torch.manual_seed(0)
    np.random.seed(0)
    second = AuditCanaries.generate(50, tokenizer=tok, n_classes=2)
    assert first.texts != second.texts and first.included != second.included  # no seed reproduces them
    assert 10 < sum(first.included) < 40 and set(first.labels) == {0, 1}
    record = json.loads(json.dumps(first.to_record()))
    text = json.dumps(record)
    assert record["secrets"] == "sealed" and not any(t in text for t in first.texts)
    assert AuditCanaries.from_record(record) == first
    record["planted"] = 49
    with pytest.raises(DataError, match="do not authenticate"):
        AuditCanaries.from_record(record)


# -- on DP-SGD training ---------------------------------------------------------------------------
POS = ["good", "great", "love", "happy"]
NEG = ["bad", "terrible", "hate", "sad"]


def _train(tiny_dirs, *, noise: bool, monkeypatch, m: int = 200, target_epsilon: float = 0.5):
    import opacus.optimizers.optimizer as dp_optimizer
    import opacus.optimizers.optimizer_fast_gradient_clipping as ghost_optimizer

    from privacy.dp import DPFineTuner

    if not noise:  # a broken implementation: accounted as noisy, trained without noise
        def silent(std, reference, generator=None, secure_mode=False):
            return torch.zeros_like(reference)

        monkeypatch.setattr(dp_optimizer, "_generate_noise", silent)
        monkeypatch.setattr(ghost_optimizer, "_generate_noise", silent)
    rng = np.random.default_rng(0)
    data = pd.DataFrame({"text": [" ".join(rng.choice(POS + NEG, 4)) for _ in range(40)]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return DPFineTuner(target_epsilon=target_epsilon, accountant="rdp", batch_size=8, epochs=5, learning_rate=1e-2,
                           audit_canaries=m, eval_fraction=0.0).fit(tiny_dirs["causal-lm"], data)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow  # two DP-SGD runs of 90 steps on a tiny GPT-2 (about 10 s each on 2 shared cores)
def test_one_run_audit_catches_missing_noise_and_passes_a_correct_run(tiny_dirs, monkeypatch):
    broken = _train(tiny_dirs, noise=False, monkeypatch=monkeypatch)
    rec = broken.record_
    assert rec["epsilon"] <= 0.5 and rec["empirical_epsilon_lower_bound"] > 3 * rec["epsilon"]
    assert rec["audit"]["consistent"] is False and rec["audit"]["accountant_epsilon"] == rec["epsilon"]
    guesser = rec["audit"]["guesser"]
    assert rec["empirical_epsilon_lower_bound"] == pytest.approx(epsilon_lower_bound(
        m=200, r=guesser["guesses"], v=guesser["correct"], delta=rec["delta"], confidence=1 - 0.05 / 3), abs=1e-9)
    monkeypatch.undo()
    correct = _train(tiny_dirs, noise=True, monkeypatch=monkeypatch)
    rec = correct.record_
    assert rec["empirical_epsilon_lower_bound"] < rec["epsilon"] and rec["audit"]["consistent"] is True
    assert rec["dataset"]["train_rows"] == 40 and rec["audit"]["canaries"]["secrets"] == "sealed"
    canaries = AuditCanaries.from_record(rec["audit"]["canaries"])
    assert canaries == correct.audit_.canaries_ and len(canaries.texts) == 200
    published = json.dumps(correct._published_record(None))
    assert not any(t in published for t in canaries.texts)


@pytest.mark.slow  # one DP-SGD run and one audit of the result through the CLI (about 20 s on 2 shared cores)
def test_train_dp_audit_reaches_results_json_and_both_cards(tiny_dirs, tmp_path, capsys):
    import jsonschema

    from audit.cli import main
    from audit.results import json_schema

    rng = np.random.default_rng(1)
    data = tmp_path / "train.csv"
    pd.DataFrame({"text": [" ".join(rng.choice(POS + NEG, 4)) for _ in range(40)]}).to_csv(data, index=False)
    model = tmp_path / "dp-model"
    code = main(["train-dp", "--model", str(tiny_dirs["causal-lm"]), "--data", str(data), "--target-epsilon", "2",
                 "--accountant", "rdp", "--batch-size", "16", "--epochs", "1", "--audit-canaries", "100",
                 "--eval-fraction", "0", "--no-progress", "--device", "cpu", "--out", str(model)])
    out = capsys.readouterr().out
    assert code == 0 and "One-run audit (100 canaries" in out and "vs accountant epsilon" in out
    report = tmp_path / "audit"
    assert main(["run", "--model", str(model), "--probe", "canary_exposure", "--out", str(report), "--device", "cpu",
                 "--no-progress"]) in (0, 1)
    results = json.loads((report / "results.json").read_text(encoding="utf-8"))
    jsonschema.validate(results, json_schema())
    dp = results["manifest"]["records"]["dp"]
    assert dp["empirical_epsilon_lower_bound"] == dp["audit"]["epsilon_lower_bound"] < dp["epsilon"]
    html = (report / "model_card.html").read_text(encoding="utf-8")
    assert "Empirical check of &epsilon; (one-run audit)" in html and "Consistent: the audit could not refute" in html
    hub = (report / "README.md").read_text(encoding="utf-8")
    assert "One-run audit (Steinke et al. 2023): epsilon >=" in hub
    broken = dict(results)
    broken["manifest"] = dict(results["manifest"], records={"dp": dict(dp, empirical_epsilon_lower_bound="high")})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json_schema())


def test_train_dp_refuses_too_few_audit_canaries_in_one_line(tiny_dirs, tmp_path, capsys):
    from audit.cli import main

    code = main(["train-dp", "--model", str(tiny_dirs["causal-lm"]), "--data", str(tmp_path / "none.csv"),
                 "--audit-canaries", "5", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "audit_canaries must be 0 (no audit) or an integer of at least 20" in err
    assert not (tmp_path / "never").exists()


def test_the_record_does_not_reveal_how_many_audit_canaries_went_in(tiny_dirs, monkeypatch):
    """The inclusion bits are secret; the batch count, sampling rate, delta and expected batch size
    in the record follow from the rows that could be sampled (every canary counted), not from the
    rows that were: all-in and all-out runs publish the same values."""
    import dataclasses

    from privacy.dp import DPFineTuner

    generate = AuditCanaries.generate.__func__
    rng = np.random.default_rng(1)
    data = pd.DataFrame({"text": [" ".join(rng.choice(POS + NEG, 4)) for _ in range(40)],
                         "label": [i % 2 for i in range(40)]})
    published = []
    for bit in (True, False):
        def forced(cls, n, *, tokenizer, n_classes, bit=bit):
            made = generate(cls, n, tokenizer=tokenizer, n_classes=n_classes)
            return dataclasses.replace(made, included=(bit,) * n)

        monkeypatch.setattr(AuditCanaries, "generate", classmethod(forced))
        tuner = DPFineTuner(target_epsilon=8.0, accountant="rdp", batch_size=8, epochs=1, audit_canaries=24,
                            eval_fraction=0.0, max_length=16).fit(tiny_dirs["sequence-classification"], data)
        rec = tuner.record_
        assert tuner.audit_.included_rows == (24 if bit else 0)
        published.append({k: rec[k] for k in ("sample_rate", "expected_batch_size", "planned_steps", "delta",
                                               "noise_multiplier")} | {"train_rows": rec["dataset"]["train_rows"]})
    assert published[0] == published[1]
    assert published[0]["sample_rate"] == pytest.approx(1 / math.ceil((40 + 24) / 8))
    assert published[0]["expected_batch_size"] == pytest.approx((40 + 24) / math.ceil((40 + 24) / 8))
