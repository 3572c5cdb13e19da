"""Threshold post-processing and CDA on a planted-bias tiny classifier, and the debias command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from audit import load_target
from audit.cli import main
from audit.context import AuditContext
from audit.errors import DataError, NotApplicableError
from audit.target import RECORD_FILENAME, THRESHOLDS_FILENAME
from probes.counterfactual import CounterfactualProbe
from probes.debias.cda import CDAFineTuner
from tests.tiny import make_tiny_model

FEMALE = ["she", "woman", "girl", "sister", "mother", "daughter", "aunt", "grandmother",
          "amy", "joan", "lisa", "sarah", "diana", "kate", "ann", "donna"]
MALE = ["he", "man", "boy", "brother", "father", "son", "uncle", "grandfather",
        "john", "paul", "mike", "kevin", "steve", "greg", "jeff", "bill"]
TEMPLATES = ["{person} talked about the movie", "we talked to {person} about the food", "{person} was at home",
             "this is {person}", "{person} said the film was very good", "{person} said the food was really bad"]
GROUPS = {"gender": {"female": FEMALE, "male": MALE}}


def planted_data(seed: int, n: int = 400) -> pd.DataFrame:
    """'<person> said the <noun> was <adjective>'; texts about women are labelled positive 60% of the
    time whatever the adjective says, so the group word carries label information."""
    rng = np.random.default_rng(seed)
    female = rng.random(n) < 0.5
    terms = np.where(female, np.array(FEMALE)[rng.integers(0, 16, n)], np.array(MALE)[rng.integers(0, 16, n)])
    positive = rng.random(n) < 0.5
    adjective = np.where(positive, np.array(["good", "great", "happy"])[rng.integers(0, 3, n)],
                         np.array(["bad", "terrible", "sad"])[rng.integers(0, 3, n)])
    noun = np.array(["movie", "film", "food"])[rng.integers(0, 3, n)]
    label = np.where(female & (rng.random(n) < 0.6), True, positive)
    texts = [f"{t} said the {m} was {a}" for t, m, a in zip(terms, noun, adjective)]
    return pd.DataFrame({"text": texts, "label": label.astype(int), "gender": np.where(female, "female", "male")})


@pytest.fixture(scope="module")
def biased_dir(tmp_path_factory):
    """A tiny BERT classifier with a planted gender bias: its head scores the direction that separates
    texts naming women from texts naming men (weight surgery, so the ground truth is known exactly)."""
    from probes.debias.projection import head_inputs

    directory = make_tiny_model("sequence-classification", tmp_path_factory.mktemp("biased") / "model", seed=1)
    target = load_target(directory, progress=False, device="cpu")
    frame = planted_data(0)
    h = head_inputs(target, frame["text"].tolist())
    female = (frame["gender"] == "female").to_numpy()
    d = h[female].mean(0) - h[~female].mean(0)
    d /= np.linalg.norm(d)
    centre = float(h.mean(0) @ d)
    spread = float((h @ d).std())
    with torch.no_grad():
        target.model.classifier.weight.zero_()
        target.model.classifier.weight[1] = torch.as_tensor(d * 4 / spread, dtype=torch.float32)
        target.model.classifier.bias.copy_(torch.tensor([0.0, -4 * centre / spread]))
    target.model.save_pretrained(directory, safe_serialization=True)
    return directory


def flip_rate(path) -> float:
    probe = CounterfactualProbe(groups=GROUPS, templates=TEMPLATES, n_boot=200, n_resamples=2000)
    result = probe.run(load_target(path, progress=False, device="cpu"), AuditContext(seed=0).for_probe("counterfactual"))
    return result.metrics["flip_rate[gender]"].value


def test_planted_classifier_is_biased(biased_dir):
    target = load_target(biased_dir, progress=False, device="cpu")
    frame = planted_data(1)
    pred = target.predict(frame["text"].tolist())
    rates = pd.Series(pred).groupby(frame["gender"]).mean()
    assert rates["female"] - rates["male"] > 0.15


def write_csv(frame: pd.DataFrame, path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def test_threshold_lowers_demographic_parity_and_predict_matches_fairlearn(biased_dir, tmp_path, capsys):
    from fairlearn.metrics import demographic_parity_difference

    train = write_csv(planted_data(0), tmp_path / "train.csv")
    out = tmp_path / "thr"
    assert main(["debias", "--technique", "threshold", "--model", str(biased_dir), "--data", train,
                 "--label-column", "label", "--sensitive-feature", "gender", "--out", str(out), "--seed", "3"]) == 0
    assert not (biased_dir / THRESHOLDS_FILENAME).exists()  # the input model is untouched
    record = json.loads((out / RECORD_FILENAME).read_text())["debiasing"]
    assert record["technique"] == "threshold" and record["parameters"]["constraints"] == "demographic_parity"
    outcome = record["outcome"]
    assert outcome["demographic_parity_difference_before"] > 0.2
    assert outcome["demographic_parity_difference_after"] < 0.1

    # held-out rows: the saved thresholds, applied by the audit target, lower the gap
    test = planted_data(5)
    before = load_target(biased_dir, progress=False, device="cpu").predict(test["text"].tolist())
    target = load_target(out, progress=False, device="cpu")
    assert any(THRESHOLDS_FILENAME in n for n in target.notes)
    after = target.predict(test["text"].tolist(), sensitive_features=test["gender"].tolist())
    dpd_before = demographic_parity_difference(test["label"], before, sensitive_features=test["gender"])
    dpd_after = demographic_parity_difference(test["label"], after, sensitive_features=test["gender"])
    assert dpd_before > 0.2 and dpd_after < dpd_before / 2
    np.testing.assert_array_equal(target.predict(test["text"].tolist()), before)  # no groups: plain argmax

    # target.predict reproduces fairlearn's randomised ThresholdOptimizer.predict exactly
    from probes.debias.threshold import ThresholdPostprocessor

    biased = load_target(biased_dir, progress=False, device="cpu")
    post = ThresholdPostprocessor(seed=3).fit(biased, planted_data(0)["text"].tolist(), planted_data(0)["label"],
                                              sensitive_features=planted_data(0)["gender"].tolist())
    scores = biased.predict_proba(test["text"].tolist())[:, 1][:, None]
    expected = post.thresholder_.predict(scores, sensitive_features=test["gender"].to_numpy(), random_state=3)
    np.testing.assert_array_equal(after, expected)


def test_bad_input_is_refused_in_one_line(biased_dir, tiny_dirs, tmp_path, capsys):
    train = write_csv(planted_data(0), tmp_path / "train.csv")
    cases = [
        (["--technique", "threshold", "--model", str(tiny_dirs["encoder"]), "--data", train, "--label-column", "label",
          "--sensitive-feature", "gender"], "does not apply"),
        (["--technique", "cda", "--model", str(biased_dir), "--data", train, "--label-column", "label",
          "--word-list", str(tmp_path / "missing.json")], "neither a built-in list"),
        (["--technique", "cda", "--model", str(biased_dir), "--data", train], "needs --data with a --label-column"),
        (["--technique", "inlp", "--model", str(tiny_dirs["causal-lm"])], "does not apply"),
    ]
    for i, (args, message) in enumerate(cases):
        capsys.readouterr()
        assert main(["debias", *args, "--out", str(tmp_path / f"o{i}")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_sentence_debias_on_an_encoder_loads_back_debiased(tiny_dirs, tmp_path):
    out = tmp_path / "sd"
    assert main(["debias", "--technique", "sentence-debias", "--model", str(tiny_dirs["encoder"]),
                 "--out", str(out)]) == 0
    record = json.loads((out / RECORD_FILENAME).read_text())["debiasing"]
    raw = load_target(tiny_dirs["encoder"], progress=False, device="cpu")
    assert record["source_fingerprint"] == raw.fingerprint
    assert record["outcome"]["pair_difference_norm_after"] < record["outcome"]["pair_difference_norm_before"]
    debiased = load_target(out, progress=False, device="cpu")
    assert debiased.records["debiasing"]["technique"] == "sentence-debias"
    pairs = [("she is a doctor.", "he is a doctor."), ("my sister works in an office.", "my brother works in an office.")]
    a = debiased.embed([p[0] for p in pairs])
    b = debiased.embed([p[1] for p in pairs])
    raw_diff = raw.embed([p[0] for p in pairs]) - raw.embed([p[1] for p in pairs])
    assert np.linalg.norm(a - b) < np.linalg.norm(raw_diff)


def test_inlp_on_a_classifier_folds_into_a_plain_hf_model(biased_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    train = write_csv(planted_data(0), tmp_path / "train.csv")
    out = tmp_path / "inlp"
    assert main(["debias", "--technique", "inlp", "--model", str(biased_dir), "--data", train,
                 "--out", str(out), "--n-iterations", "5"]) == 0
    assert not (out / "rai_audit_projection.safetensors").exists()
    AutoModelForSequenceClassification.from_pretrained(out)  # loads with no custom code
    test = planted_data(5)
    before = load_target(biased_dir, progress=False, device="cpu").predict(test["text"].tolist())
    after = load_target(out, progress=False, device="cpu").predict(test["text"].tolist())
    gap = lambda p: p[test["gender"] == "female"].mean() - p[test["gender"] == "male"].mean()  # noqa: E731
    assert gap(before) > 0.2 and abs(gap(after)) < gap(before) / 2


@pytest.mark.slow
def test_cda_lowers_the_counterfactual_flip_rate(biased_dir, tmp_path):
    frame = planted_data(0)
    before = flip_rate(biased_dir)
    target = load_target(biased_dir, progress=False, device="cpu")
    tuner = CDAFineTuner(epochs=2, learning_rate=1e-3, seed=0).fit(target, frame["text"].tolist(), frame["label"])
    assert tuner.n_swapped_ > 0.9 * len(frame)  # nearly every planted text names a listed person
    assert not any(torch.equal(a, b) for a, b in zip(tuner.model_.parameters(), target.model.parameters()))
    out = tuner.save_model(tmp_path / "cda", target.tokenizer)
    after = flip_rate(out)
    assert before > 0.15 and after < before / 2, (before, after)


def test_cda_refuses_an_encoder(tiny_targets):
    with pytest.raises(NotApplicableError, match="sequence classifiers"):
        CDAFineTuner().fit(tiny_targets["encoder"], ["she is here"], [0])
    with pytest.raises(DataError, match="No training text"):
        CDAFineTuner(epochs=1).fit(tiny_targets["sequence-classification"], ["the movie was good"], [1])


@pytest.mark.slow
def test_audit_applies_saved_thresholds_and_compare_reports_the_cost(biased_dir, tmp_path, capsys):
    """End to end: debias with thresholds, audit both models with group_fairness, compare the audits."""
    from fairlearn.metrics import demographic_parity_difference

    train = write_csv(planted_data(0), tmp_path / "train.csv")
    evaluation = planted_data(7)
    data = write_csv(evaluation, tmp_path / "eval.csv")
    out = tmp_path / "thr"
    assert main(["debias", "--technique", "threshold", "--model", str(biased_dir), "--data", train,
                 "--label-column", "label", "--sensitive-feature", "gender", "--out", str(out), "--seed", "3"]) == 0
    config = tmp_path / "audit.yaml"
    config.write_text("select: [group_fairness]\nprobes:\n  group_fairness:\n    params: {n_boot: 20}\n")
    audits = {}
    for name, model in (("base", biased_dir), ("thr", out)):
        code = main(["run", "--model", str(model), "--config", str(config), "--out", str(tmp_path / f"audit-{name}"), "--data", data,
                     "--label-column", "label", "--sensitive-feature", "gender", "--no-progress", "--quiet"])
        assert code in (0, 1)
        audits[name] = json.loads((tmp_path / f"audit-{name}" / "results.json").read_text())["results"][0]["metrics"]
    # the audit of the post-processed model equals fairlearn's DPD of target.predict with the groups
    target = load_target(out, progress=False, device="cpu")
    labels = target.predict(evaluation["text"].tolist(), sensitive_features=evaluation["gender"].tolist())
    expected = demographic_parity_difference(evaluation["label"], labels, sensitive_features=evaluation["gender"])
    assert audits["thr"]["demographic_parity_difference[gender]"]["value"] == pytest.approx(expected)
    assert audits["thr"]["demographic_parity_difference[gender]"]["value"] < audits["base"]["demographic_parity_difference[gender]"]["value"] / 2
    code = main(["compare", str(tmp_path / "audit-base" / "results.json"), str(tmp_path / "audit-thr" / "results.json"),
                 "--out", str(tmp_path / "cmp")])
    assert code in (0, 1)
    comparison = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "accuracy" in comparison


@pytest.mark.slow
def test_experiment_file_runs_every_audit_and_the_comparison(biased_dir, tmp_path):
    """One experiment file: threshold post-processing on the planted-bias model, both audited, compared."""
    write_csv(planted_data(0), tmp_path / "train.csv")
    write_csv(planted_data(7), tmp_path / "eval.csv")
    (tmp_path / "experiment.yaml").write_text(f"""
baseline: {biased_dir}
out: exp
audit:
  select: [group_fairness]
  data: {{path: eval.csv, label_column: label, sensitive_features: [gender]}}
  probes: {{group_fairness: {{params: {{n_boot: 20}}}}}}
techniques:
  - {{name: thresholds, technique: threshold, data: train.csv, label_column: label, sensitive_feature: gender, seed: 3}}
""")
    assert main(["experiment", str(tmp_path / "experiment.yaml")]) == 0
    exp = tmp_path / "exp"
    base = json.loads((exp / "audits" / "baseline" / "results.json").read_text())["results"][0]["metrics"]
    thr = json.loads((exp / "audits" / "thresholds" / "results.json").read_text())["results"][0]["metrics"]
    comparison = json.loads((exp / "comparison" / "comparison.json").read_text())
    assert [i["name"] for i in comparison["inputs"]] == ["baseline", "thresholds"]
    rows = {row["metric"]: row for p in comparison["probes"] for row in p["metrics"]}
    dpd = rows["demographic_parity_difference[gender]"]
    expected = thr["demographic_parity_difference[gender]"]["value"] - base["demographic_parity_difference[gender]"]["value"]
    assert dpd["deltas"][1]["delta"] == pytest.approx(expected) and expected < 0
    assert rows["accuracy"]["performance"] is True
    assert (exp / "models" / "thresholds" / THRESHOLDS_FILENAME).exists()


def test_experiment_file_errors_name_the_key(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("baseline: m\ntechniques:\n  - {name: a, technique: dropout}\n")
    assert main(["experiment", str(tmp_path / "e.yaml")]) == 2
    err = capsys.readouterr().err
    assert "techniques.0.technique" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("constraints", ["equalized_odds", "true_positive_rate_parity"])
def test_threshold_refuses_a_group_with_one_label(biased_dir, constraints):
    """fairlearn raises a bare ValueError ('Degenerate labels') there; the user gets one line naming the group."""
    from audit.errors import DataError
    from probes.debias.threshold import ThresholdPostprocessor

    data = planted_data(0)
    data.loc[data["gender"] == data["gender"].iloc[0], "label"] = 1
    biased = load_target(biased_dir, progress=False, device="cpu")
    with pytest.raises(DataError, match=f"group {data['gender'].iloc[0]!r} has only label 1"):
        ThresholdPostprocessor(constraints=constraints).fit(biased, data["text"].tolist(), data["label"],
                                                            sensitive_features=data["gender"].tolist())
