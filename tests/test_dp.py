"""DP-SGD fine-tuning (privacy/dp.py, privacy/dp_cli.py).

Epsilon is cross-checked against Google's dp-accounting (an independent implementation of the same
analyses: RDP with the same conversion, and PLD against Opacus' PRV), and against the published
figures of Abadi et al. 2016, never against Opacus alone.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audit.data import fingerprint_path
from audit.errors import ConfigError, DataError, NotFittedError, OutputError
from audit.target import RECORD_FILENAME, fingerprint_files, model_fingerprint
from privacy.dp import DPFineTuner, PrivacyBudgetWarning, compute_epsilon, default_delta, make_dp_compatible

POS = ["good", "great", "love", "happy"]
NEG = ["bad", "terrible", "hate", "sad"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models train faster on one thread than on threads fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentiment(n: int, seed: int = 0) -> pd.DataFrame:
    """A learnable task: three positive words or three negative words."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"text": " ".join(rng.choice(POS if i % 2 else NEG, 3)), "label": "pos" if i % 2 else "neg"}
                         for i in range(n)])


def reference_epsilon(sigma: float, q: float, steps: int, delta: float, accountant: str) -> float:
    """Epsilon from dp-accounting: RDP for Opacus' RDP accountant, PLD for its PRV accountant."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    acc = rdp_privacy_accountant.RdpAccountant() if accountant == "rdp" else pld_privacy_accountant.PLDAccountant()
    acc.compose(event)
    return float(acc.get_epsilon(delta))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- accounting ------------------------------------------------------------------------------------


ABADI = dict(noise_multiplier=4.0, sample_rate=0.01, steps=10_000, target_delta=1e-5)


def test_abadi_classic_conversion_gives_the_published_1_26():
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant

    ours = compute_epsilon(**ABADI, accountant="rdp", conversion="classic")
    assert ours == pytest.approx(1.26, abs=0.005)
    # Independent: dp-accounting's RDP curve, with the classic conversion (Mironov 2017, Prop. 3).
    acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(4.0)), 10_000))
    orders, rdp = np.asarray(acc.orders), np.asarray(acc.rdp)
    assert ours == pytest.approx(float(np.min(rdp - math.log(1e-5) / (orders - 1))), rel=1e-3)


def test_abadi_with_opacus_current_conversion_and_prv():
    rdp = compute_epsilon(**ABADI, accountant="rdp")
    assert rdp == pytest.approx(1.036, abs=0.001)
    assert rdp == pytest.approx(reference_epsilon(4.0, 0.01, 10_000, 1e-5, "rdp"), rel=0.01)
    prv = compute_epsilon(**ABADI, accountant="prv", eps_error=0.001)
    assert prv == pytest.approx(0.947, rel=0.01)
    assert prv == pytest.approx(reference_epsilon(4.0, 0.01, 10_000, 1e-5, "prv"), rel=0.01)
    # Which conversion the card states matters: the same training reads 1.26, 1.036 or 0.947.
    assert prv < rdp < compute_epsilon(**ABADI, accountant="rdp", conversion="classic")


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), [(0.8, 0.25, 12, 1e-3), (1.1, 0.04, 500, 1e-5)])
def test_epsilon_matches_dp_accounting_within_one_percent(accountant, sigma, q, steps, delta):
    ours = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, target_delta=delta, accountant=accountant)
    assert ours == pytest.approx(reference_epsilon(sigma, q, steps, delta, accountant), rel=0.01)


def test_default_delta_is_below_one_over_n():
    for n in (2, 9, 10, 11, 400, 1000, 1001, 123_456):
        delta = default_delta(n)
        assert delta <= 1 / (10 * n) and math.log10(delta) == round(math.log10(delta))
    assert default_delta(1000) == 1e-4


@pytest.mark.parametrize("bad", [dict(accountant="gdp"), dict(conversion="classic"), dict(target_delta=1.0),
                                 dict(steps=-1), dict(sample_rate=1.5)])
def test_compute_epsilon_rejects_bad_arguments(bad):
    args = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, target_delta=1e-5, accountant="prv") | bad
    with pytest.raises(ConfigError):
        compute_epsilon(**args)


# -- one calibrated training, shared by the record, saving and card tests ------------------------------


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dp-data") / "train.csv"
    sentiment(60).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(tiny_dirs, data_csv) -> DPFineTuner:
    """Calibrated noise (the default path), RDP accountant, with the non-private baseline."""
    return DPFineTuner(target_epsilon=3.0, accountant="rdp", batch_size=16, epochs=2, baseline=True,
                       seed=3).fit(tiny_dirs["sequence-classification"], data_csv)


def test_calibrated_training_spends_at_most_the_target_and_matches_dp_accounting(fitted):
    rec = fitted.record_
    assert rec["steps"] == rec["planned_steps"] == 2 * math.ceil(rec["dataset"]["train_rows"] / 16)
    assert rec["sample_rate"] == pytest.approx(1 / math.ceil(rec["dataset"]["train_rows"] / 16))
    reference = reference_epsilon(rec["noise_multiplier"], rec["sample_rate"], rec["steps"], rec["delta"], "rdp")
    assert fitted.epsilon_ == pytest.approx(reference, rel=0.01)
    # Calibration: within Opacus' 0.01 search tolerance of the target, never above it.
    assert 3.0 - 0.02 <= fitted.epsilon_ <= 3.0
    assert rec["curve"][-1]["step"] == rec["steps"] and rec["curve"][-1]["epsilon"] == pytest.approx(fitted.epsilon_)
    assert [p["epsilon"] for p in rec["curve"]] == sorted(p["epsilon"] for p in rec["curve"])


def test_record_states_the_guarantee_and_its_inputs(fitted, data_csv, tiny_dirs):
    rec = fitted.record_
    json.dumps(rec, allow_nan=False)
    assert rec["unit_of_privacy"].startswith("one training example")
    assert rec["delta"] == default_delta(rec["dataset"]["train_rows"]) < 1 / rec["dataset"]["train_rows"]
    assert rec["accountant"] == "rdp" and "Balle et al. 2020" in rec["conversion"]
    assert rec["dataset"]["fingerprint"] == fingerprint_path(data_csv)
    assert rec["dataset"]["rows"] == 60 and rec["dataset"]["train_rows"] + rec["dataset"]["eval_rows"] == 60
    assert rec["base_model"]["fingerprint"] == model_fingerprint(tiny_dirs["sequence-classification"])
    assert rec["max_grad_norm"] == 1.0 and rec["seed"] == 3 and rec["sampling"] == "Poisson"
    utility = rec["utility"]
    assert utility["metric"] == "accuracy" and utility["rows"] == rec["dataset"]["eval_rows"]
    assert 0 <= utility["private"] <= 1 and 0 <= utility["non_private"] <= 1


def test_save_writes_a_new_model_that_the_core_loads_with_its_record(fitted, tmp_path, tiny_dirs):
    from audit import load_target

    source = tiny_dirs["sequence-classification"]
    before = fingerprint_files(sorted(source.glob("*.safetensors")))
    out = fitted.save(tmp_path / "dp-model")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    target = load_target(out, progress=False, device="cpu")
    assert target.kind == "sequence-classification" and target.labels == ["neg", "pos"]
    assert target.records["dp"]["epsilon"] == fitted.epsilon_
    assert target.fingerprint == model_fingerprint(out) != model_fingerprint(source)
    probs = target.predict_proba(["good great love"])
    with torch.inference_mode():
        expected = torch.softmax(fitted.model_(**fitted.tokenizer_(["good great love"], return_tensors="pt")).logits, -1)
    assert np.allclose(probs, expected.numpy(), atol=1e-5)
    assert fingerprint_files(sorted(source.glob("*.safetensors"))) == before
    assert not (source / RECORD_FILENAME).exists()
    with pytest.raises(OutputError, match="not empty"):
        fitted.save(out)
    with pytest.raises(OutputError, match="input model's directory"):
        fitted.save(source, overwrite=True)


def test_dp_card_section_explains_the_guarantee_and_escapes_the_record(fitted):
    from reports.model_card import _environment

    template = _environment().get_template("records/dp.html.j2")
    record = dict(fitted.record_, dataset=dict(fitted.record_["dataset"], path="<script>alert(1)</script>.csv"))
    html = template.render(record=record, section="dp")
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    for phrase in ("Privacy guarantee", "What is protected, and what is not", "group privacy", "Balle et al. 2020",
                   "Without DP", "<polyline"):
        assert phrase in html, phrase
    assert f"{fitted.epsilon_:.4g}" in html
    broken = template.render(record={"epsilon": "lots", "curve": "x"}, section="dp")
    assert "Privacy guarantee" not in broken and "lots" in broken


# -- the budget is a hard limit, and a tiny classifier still learns ------------------------------------


def test_tiny_classifier_learns_and_the_budget_stops_training(tiny_dirs):
    tuner = DPFineTuner(target_epsilon=8.0, noise_multiplier=1.2, accountant="rdp", grad_sample_mode="hooks",
                        batch_size=100, max_physical_batch_size=100, epochs=20, learning_rate=2e-2, seed=0)
    with pytest.warns(PrivacyBudgetWarning, match="one more step would spend epsilon"):
        tuner.fit(tiny_dirs["sequence-classification"], sentiment(400))
    assert tuner.stopped_early_ and tuner.steps_ < tuner.planned_steps_ == 80
    q, delta = tuner.sample_rate_, tuner.target_delta_
    assert tuner.epsilon_ <= 8.0
    # Independently: the steps taken fit the budget and one more would not.
    assert reference_epsilon(1.2, q, tuner.steps_, delta, "rdp") <= 8.0 * 1.01
    assert reference_epsilon(1.2, q, tuner.steps_ + 1, delta, "rdp") > 8.0 * 0.99
    assert max(p["epsilon"] for p in tuner.history_) <= 8.0
    assert tuner.record_["stopped_by_budget"] and "above target_epsilon" in tuner.record_["stop_reason"]
    utility = tuner.utility_
    assert utility["majority_class"] == 0.5
    assert utility["private"] >= 0.85, utility


def test_noise_too_small_for_one_step_is_refused(tiny_dirs):
    with pytest.raises(ConfigError, match="single step"):
        DPFineTuner(target_epsilon=0.5, noise_multiplier=0.3, accountant="rdp", batch_size=8).fit(
            tiny_dirs["sequence-classification"], sentiment(40))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_poisson_batches_are_still_noisy_accounted_steps(tiny_dirs, mode):
    data = pd.DataFrame({"text": ["good great", "bad sad"], "label": ["pos", "neg"]})
    tuner = DPFineTuner(target_epsilon=50.0, noise_multiplier=5.0, accountant="rdp", batch_size=1, epochs=10,
                        eval_fraction=0, grad_sample_mode=mode).fit(tiny_dirs["sequence-classification"], data)
    # q = 1/2 over 20 steps: some batches are empty, and every step is noise plus accounting.
    assert tuner.empty_batches_ > 0
    assert tuner.steps_ == tuner.planned_steps_ == 20 and tuner.accountant_history_ == [[5.0, 0.5, 20]]


def test_ghost_clipping_equals_per_example_clipping(tiny_dirs, monkeypatch):
    """Ghost clipping (norms without per-example gradients) and hooks (materialised per-example
    gradients) clip the same gradients; with the same sampling and noise the result is the same.
    The product draws those from OS entropy, so the test replaces them with seeded generators.
    Logical batches of 4 run as physical batches of 2, so gradient accumulation is covered too."""
    from transformers import AutoModelForSequenceClassification

    import privacy.dp

    data = sentiment(24)
    models = []
    for mode in ("hooks", "ghost"):
        seeds = iter([11, 12])  # sampling, then noise
        monkeypatch.setattr(privacy.dp, "_entropy_generator",
                            lambda device="cpu", seeds=seeds: torch.Generator(device=device).manual_seed(next(seeds)))
        tuner = DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=4, max_physical_batch_size=2, epochs=1,
                            learning_rate=1e-2, grad_sample_mode=mode, eval_fraction=0).fit(
            tiny_dirs["sequence-classification"], data)
        models.append(weights(tuner.model_))
    start = weights(AutoModelForSequenceClassification.from_pretrained(tiny_dirs["sequence-classification"]))
    assert any(not torch.equal(models[0][k], start[k]) for k in start)
    assert all(torch.allclose(models[0][k], models[1][k], atol=1e-6) for k in start)


# -- what is trained, and what is never touched ------------------------------------------------------


def test_given_model_object_and_tokenizer_are_not_changed(tiny_dirs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_dirs["sequence-classification"]
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    model.eval()
    before = weights(model)
    tuner = DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1, learning_rate=1e-2).fit(
        model, sentiment(40), tokenizer=tokenizer)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not model.training and tuner.model_ is not model
    assert any(not torch.equal(tuner.model_.state_dict()[k], v) for k, v in before.items())
    assert tuner.record_["base_model"]["path"] is None and tuner.record_["base_model"]["fingerprint"].startswith("sha256:")


@pytest.mark.parametrize(("spec", "changed", "frozen"), [
    ("head", ["classifier.weight"], ["bert.pooler.dense.weight", "bert.encoder.layer.1.output.dense.weight"]),
    (1, ["classifier.weight", "bert.pooler.dense.weight", "bert.encoder.layer.1.output.dense.weight"],
     ["bert.encoder.layer.0.output.dense.weight", "bert.embeddings.word_embeddings.weight"]),
    (["bert.embeddings"], ["bert.embeddings.word_embeddings.weight"], ["classifier.weight"]),
])
def test_trainable_layers_selects_what_changes(tiny_dirs, spec, changed, frozen):
    from transformers import AutoModelForSequenceClassification

    start = weights(AutoModelForSequenceClassification.from_pretrained(tiny_dirs["sequence-classification"]))
    tuner = DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1, learning_rate=1e-2,
                        trainable_layers=spec).fit(tiny_dirs["sequence-classification"], sentiment(40))
    after = tuner.model_.state_dict()
    assert all(not torch.equal(after[n], start[n]) for n in changed)
    assert all(torch.equal(after[n], start[n]) for n in frozen)
    assert 0 < tuner.record_["trainable_parameters"] < tuner.record_["total_parameters"]


def test_unknown_trainable_prefix_is_named(tiny_dirs):
    with pytest.raises(ConfigError, match=r"\['encoder.nope'\] match no parameter"):
        DPFineTuner(noise_multiplier=1.0, trainable_layers=["encoder.nope"], batch_size=8).fit(
            tiny_dirs["sequence-classification"], sentiment(40))


class _LSTMHead(torch.nn.Module):
    def __init__(self, hidden: int, labels: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(hidden, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        seq, _ = self.lstm(pooled.unsqueeze(1))
        return self.out(seq[:, -1])


def test_lstm_is_repaired_with_the_same_function(tiny_dirs):
    from opacus.layers import DPLSTM
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_dirs["sequence-classification"]
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.classifier = _LSTMHead(32, 2)
    model.eval()
    batch = AutoTokenizer.from_pretrained(path)(["good great", "bad sad news"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        expected = model(**batch).logits
    fixed, repaired = make_dp_compatible(copy.deepcopy(model))
    assert repaired == ["classifier.lstm (LSTM -> DPLSTM)"] and isinstance(fixed.classifier.lstm, DPLSTM)
    fixed.eval()
    with torch.inference_mode():
        assert torch.allclose(fixed(**batch).logits, expected, atol=1e-5)
    tuner = DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1).fit(
        model, sentiment(40), tokenizer=AutoTokenizer.from_pretrained(path))
    assert isinstance(tuner.model_.classifier.lstm, DPLSTM) and isinstance(model.classifier.lstm, torch.nn.LSTM)
    assert tuner.record_["repaired_layers"] == ["classifier.lstm (LSTM -> DPLSTM)"]


def test_batch_norm_is_refused_by_name_unless_frozen(tiny_dirs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tiny_dirs["sequence-classification"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.classifier = torch.nn.Sequential(torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 2))
    with pytest.raises(ConfigError, match=r"Layer 'classifier.0' \(BatchNorm1d\) cannot be trained"):
        DPFineTuner(noise_multiplier=1.0, batch_size=8).fit(model, sentiment(40), tokenizer=tokenizer)
    # Frozen, it trains, and its running statistics are not updated from the private data.
    stats = model.classifier[0].running_mean.clone()
    tuner = DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1, trainable_layers=["bert"]).fit(
        model, sentiment(40), tokenizer=tokenizer)
    assert torch.equal(tuner.model_.classifier[0].running_mean, stats)


# -- causal LMs and canaries ---------------------------------------------------------------------------


def test_causal_lm_with_ghost_clipping_and_canaries(tiny_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    from privacy.leakage import CanarySet

    text = pd.DataFrame({"text": [" ".join(np.random.default_rng(i).choice(POS + NEG, 5)) for i in range(40)]})
    tuner = DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1, canaries=(1, 3),
                        baseline=True).fit(tiny_dirs["causal-lm"], text)
    rec = tuner.record_
    assert rec["task"] == "causal-lm" and rec["untied_embeddings"] and rec["utility"]["metric"] == "eval_loss"
    assert rec["dataset"]["canary_rows"] == 4 and rec["dataset"]["train_rows"] + 4 + rec["dataset"]["eval_rows"] == 44
    canaries = CanarySet.from_record(rec["canaries"])
    assert canaries.repetitions == (1, 3)
    reference = reference_epsilon(1.0, rec["sample_rate"], rec["steps"], rec["delta"], "rdp")
    assert tuner.epsilon_ == pytest.approx(reference, rel=0.01)
    out = tuner.save(tmp_path / "lm")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.lm_head.weight is not reloaded.get_input_embeddings().weight
    assert torch.equal(reloaded.lm_head.weight, tuner.model_.lm_head.weight)


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "message"), [
    (dict(target_epsilon=0), "target_epsilon must be a positive finite number, got 0"),
    (dict(target_epsilon=-1.0), "target_epsilon must be a positive finite number, got -1.0"),
    (dict(target_epsilon=float("inf")), "target_epsilon must be a positive finite number"),
    (dict(target_delta=1.0), r"target_delta must be in \(0, 1\), got 1.0"),
    (dict(target_delta=2), r"target_delta must be in \(0, 1\), got 2"),
    (dict(target_delta=0.0), r"target_delta must be in \(0, 1\)"),
    (dict(accountant="moments"), "accountant must be one of"),
    (dict(grad_sample_mode="functorch"), "grad_sample_mode must be one of"),
    (dict(trainable_layers=-1), "trainable_layers must be"),
    (dict(canaries=(0,)), "canaries must be a sequence of positive repetition counts"),
])
def test_bad_configuration_fails_before_any_work(params, message):
    with pytest.raises(ConfigError, match=message):
        DPFineTuner(**params).fit("/nonexistent/model", "/nonexistent/data.csv")


def test_dataset_smaller_than_the_batch(tiny_dirs):
    with pytest.raises(DataError, match=r"The training set has 16 example\(s\) after holding out 4 for evaluation, "
                                        r"fewer than batch_size=64. Lower batch_size to at most 16"):
        DPFineTuner(batch_size=64).fit(tiny_dirs["sequence-classification"], sentiment(20))


def test_single_class_labels(tiny_dirs):
    data = pd.DataFrame({"text": ["good", "great", "love"], "label": ["pos"] * 3})
    with pytest.raises(DataError, match=r"Label column 'label' of <in-memory DataFrame> has one class \('pos'\)"):
        DPFineTuner().fit(tiny_dirs["sequence-classification"], data)


def test_missing_column_and_missing_labels(tiny_dirs):
    with pytest.raises(DataError, match=r"Column 'label' \(label_column\) is not in"):
        DPFineTuner().fit(tiny_dirs["sequence-classification"], pd.DataFrame({"text": ["a", "b"]}))
    with pytest.raises(DataError, match="missing value"):
        DPFineTuner().fit(tiny_dirs["sequence-classification"], pd.DataFrame({"text": ["a", "b"], "label": ["x", None]}))


def test_model_kind_that_cannot_be_fine_tuned_for_classification(tmp_path, tiny_dirs):
    from transformers import ViTConfig, ViTModel

    vit = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=8, patch_size=4)).save_pretrained(vit)
    with pytest.raises(ConfigError, match=r"is a 'vit' model .* cannot be fine-tuned for classification"):
        DPFineTuner().fit(vit, sentiment(40))
    with pytest.raises(ConfigError, match=r"task='causal-lm' needs a causal language model, but .* is a 'bert' model"):
        DPFineTuner(task="causal-lm").fit(tiny_dirs["encoder"], sentiment(40))


def test_delta_at_or_above_one_over_n_warns(tiny_dirs):
    with pytest.warns(UserWarning, match=r"target_delta=0.05 is not below 1/N = 0.03"):
        DPFineTuner(target_delta=0.05, noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1).fit(
            tiny_dirs["sequence-classification"], sentiment(40))


def test_save_before_fit():
    with pytest.raises(NotFittedError, match=r"Call fit\(model, dataset\) first"):
        DPFineTuner().save("anywhere")


# -- command line --------------------------------------------------------------------------------------


def test_train_dp_command_keeps_earlier_record_sections(tiny_dirs, data_csv, tmp_path, capsys):
    import shutil

    from audit.cli import main

    model = tmp_path / "input-model"
    shutil.copytree(tiny_dirs["sequence-classification"], model)
    (model / RECORD_FILENAME).write_text(json.dumps({"debiasing": {"technique": "CDA"}}), encoding="utf-8")
    out = tmp_path / "out"
    code = main(["train-dp", "--model", str(model), "--data", str(data_csv), "--label-column", "label",
                 "--target-epsilon", "5", "--noise-multiplier", "1.5", "--accountant", "rdp", "--batch-size", "16",
                 "--epochs", "1", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Trained with DP-SGD: epsilon=" in captured.out and "accountant rdp" in captured.out
    records = json.loads((out / RECORD_FILENAME).read_text(encoding="utf-8"))
    assert records["debiasing"] == {"technique": "CDA"} and records["dp"]["target_epsilon"] == 5.0
    assert records["dp"]["noise_multiplier"] == 1.5 and records["dp"]["epsilon"] <= 5.0


def test_train_dp_command_bad_input_is_one_line_and_writes_nothing(tiny_dirs, data_csv, tmp_path, capsys):
    from audit.cli import main

    out = tmp_path / "never"
    code = main(["train-dp", "--model", str(tiny_dirs["sequence-classification"]), "--data", str(data_csv),
                 "--label-column", "label", "--target-epsilon", "-2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("rai-audit: error: target_epsilon must be a positive finite number, got -2.0.")
    assert not out.exists()


# -- the real model: fully trainable MiniLM with ghost clipping ---------------------------------------


@pytest.mark.slow
def test_minilm_fully_trainable_with_ghost_clipping():
    """The case that fails out of the box: every BERT parameter, including the position and
    token-type embeddings, trained with ghost clipping."""
    from audit.target import default_model_path

    start_path = default_model_path()
    from safetensors.torch import load_file

    start = load_file(next(start_path.glob("*.safetensors")))
    tuner = DPFineTuner(target_epsilon=8.0, accountant="rdp", batch_size=16, max_physical_batch_size=8, epochs=1,
                        learning_rate=1e-3, eval_fraction=0.2).fit(start_path, sentiment(40))
    rec = tuner.record_
    assert rec["grad_sample_mode"] == "ghost" and rec["trainable_parameters"] == rec["total_parameters"] > 22_000_000
    assert rec["head_initialised"] and rec["steps"] == rec["planned_steps"] == 2 and tuner.epsilon_ <= 8.0
    after = tuner.model_.state_dict()
    for name in ("embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight",
                 "embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
        key = next(k for k in start if k.endswith(name))
        assert not torch.equal(after["bert." + key.removeprefix("bert.")], start[key]), name
    assert tuner.epsilon_ == pytest.approx(
        reference_epsilon(rec["noise_multiplier"], rec["sample_rate"], rec["steps"], rec["delta"], "rdp"), rel=0.01)
