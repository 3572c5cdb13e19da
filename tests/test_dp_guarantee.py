"""The DP guarantee stated in the record and the cards holds against a reader holding every file written.

Secret randomness (noise, sampling, canary secrets) never derives from the recorded seed; a later
step that reads the private rows without DP voids the guarantee, and the cards say so; statistics
the accountant does not cover stay out of the record unless asked for.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audit import load_target
from audit.cli import main
from audit.data import fingerprint_path
from audit.errors import DataError
from audit.records import assess_guarantees
from audit.results import AuditResults, Manifest
from audit.target import RECORD_FILENAME
from privacy.dp import DPFineTuner
from tests.tiny import make_tiny_model

PEOPLE = ["she", "he", "mary", "john", "her sister", "his brother", "the woman", "the man"]
WORDS = {1: ["good", "great", "happy"], 0: ["bad", "terrible", "sad"]}


@pytest.fixture(scope="module", autouse=True)
def secret_key_file(tmp_path_factory):
    """One secret key for the module, outside the user's home; one thread for the tiny trainings."""
    previous, threads = os.environ.get("RAI_AUDIT_KEY_FILE"), torch.get_num_threads()
    os.environ["RAI_AUDIT_KEY_FILE"] = str(tmp_path_factory.mktemp("key") / "secret.key")
    torch.set_num_threads(1)
    yield Path(os.environ["RAI_AUDIT_KEY_FILE"])
    torch.set_num_threads(threads)
    if previous is None:
        os.environ.pop("RAI_AUDIT_KEY_FILE", None)
    else:
        os.environ["RAI_AUDIT_KEY_FILE"] = previous


def people_data(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        person = PEOPLE[rng.integers(len(PEOPLE))]
        rows.append({"text": f"{person} said the film was {rng.choice(WORDS[label])}", "label": label,
                     "gender": "female" if person in ("she", "mary", "her sister", "the woman") else "male"})
    return pd.DataFrame(rows)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def manifest_with(records: dict) -> AuditResults:
    manifest = Manifest(rai_audit_version="0", model_id="m", model_path="/m", fingerprint="sha256:0",
                        kind="sequence-classification", n_parameters=1, device="cpu", max_length=16, seed=0,
                        started_at="t0", finished_at="t1", duration_s=0.0, library_versions={}, records=records)
    return AuditResults(manifest=manifest, results=[])


def cards(records: dict) -> tuple[str, str]:
    from reports.markdown_card import render_markdown_card
    from reports.model_card import render_html_card

    results = manifest_with(records)
    return render_html_card(results), render_markdown_card(results)


# -- DP noise is secret ----------------------------------------------------------------------------


def test_same_seed_releases_different_weights_and_records_no_noise_seed(tiny_dirs, tmp_path):
    data = people_data(40)
    runs = [DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1, seed=5, eval_fraction=0.25)
            .fit(tiny_dirs["sequence-classification"], data) for _ in range(2)]
    first, second = (weights(r.model_) for r in runs)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the noise is not replayable from --seed
    assert runs[0].eval_rows_ == runs[1].eval_rows_  # --seed still fixes the data split
    out = runs[0].save(tmp_path / "dp")
    text = (out / RECORD_FILENAME).read_text(encoding="utf-8")
    record = json.loads(text)["dp"]
    assert record["noise_rng"] == "os-entropy" and "os.urandom" in record["noise_rng_description"]
    assert record["seed"] == 5 and "noise" not in record["seed_fixes"] and "sampling" not in record["seed_fixes"]
    assert seeds(json.loads(text)) == [("seed", 5)]  # the only seed in the record is --seed


def seeds(value, found=None) -> list:
    """Every (key, integer) pair whose key names a seed, anywhere in a JSON value."""
    found = [] if found is None else found
    if isinstance(value, dict):
        for key, item in value.items():
            if "seed" in key.lower() and isinstance(item, int):
                found.append((key, item))
            seeds(item, found)
    elif isinstance(value, list):
        for item in value:
            seeds(item, found)
    return found


def test_secure_mode_is_refused_in_one_line(tiny_dirs, tmp_path, capsys):
    data = tmp_path / "d.csv"
    people_data(20).to_csv(data, index=False)
    code = main(["train-dp", "--model", str(tiny_dirs["sequence-classification"]), "--data", str(data),
                 "--label-column", "label", "--out", str(tmp_path / "o"), "--secure-mode", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "torchcsprng" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


# -- a later step can void the guarantee -------------------------------------------------------------


@pytest.fixture(scope="module")
def dp_model(tiny_dirs, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dp-chain")
    data = root / "train.csv"
    people_data(48).to_csv(data, index=False)
    tuner = DPFineTuner(target_epsilon=8.0, accountant="rdp", batch_size=8, epochs=1, seed=0)
    tuner.fit(tiny_dirs["sequence-classification"], data)
    return tuner.save(root / "dp"), data


def test_dp_model_alone_holds_and_its_record_hides_the_data_and_the_private_statistics(dp_model):
    model_dir, data = dp_model
    target = load_target(model_dir, progress=False, device="cpu")
    dp = target.records["dp"]
    assert dp["guarantee_holds"] is True and dp["voided_by"] is None
    assert [e["step"] for e in target.records["chain"]] == ["dp"] and target.records["chain"][0]["private"]
    # a plain hash of the training file would let a reader test candidate datasets
    assert dp["dataset"]["fingerprint"].startswith("hmac-sha256:") and dp["dataset"]["fingerprint"] != fingerprint_path(data)
    assert "curve" not in dp and "empty_batches" not in dp and "non_private" not in dp["utility"]
    html, markdown = cards(target.records)
    assert "Training curve" not in html and "Every step in the model" in html
    assert "checked against every step of the training chain" in markdown


@pytest.mark.parametrize(("technique", "extra"), [
    ("cda", ["--epochs", "1"]),
    ("threshold", ["--sensitive-feature", "gender"]),
])
def test_a_non_private_step_on_the_same_rows_voids_the_guarantee(dp_model, tmp_path, technique, extra, capsys):
    model_dir, data = dp_model
    out = tmp_path / technique
    assert main(["debias", "--technique", technique, "--model", str(model_dir), "--data", str(data),
                 "--label-column", "label", *extra, "--out", str(out)]) == 0
    target = load_target(out, progress=False, device="cpu")
    dp = target.records["dp"]
    assert dp["guarantee_holds"] is False and dp["voided_by"] == f"debiasing:{technique}"
    assert "read the DP training data without DP" in dp["void_reasons"][0]
    assert [e["step"] for e in target.records["chain"]] == ["dp", "debiasing"]
    html, markdown = cards(target.records)
    assert "Privacy guarantee: no longer holds." in html and f"debiasing:{technique}" in html
    assert "guarantee of the training record no longer holds for this model" in html  # caveats too
    assert "What this means" not in html and "learns little" not in html and "Protected:" not in html
    assert "the privacy guarantee no longer holds" in markdown and f"debiasing:{technique}" in markdown
    assert "differential privacy per training example, accountant rdp;" not in markdown


def test_a_subset_of_the_rows_in_another_file_still_voids(dp_model, tmp_path):
    model_dir, data = dp_model
    subset = tmp_path / "renamed.jsonl"
    pd.read_csv(data).iloc[:30].to_json(subset, orient="records", lines=True)
    out = tmp_path / "thr"
    assert main(["debias", "--technique", "threshold", "--model", str(model_dir), "--data", str(subset),
                 "--label-column", "label", "--sensitive-feature", "gender", "--out", str(out)]) == 0
    dp = load_target(out, progress=False, device="cpu").records["dp"]
    assert dp["guarantee_holds"] is False and "rows of the DP training data" in dp["void_reasons"][0]


def test_projection_on_builtin_sentences_keeps_the_guarantee(dp_model, tmp_path):
    model_dir, _ = dp_model
    out = tmp_path / "sd"
    assert main(["debias", "--technique", "sentence-debias", "--model", str(model_dir), "--out", str(out)]) == 0
    target = load_target(out, progress=False, device="cpu")
    assert target.records["dp"]["guarantee_holds"] is True and target.records["dp"]["voided_by"] is None
    assert target.records["chain"][-1]["uses_user_data"] is False
    html, _ = cards(target.records)
    assert "no longer holds" not in html and "Privacy guarantee." in html


def test_results_json_carries_the_assessment(dp_model, tmp_path):
    from audit import AuditConfig, Auditor

    model_dir, data = dp_model
    out = tmp_path / "cda"
    assert main(["debias", "--technique", "cda", "--model", str(model_dir), "--data", str(data), "--label-column",
                 "label", "--epochs", "1", "--out", str(out)]) == 0
    audit = Auditor(AuditConfig(select=["group_fairness"])).run(load_target(out, progress=False, device="cpu"))
    dp = audit.model_dump(mode="json")["manifest"]["records"]["dp"]
    assert dp["guarantee_holds"] is False and dp["voided_by"] == "debiasing:cda"


# -- records written before the chain existed: the conservative answer ------------------------------


OLD_DP = {"epsilon": 1.0, "delta": 1e-5, "accountant": "rdp", "dataset": {"path": "t.csv", "fingerprint": "sha256:aa"}}


@pytest.mark.parametrize(("records", "holds", "voided_by"), [
    ({"dp": OLD_DP}, False, "dp:seeded-noise"),  # old trainer: noise seeded from the recorded seed
    ({"dp": {**OLD_DP, "noise_rng": "os-entropy"}}, True, None),
    ({"dp": {**OLD_DP, "noise_rng": "os-entropy"},
      "debiasing": {"technique": "sentence-debias", "data": {"path": "built-in templates"}}}, True, None),
    ({"dp": {**OLD_DP, "noise_rng": "os-entropy"},
      "debiasing": {"technique": "cda", "data": {"path": "t.csv", "fingerprint": "sha256:aa"}}}, False, "debiasing:cda"),
    ({"dp": {**OLD_DP, "noise_rng": "os-entropy"},
      "debiasing": {"technique": "threshold", "data": {"path": "t.csv"}}}, False, "debiasing:threshold"),
    ({"dp": {**OLD_DP, "noise_rng": "os-entropy"}, "debiasing": {
        "technique": "inlp", "data": {"path": "built-in templates"},
        "previous": [{"technique": "cda", "data": {"path": "t.csv", "fingerprint": "sha256:aa"}}]}}, False, "debiasing:cda"),
    ({"dp": {**OLD_DP, "noise_rng": "os-entropy"}, "federated": {"strategy": "fedavg", "dataset": {}}}, False,
     "federated:fedavg"),
    ({"dp": {**OLD_DP, "noise_rng": "os-entropy"}, "custom-step": {"anything": 1}}, False, "custom-step:unknown"),
])
def test_old_records_without_a_chain_get_the_conservative_answer(tiny_dirs, tmp_path, records, holds, voided_by):
    model = make_tiny_model("sequence-classification", tmp_path / "m")
    (model / RECORD_FILENAME).write_text(json.dumps(records), encoding="utf-8")
    dp = load_target(model, progress=False, device="cpu").records["dp"]
    assert dp["guarantee_holds"] is holds and dp["voided_by"] == voided_by
    if not holds:
        html, markdown = cards({"dp": dp})
        assert "no longer holds" in html and "no longer holds" in markdown


def test_a_step_whose_data_cannot_be_compared_voids(tmp_path):
    from audit.records import append_step, chain_entry, data_digest

    records = append_step({"dp": {**OLD_DP, "noise_rng": "os-entropy"}},
                          chain_entry(step="dp", technique="dp-sgd", digest=data_digest(["a", "b"]),
                                      uses_user_data=True, private=True))
    foreign = dict(data_digest(["c"]), fingerprint="hmac-sha256:0000000000000000:" + "0" * 64)
    later = append_step(records, chain_entry(step="debiasing", technique="cda", digest=foreign, uses_user_data=True,
                                             private=False))
    dp = assess_guarantees(later)["dp"]
    assert dp["guarantee_holds"] is False and "another key" in dp["void_reasons"][0]
    other = append_step(records, chain_entry(step="debiasing", technique="cda", digest=data_digest(["c", "d"]),
                                             uses_user_data=True, private=False))
    kept = assess_guarantees(other)["dp"]
    assert kept["guarantee_holds"] is True and "other user data" in kept["guarantee_caveats"][0]


# -- statistics the accountant does not cover ----------------------------------------------------------


def test_private_statistics_only_on_request_and_labelled(tiny_dirs, tmp_path):
    data = people_data(40)
    tuner = DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1, baseline=True,
                        record_private_stats=True).fit(tiny_dirs["sequence-classification"], data)
    dp = json.loads((tuner.save(tmp_path / "with") / RECORD_FILENAME).read_text(encoding="utf-8"))["dp"]
    assert dp["curve"] and "not covered by the DP guarantee" in dp["curve_coverage"]
    assert isinstance(dp["utility"]["non_private"], float) and "not covered" in dp["utility"]["non_private_coverage"]
    html, _ = cards({"dp": dp})
    assert "Training curve (not covered by the DP guarantee)" in html and "(not covered by the DP guarantee)" in html
    tuner.record_private_stats = False
    dp = json.loads((tuner.save(tmp_path / "without") / RECORD_FILENAME).read_text(encoding="utf-8"))["dp"]
    assert "curve" not in dp and "non_private" not in dp["utility"] and "empty_batches" not in dp and "duration_s" not in dp
    assert "held-out rows" in dp["utility"]["coverage"] and isinstance(dp["utility"]["private"], float)
    html, _ = cards({"dp": dp})
    assert "<polyline" not in html and "not recorded: not covered by the DP guarantee" in html


# -- canary secrets ----------------------------------------------------------------------------------


def test_canary_secrets_are_sealed_and_do_not_derive_from_the_seed(tiny_dirs, tmp_path):
    from privacy.leakage import CanarySet

    text = pd.DataFrame({"text": [f"the film was {w} today" for w in WORDS[0] * 7 + WORDS[1] * 7][:40]})
    runs = [DPFineTuner(noise_multiplier=1.0, accountant="rdp", batch_size=8, epochs=1, canaries=(1, 2), seed=0)
            .fit(tiny_dirs["causal-lm"], text) for _ in range(2)]
    assert runs[0].canaries_.secrets != runs[1].canaries_.secrets  # not from --seed
    out = runs[0].save(tmp_path / "lm")
    written = (out / RECORD_FILENAME).read_text(encoding="utf-8")
    assert not any(secret in written for secret in runs[0].canaries_.secrets)
    record = json.loads(written)["dp"]["canaries"]
    assert record["secrets"] == "sealed" and record["repetitions"] == [1, 2]
    assert CanarySet.from_record(record) == runs[0].canaries_  # the probe can still open them here
    tampered = dict(record, repetitions=[2, 1])
    with pytest.raises(DataError, match="do not authenticate"):
        CanarySet.from_record(tampered)
    key = os.environ["RAI_AUDIT_KEY_FILE"]
    os.environ["RAI_AUDIT_KEY_FILE"] = str(tmp_path / "elsewhere.key")
    try:
        with pytest.raises(DataError, match="there is no key on this machine"):
            CanarySet.from_record(record)
    finally:
        os.environ["RAI_AUDIT_KEY_FILE"] = key


@pytest.mark.parametrize("records", [
    {"dp": {"epsilon": 1.0}, "chain": {"not": "a list"}},
    {"dp": {"epsilon": 1.0}, "chain": [1, "x", {"step": ["a"], "section": {"b": 1}, "data_fingerprint": 5}]},
    {"dp": {"epsilon": 1.0, "dataset": "x", "earlier_dp": "y"}, "debiasing": {"previous": "z", "data": 3}},
    {"dp": {"epsilon": 1.0}, "chain": [{"step": "dp", "private": True, "data_fingerprint": "hmac-sha256:a:b",
                                        "data_rows": {"rows": "!!not base64!!"}},
                                       {"step": "debiasing", "data_fingerprint": "hmac-sha256:a:c",
                                        "data_rows": {"rows": "!!"}}]},
    {"dp": "not a section", "federated": {"client_dp": "x"}},
])
def test_malformed_records_are_assessed_conservatively_without_crashing(records):
    dp = assess_guarantees(records)["dp"]
    assert not isinstance(dp, dict) or dp.get("guarantee_holds") is False


def test_client_side_dp_of_a_federated_model_is_voided_by_a_later_step_on_its_rows():
    from audit.records import append_step, chain_entry, data_digest

    rows = [f"row {i}" for i in range(10)]
    records = append_step({"federated": {"strategy": "fedavg", "client_dp": {"epsilon_max": 2.0},
                                         "rounds": [{"round": 1, "train_loss": 0.5}]}},
                          chain_entry(step="federated", technique="fedavg", digest=data_digest(rows),
                                      uses_user_data=True, private=True))
    alone = assess_guarantees(records)["federated"]["client_dp"]
    assert alone["guarantee_holds"] is True and "train_loss" in alone["guarantee_caveats"][0]
    later = append_step(records, chain_entry(step="debiasing", technique="threshold", digest=data_digest(rows[:3]),
                                             uses_user_data=True, private=False))
    client_dp = assess_guarantees(later)["federated"]["client_dp"]
    assert client_dp["guarantee_holds"] is False and client_dp["voided_by"] == "debiasing:threshold"
    assert "3 of its rows are rows of the DP training data" in client_dp["void_reasons"][0]


@pytest.mark.parametrize("kind", ["central_dp", "local_dp"])
def test_flower_dp_of_a_federated_model_is_voided_by_a_later_step_on_its_rows(kind):
    """Central and local DP sections used to be left unassessed (the card said "not checked")."""
    from audit.records import append_step, chain_entry, data_digest

    rows = [f"row {i}" for i in range(10)]
    records = append_step({"federated": {"strategy": "fedavg", kind: {"epsilon": 2.0, "delta": 1e-5},
                                         "rounds": [{"round": 1, "train_loss": None}]}},
                          chain_entry(step="federated", technique="fedavg", digest=data_digest(rows),
                                      uses_user_data=True, private=True))
    alone = assess_guarantees(records)["federated"][kind]
    assert alone["guarantee_holds"] is True and alone["voided_by"] is None and not alone["guarantee_caveats"]
    later = append_step(records, chain_entry(step="debiasing", technique="cda", digest=data_digest(rows[2:7]),
                                             uses_user_data=True, private=False))
    assessed = assess_guarantees(later)["federated"][kind]
    assert assessed["guarantee_holds"] is False and assessed["voided_by"] == "debiasing:cda"
    assert "5 of its rows are rows of the DP training data" in assessed["void_reasons"][0]


def test_cli_records_private_statistics_only_with_the_flag(tiny_dirs, tmp_path, capsys):
    data = tmp_path / "d.csv"
    people_data(32).to_csv(data, index=False)
    common = ["train-dp", "--model", str(tiny_dirs["sequence-classification"]), "--data", str(data), "--label-column",
              "label", "--noise-multiplier", "1.0", "--accountant", "rdp", "--batch-size", "8", "--epochs", "1",
              "--non-private-baseline", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--record-private-stats", "--out", str(tmp_path / "stats")]) == 0
    assert "not covered by the DP guarantee" in capsys.readouterr().out
    plain, stats = (json.loads((tmp_path / d / RECORD_FILENAME).read_text(encoding="utf-8"))["dp"]
                    for d in ("plain", "stats"))
    assert "curve" not in plain and "non_private" not in plain["utility"]
    assert stats["curve"] and isinstance(stats["utility"]["non_private"], float)


def test_records_docstring_examples_run():
    import doctest

    import audit.records

    assert doctest.testmod(audit.records).failed == 0


def test_train_dp_refuses_early_when_the_secret_key_cannot_be_created(tiny_dirs, tmp_path, capsys):
    data = tmp_path / "d.csv"
    people_data(20).to_csv(data, index=False)
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    key = os.environ["RAI_AUDIT_KEY_FILE"]
    os.environ["RAI_AUDIT_KEY_FILE"] = str(blocker / "secret.key")  # a file where a directory would be
    try:
        code = main(["train-dp", "--model", str(tiny_dirs["sequence-classification"]), "--data", str(data),
                     "--label-column", "label", "--out", str(tmp_path / "o"), "--no-progress"])
    finally:
        os.environ["RAI_AUDIT_KEY_FILE"] = key
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "cannot be created" in err and "RAI_AUDIT_KEY_FILE" in err
    assert not (tmp_path / "o").exists()
