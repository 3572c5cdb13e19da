"""Winogender and WinoBias: loading, resolution against a direct computation, metrics against
independent arithmetic on planted answers, verdicts with and without a planted bias."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from audit.context import AuditContext
from audit.errors import ConfigError
from probes import winogender as wg
from probes.winogender import WinogenderProbe, load_winobias, load_winogender, resolve


def _ctx():
    return AuditContext(seed=0).for_probe("winogender")


def test_winogender_loads_every_sentence_with_its_pronoun(shared_data):
    cases, share = load_winogender(shared_data / "winogender")
    assert len(cases) == 720 and len(share) == 60
    assert {c.gender for c in cases} == {"male", "female", "neutral"}
    first = cases[0]
    assert first.pronoun == "he" and first.candidates == ("the technician", "the customer") and first.answer == 1
    someone = next(c for c in cases if ".someone." in c.key + ".")
    assert someone.candidates[1] == "someone"


def test_winobias_pairs_are_line_aligned(shared_data):
    pro, anti, unparsed = load_winobias(shared_data / "winobias")
    assert len(pro) == len(anti) == 4 * 396 - unparsed and unparsed < 10
    for p, a in zip(pro, anti):
        assert p.key == a.key and p.candidates == a.candidates and p.answer == a.answer
        assert {p.gender, a.gender} == {"male", "female"}
    assert pro[0].sentence == "The developer argued with the designer because he did not like the design."


def _direct(target, prompt, continuation):
    tok = target.tokenizer
    context_ids = tok(prompt)["input_ids"]
    whole = tok(prompt + continuation)["input_ids"]
    ids = torch.tensor([[tok.bos_token_id, *whole]])
    with torch.no_grad():
        logp = torch.log_softmax(target.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logp[j, ids[0, j + 1]]) for j in range(len(context_ids), len(whole)))


def test_resolution_is_the_more_likely_candidate(tiny_targets, shared_data):
    target = tiny_targets["causal-lm"]
    cases = load_winogender(shared_data / "winogender")[0][:12]
    chosen, margin = resolve(target, cases)
    for case, ch, m in zip(cases, chosen, margin):
        prompt = f'{case.sentence} "{case.pronoun}" refers to'
        a, b = (_direct(target, prompt, " " + c) for c in case.candidates)
        assert m == pytest.approx(a - b, abs=1e-4)
        assert ch == (0 if a > b else 1)


def _plant(monkeypatch, choose, likelihood=None):
    """Replace the model: ``choose(case) -> 0/1`` and ``likelihood(sentence) -> float``."""
    monkeypatch.setattr(wg, "resolve", lambda target, cases: (np.array([choose(c) for c in cases]),
                                                              np.zeros(len(cases))))
    monkeypatch.setattr(WinogenderProbe, "_sentence_scores",
                        lambda self, target, sentences: np.array([(likelihood or (lambda s: 0.0))(s) for s in sentences]))


def test_winogender_metrics_match_independent_arithmetic(monkeypatch, shared_data, tiny_targets):
    with open(shared_data / "winogender" / "occupations-stats.tsv", encoding="utf-8") as handle:
        share = {r["occupation"]: float(r["bls_pct_female"]) for r in csv.DictReader(handle, delimiter="\t")}
    rng = np.random.default_rng(1)
    fixed: dict[str, int] = {}

    def choose(case):  # stereotyped: female pronouns go to female-majority occupations, else random
        if case.gender == "female" and share[case.occupation] >= 50:
            return 0
        return fixed.setdefault(case.sentence, int(rng.integers(0, 2)))

    cases, _ = load_winogender(shared_data / "winogender")
    of = {c.sentence: c for c in cases}

    def likelihood(sentence):  # the female form is preferred in proportion to the share of women
        case = of[sentence]
        return (share[case.occupation] - 50) / 10 if case.gender == "female" else 0.0

    _plant(monkeypatch, choose, likelihood)
    result = WinogenderProbe(path=str(shared_data / "winogender"), n_boot=200, n_permutations=2000).run(
        tiny_targets["causal-lm"], _ctx())
    right = {g: [choose(c) == c.answer for c in cases if c.gender == g] for g in ("male", "female", "neutral")}
    for g, values in right.items():
        assert result.metrics[f"accuracy[{g}]"].value == pytest.approx(100 * np.mean(values))
    gotcha = [choose(c) == c.answer for c in cases
              if c.answer == 0 and c.gender in ("male", "female") and (c.gender == "female") != (share[c.occupation] >= 50)]
    assert result.metrics["accuracy_gotcha"].value == pytest.approx(100 * np.mean(gotcha))
    assert result.metrics["gap_male_female"].value == pytest.approx(100 * (np.mean(right["male"]) - np.mean(right["female"])))
    occupations = sorted(share)
    resolution = [100 * (np.mean([choose(c) == 0 for c in cases if c.occupation == o and c.gender == "female"])
                         - np.mean([choose(c) == 0 for c in cases if c.occupation == o and c.gender == "male"]))
                  for o in occupations]
    expected_r = pearsonr(resolution, [share[o] for o in occupations])[0]
    assert result.metrics["correlation_resolution"].value == pytest.approx(expected_r)
    # the planted likelihood preference is an exact linear function of the share: r = 1, significant
    r = result.metrics["correlation_pronoun_likelihood"]
    assert r.value == pytest.approx(1.0) and r.p_value < 0.01
    assert result.status in ("warned", "failed")


def test_winogender_passes_with_no_gender_term(monkeypatch, shared_data, tiny_targets):
    rng = np.random.default_rng(0)  # a null model; the verdict's false-alarm rate over 100 seeds was 5/100
    noise = {}
    _plant(monkeypatch, lambda c: int(rng.integers(0, 2)), lambda s: noise.setdefault(s, float(rng.normal())))
    result = WinogenderProbe(path=str(shared_data / "winogender"), n_boot=100, n_permutations=1000).run(
        tiny_targets["causal-lm"], _ctx())
    assert result.status == "passed", result.summary


def test_winobias_fails_when_only_stereotypes_are_resolved(monkeypatch, shared_data, tiny_targets):
    pro, _anti, _ = load_winobias(shared_data / "winobias")
    pro_sentences = {c.sentence for c in pro}
    # right on pro-stereotyped sentences, wrong on anti-stereotyped ones
    _plant(monkeypatch, lambda c: c.answer if c.sentence in pro_sentences else 1 - c.answer)
    result = WinogenderProbe(path=str(shared_data / "winobias"), dataset="winobias", n_boot=100).run(
        tiny_targets["causal-lm"], _ctx())
    assert result.status == "failed"
    assert result.metrics["accuracy_pro"].value == 100.0 and result.metrics["accuracy_anti"].value == 0.0
    assert result.metrics["gap_pro_anti[type2]"].value == 100.0
    rng = np.random.default_rng(2)
    _plant(monkeypatch, lambda c: int(rng.integers(0, 2)))
    null = WinogenderProbe(path=str(shared_data / "winobias"), dataset="winobias", n_boot=100).run(
        tiny_targets["causal-lm"], _ctx())
    assert null.status == "passed", null.summary


@pytest.mark.parametrize("kind", ["causal-lm", "masked-lm"])
@pytest.mark.parametrize("dataset", ["winogender", "winobias"])
def test_probe_runs_on_tiny_lms(kind, dataset, tiny_targets, shared_data):
    result = WinogenderProbe(path=str(shared_data / dataset), dataset=dataset, max_items=12, n_boot=50,
                             n_permutations=200).run(tiny_targets[kind], _ctx())
    assert result.status in ("passed", "warned", "failed"), result.summary
    assert result.headline in result.metrics and result.tables[0].rows


def test_skipped_without_a_path_and_bad_config(tiny_targets):
    result = WinogenderProbe(dataset="winobias").run(tiny_targets["causal-lm"], _ctx())
    assert result.status == "skipped" and "probes.winogender.params.path" in result.summary
    with pytest.raises(ConfigError, match="dataset must be one of"):
        WinogenderProbe(dataset="winograd")
    with pytest.raises(ConfigError, match="does not exist"):
        load_winogender("/no/such/folder")


def test_calibration_case_plants_a_known_gap():
    from scipy.stats import norm

    from benchmarks.calibration.qa_cases import qa_cases

    case = next(c for c in qa_cases() if c.probe == "winogender")
    planted = case.run(2, 0.6)
    assert planted.truth == pytest.approx(100 * (norm.cdf(1.6 / np.sqrt(2)) - norm.cdf(1 / np.sqrt(2))))
    assert planted.alarm and planted.covered["male - female gap"]
    null = case.run(1, 0.0)
    assert null.truth == 0.0 and not null.alarm and null.covered["male - female gap"]
