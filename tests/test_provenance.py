"""Provenance: the card describes exactly the model that was audited.

The fingerprint covers everything that changes behaviour (and nothing that does not, such as
sharding), the cache never serves another model's results, a checkpoint that does not fit the
architecture is refused, a new head is seeded and said to be untrained, and no file reaches a
report through a symlink that leaves the model directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audit import AuditConfig, Auditor, Metric, ModelLoadError, Probe, load_target
from audit.cli import main
from audit.results import AuditResults, json_schema
from audit.target import RECORD_FILENAME, THRESHOLDS_FILENAME, default_model_path, read_records
from tests.tiny import make_tiny_model

FEMALE = ["she", "woman", "girl", "sister", "mother", "amy", "joan", "lisa", "sarah", "kate"]
MALE = ["he", "man", "boy", "brother", "father", "john", "paul", "mike", "kevin", "steve"]


def labelled_data(seed: int, n: int = 160) -> pd.DataFrame:
    """'<person> said the <noun> was <adjective>', labelled by the adjective, with a gender column."""
    rng = np.random.default_rng(seed)
    female = rng.random(n) < 0.5
    terms = np.where(female, np.array(FEMALE)[rng.integers(0, 10, n)], np.array(MALE)[rng.integers(0, 10, n)])
    positive = rng.random(n) < 0.5
    adjective = np.where(positive, np.array(["good", "great", "happy"])[rng.integers(0, 3, n)],
                         np.array(["bad", "terrible", "sad"])[rng.integers(0, 3, n)])
    noun = np.array(["movie", "film", "food"])[rng.integers(0, 3, n)]
    texts = [f"{t} said the {m} was {a}" for t, m, a in zip(terms, noun, adjective, strict=True)]
    return pd.DataFrame({"text": texts, "label": positive.astype(int), "gender": np.where(female, "female", "male")})


class Outputs(Probe):
    """What the model computes on fixed texts: thresholded predictions and probabilities, or embeddings."""

    name = "outputs"
    description = "model outputs on fixed texts"

    def run(self, target, context):
        frame = labelled_data(99, n=40)
        texts = frame["text"].tolist()
        if target.kind == "sequence-classification":
            predicted = target.predict(texts, sensitive_features=frame["gender"].tolist())
            value = float(predicted.mean() + target.predict_proba(texts)[:, 1].sum())
        else:
            value = float(np.abs(target.embed(texts)).sum())
        return self.result(status="passed", summary="Computed.", metrics={"value": Metric(value=value)},
                           headline="value")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return make_tiny_model("sequence-classification", tmp_path_factory.mktemp("prov") / "clf", seed=4)


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prov-data") / "train.csv"
    labelled_data(0).to_csv(path, index=False)
    return path


def _copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


# -- what the fingerprint covers ---------------------------------------------------------------
def test_resharding_identical_weights_keeps_the_fingerprint(tiny_dirs, tmp_path):
    from transformers import AutoModel

    source = tiny_dirs["encoder"]
    resharded = tmp_path / "sharded"
    AutoModel.from_pretrained(source).save_pretrained(resharded, max_shard_size="20KB")
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (source / name).exists():
            shutil.copy(source / name, resharded / name)
    shards = sorted(p.name for p in resharded.glob("*.safetensors"))
    assert len(shards) > 2 and (resharded / "model.safetensors.index.json").is_file()
    one, many = load_target(source, progress=False), load_target(resharded, progress=False)
    assert many.fingerprint_parts["weights"] == one.fingerprint_parts["weights"]
    assert many.fingerprint == one.fingerprint  # so --baseline accepts the same model re-sharded
    assert set(shards) <= set(many.files) and "model.safetensors.index.json" in many.files
    np.testing.assert_array_equal(many.embed(["he is a doctor"]), one.embed(["he is a doctor"]))


def test_a_changed_tensor_dtype_changes_the_fingerprint(tiny_dirs, tmp_path):
    from transformers import AutoModel

    half = tmp_path / "half"
    _copy(tiny_dirs["encoder"], half)
    AutoModel.from_pretrained(half).to(torch.bfloat16).save_pretrained(half)
    base, changed = load_target(tiny_dirs["encoder"], progress=False), load_target(half, progress=False)
    assert changed.fingerprint_parts["weights"] != base.fingerprint_parts["weights"]
    assert base.dtypes == ["float32"] and changed.dtypes == ["bfloat16"]


def _edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


@pytest.mark.parametrize("change", ["config", "tokenizer_config", "vocab", "generation_config", "thresholds",
                                    "projection", "record", "code"])
def test_every_behaviour_changing_file_changes_the_fingerprint(tiny_dirs, tmp_path, change):
    source = tiny_dirs["sequence-classification"]
    edited = _copy(source, tmp_path / "m")
    if change == "config":
        _edit_json(edited / "config.json", hidden_dropout_prob=0.3, layer_norm_eps=1e-5)
    elif change == "tokenizer_config":
        _edit_json(edited / "tokenizer_config.json", do_lower_case=False)
    elif change == "vocab":
        words = (edited / "vocab.txt").read_text().splitlines()
        words[-1], words[-2] = words[-2], words[-1]
        (edited / "vocab.txt").write_text("\n".join(words) + "\n")
    elif change == "generation_config":
        (edited / "generation_config.json").write_text(json.dumps({"max_length": 7}))
    elif change == "thresholds":
        spec = {"p0": 1.0, "operation0": [">", 0.5], "p1": 0.0, "operation1": [">", 0.5]}
        (edited / THRESHOLDS_FILENAME).write_text(json.dumps({"groups": {"a": spec, "b": spec}}))
    elif change == "projection":
        from probes.debias.projection import save_projection

        save_projection(edited, np.eye(32), technique="sentence-debias", layer=-1, pooling="mean")
    elif change == "record":
        (edited / RECORD_FILENAME).write_text(json.dumps({"debiasing": {"technique": "threshold"}}))
    else:
        (edited / "modeling_extra.py").write_text("X = 1\n")
    base, target = load_target(source, progress=False), load_target(edited, progress=False)
    assert target.fingerprint != base.fingerprint
    assert target.fingerprint_parts["weights"] == base.fingerprint_parts["weights"]


def test_reformatting_json_does_not_change_the_fingerprint(tiny_dirs, tmp_path):
    source = tiny_dirs["encoder"]
    edited = _copy(source, tmp_path / "m")
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps(dict(reversed(list(config.items()))), indent=7))
    assert load_target(edited, progress=False).fingerprint == load_target(source, progress=False).fingerprint


TECHNIQUES = {  # technique -> (source kind, extra arguments)
    "threshold": ("sequence-classification", ["--label-column", "label", "--sensitive-feature", "gender"]),
    "cda": ("sequence-classification", ["--label-column", "label", "--epochs", "1"]),
    "sentence-debias": ("encoder", []),
    "inlp": ("encoder", ["--n-iterations", "2"]),
}


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_each_debias_technique_gives_a_new_fingerprint_and_no_cached_base_results(
        technique, tiny_dirs, classifier_dir, train_csv, tmp_path):
    kind, extra = TECHNIQUES[technique]
    base = classifier_dir if kind == "sequence-classification" else tiny_dirs["encoder"]
    out = tmp_path / technique
    assert main(["debias", "--technique", technique, "--model", str(base), "--data", str(train_csv),
                 "--out", str(out), *extra]) == 0
    base_target, debiased = load_target(base, progress=False), load_target(out, progress=False)
    assert debiased.fingerprint != base_target.fingerprint
    cache = tmp_path / "shared-cache"
    first = Auditor(probes=[Outputs()], cache_dir=cache).run(base_target).result("outputs")
    again = Auditor(probes=[Outputs()], cache_dir=cache).run(debiased).result("outputs")
    fresh = Auditor(probes=[Outputs()]).run(load_target(out, progress=False)).result("outputs")
    assert not first.cached and not again.cached  # the base's cached result is never served
    assert again.metrics["value"].value == fresh.metrics["value"].value
    assert Auditor(probes=[Outputs()], cache_dir=cache).run(base_target).result("outputs").cached  # the cache works


@pytest.mark.slow
def test_threshold_model_audited_beside_the_base_cache_shows_its_own_group_fairness(
        classifier_dir, train_csv, tmp_path):
    """The reported case: `debias --technique threshold` kept the weights, so the card showed the base's
    cached equalized-odds difference."""
    evaluation = tmp_path / "eval.csv"
    labelled_data(7, n=200).to_csv(evaluation, index=False)
    thr = tmp_path / "thr"
    assert main(["debias", "--technique", "threshold", "--model", str(classifier_dir), "--data", str(train_csv),
                 "--label-column", "label", "--sensitive-feature", "gender", "--constraints", "equalized_odds",
                 "--out", str(thr)]) == 0
    common = ["--probe", "group_fairness", "--data", str(evaluation), "--label-column", "label",
              "--sensitive-feature", "gender", "--no-progress", "--quiet"]

    def audit(model: Path, out: Path) -> dict:
        assert main(["run", "--model", str(model), "--out", str(out), *common]) in (0, 1)
        return json.loads((out / "results.json").read_text())

    shared = tmp_path / "audit-report"
    base = audit(classifier_dir, shared)
    beside = audit(thr, shared)
    fresh = audit(thr, tmp_path / "fresh")
    assert beside["manifest"]["fingerprint"] != base["manifest"]["fingerprint"]
    assert beside["results"][0]["cached"] is False
    assert beside["results"][0]["metrics"] == fresh["results"][0]["metrics"]


# -- wrong or missing weights ----------------------------------------------------------------
@pytest.fixture(scope="module")
def wrong_architecture(tmp_path_factory) -> Path:
    """A directory whose config and tokenizer say BERT and whose weights are GPT-2's."""
    root = tmp_path_factory.mktemp("wrong")
    gpt2 = make_tiny_model("causal-lm", root / "gpt2")
    bert = make_tiny_model("encoder", root / "bert")
    shutil.copy(gpt2 / "model.safetensors", bert / "model.safetensors")
    return bert


def test_weights_of_another_architecture_are_refused_naming_the_tensors(wrong_architecture):
    with pytest.raises(ModelLoadError, match=r"newly initialised.*embeddings\.LayerNorm\.bias.*transformer\.h\.0.*"
                                             r"--allow-new-weights") as info:
        load_target(wrong_architecture, progress=False)
    assert "\n" not in str(info.value)


def test_allow_new_weights_audits_them_and_records_them(wrong_architecture):
    target = load_target(wrong_architecture, progress=False, allow_new_weights=True)
    assert "embeddings.word_embeddings.weight" in target.new_weights and len(target.new_weights) > 30
    assert any("random weights" in note for note in target.notes)


def test_cli_refuses_another_architecture_in_one_line_with_exit_2(wrong_architecture, tmp_path, capsys):
    code = main(["run", "--model", str(wrong_architecture), "--probe", "seat", "--out", str(tmp_path / "o"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "embeddings.LayerNorm.bias" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o" / "results.json").exists()


def test_cli_allow_new_weights_audits_and_records_them(wrong_architecture, tmp_path):
    config = tmp_path / "audit.yaml"
    config.write_text("select: [seat]\nprobes:\n  seat:\n    params: {tests: [weat6], n_samples: 200, n_boot: 50}\n")
    out = tmp_path / "o"
    assert main(["run", "--model", str(wrong_architecture), "--config", str(config), "--allow-new-weights",
                 "--out", str(out), "--no-progress", "--quiet"]) in (0, 1)
    manifest = json.loads((out / "results.json").read_text())["manifest"]
    assert "embeddings.word_embeddings.weight" in manifest["new_weights"]
    assert any("random weights" in note for note in manifest["notes"])


def test_a_shape_mismatch_is_refused_naming_the_tensor(tiny_dirs, tmp_path):
    edited = _copy(tiny_dirs["encoder"], tmp_path / "m")
    config = json.loads((edited / "config.json").read_text())
    _edit_json(edited / "config.json", vocab_size=config["vocab_size"] + 3)
    with pytest.raises(ModelLoadError, match=r"embeddings\.word_embeddings\.weight.*Shapes differ"):
        load_target(edited, progress=False)


def test_an_encoder_checkpoint_as_classifier_gets_a_seeded_recorded_head():
    """MiniLM has no classifier: the new head is drawn from the seed, so two runs give the same numbers."""
    texts = ["she is a doctor", "he is a nurse", "the film was great"]
    a = load_target(kind="sequence-classification", progress=False, device="cpu", seed=5)
    b = load_target(kind="sequence-classification", progress=False, device="cpu", seed=5)
    c = load_target(kind="sequence-classification", progress=False, device="cpu", seed=6)
    assert a.new_weights == ["classifier.bias", "classifier.weight"]
    np.testing.assert_array_equal(a.predict_proba(texts), b.predict_proba(texts))
    assert not np.array_equal(a.predict_proba(texts), c.predict_proba(texts))  # the seed is what fixes it
    assert a.fingerprint == b.fingerprint != c.fingerprint  # the audited head is part of the model
    assert a.fingerprint_parts["weights"] == c.fingerprint_parts["weights"]
    assert any("untrained head" in note for note in a.notes)
    state = torch.get_rng_state()
    load_target(kind="sequence-classification", progress=False, device="cpu", seed=5)
    assert torch.equal(state, torch.get_rng_state())  # the caller's generator is left alone


def test_new_head_is_in_results_json_and_both_cards(tmp_path):
    from reports.markdown_card import render_markdown_card
    from reports.model_card import render_html_card

    target = load_target(kind="sequence-classification", progress=False, device="cpu", seed=5)
    results = Auditor(AuditConfig(seed=5), probes=[Outputs()]).run(target)
    path = results.save(tmp_path / "results.json")
    manifest = json.loads(path.read_text())["manifest"]
    assert manifest["new_weights"] == ["classifier.bias", "classifier.weight"]
    assert manifest["dtypes"] == ["float32"] and "model.safetensors" in manifest["files"]
    assert manifest["fingerprint"] == target.fingerprint and "weights" in manifest["fingerprint_parts"]
    html = render_html_card(AuditResults.load(path))
    summary = html[html.index('<section id="summary">'):html.index('<section id="details">')]
    assert "untrained head" in summary and "classifier.weight" in summary
    markdown = render_markdown_card(results)
    table = markdown[markdown.index("## Audit summary"):markdown.index("| Probe |")]
    assert "untrained head" in table and "classifier.weight" in table
    trained = Auditor(probes=[Outputs()]).run(load_target(progress=False, device="cpu"))
    assert "untrained head" not in render_html_card(trained) and trained.manifest.new_weights == []


def test_cli_seed_fixes_the_new_head(tmp_path):
    data = tmp_path / "eval.csv"
    labelled_data(3, n=60).to_csv(data, index=False)
    config = tmp_path / "audit.yaml"
    config.write_text("select: [group_fairness]\nprobes:\n  group_fairness:\n    params: {n_boot: 20, min_group_size: 5}\n")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["run", "--kind", "sequence-classification", "--config", str(config), "--seed", "3",
                     "--data", str(data), "--label-column", "label", "--sensitive-feature", "gender",
                     "--out", str(out), "--no-progress", "--quiet", "--no-cache"]) in (0, 1)
        outs.append(json.loads((out / "results.json").read_text()))
    assert outs[0]["manifest"]["fingerprint"] == outs[1]["manifest"]["fingerprint"]
    assert outs[0]["manifest"]["new_weights"] == ["classifier.bias", "classifier.weight"]
    assert outs[0]["results"][0]["status"] != "errored"
    assert outs[0]["results"][0]["metrics"] == outs[1]["results"][0]["metrics"]


def test_pickle_weights_fall_back_to_file_hashes(tmp_path):
    from transformers import BertConfig, BertModel

    from tests.tiny import save_bert_tokenizer

    fingerprints = []
    for seed in (0, 1):
        directory = tmp_path / f"m{seed}"
        save_bert_tokenizer(directory)
        torch.manual_seed(seed)
        model = BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32))
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
        target = load_target(directory, allow_pickle=True, progress=False)
        digest = hashlib.sha256((directory / "pytorch_model.bin").read_bytes()).hexdigest()
        assert target.fingerprint_parts["weights"].startswith("files:") and target.files["pytorch_model.bin"] == f"sha256:{digest}"
        fingerprints.append(target.fingerprint)
    assert fingerprints[0] != fingerprints[1]


def test_the_weight_file_named_in_config_is_the_one_fingerprinted(tiny_dirs, tmp_path):
    edited = _copy(tiny_dirs["encoder"], tmp_path / "m")
    (edited / "model.safetensors").rename(edited / "weights-v2.safetensors")
    _edit_json(edited / "config.json", transformers_weights="weights-v2.safetensors")
    target = load_target(edited, progress=False)
    assert "weights-v2.safetensors" in target.files
    assert target.fingerprint_parts["weights"] == load_target(tiny_dirs["encoder"], progress=False).fingerprint_parts["weights"]
    _edit_json(edited / "config.json", transformers_weights="../elsewhere.safetensors")
    with pytest.raises(ModelLoadError, match="transformers_weights"):
        load_target(edited, progress=False)


# -- corrupt weights -------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty", "truncated", "short", "header", "garbage"])
def test_corrupt_safetensors_give_one_clear_error(tiny_dirs, tmp_path, damage, capsys):
    edited = _copy(tiny_dirs["encoder"], tmp_path / "m")
    weights = edited / "model.safetensors"
    data = weights.read_bytes()
    damaged = {"empty": b"", "truncated": data[: len(data) - 100], "short": data[:5],
               "header": data[:8] + b"{not json" + data[17:], "garbage": b"\xff" * 64}[damage]
    weights.write_bytes(damaged)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.* is not a valid safetensors file") as info:
        load_target(edited, progress=False)
    assert "\n" not in str(info.value)
    assert main(["run", "--model", str(edited), "--probe", "seat", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "not a valid safetensors file" in err


def test_a_missing_shard_is_named(tiny_dirs, tmp_path):
    from transformers import AutoModel

    sharded = tmp_path / "sharded"
    _copy(tiny_dirs["encoder"], sharded)
    (sharded / "model.safetensors").unlink()
    AutoModel.from_pretrained(tiny_dirs["encoder"]).save_pretrained(sharded, max_shard_size="20KB")
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(ModelLoadError, match=f"shard '{victim.name}' is missing"):
        load_target(sharded, progress=False)


# -- symlinks --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [RECORD_FILENAME, THRESHOLDS_FILENAME, "config.json", "vocab.txt", "model.safetensors"])
def test_a_symlink_leaving_the_model_directory_is_refused(tiny_dirs, tmp_path, name):
    edited = _copy(tiny_dirs["sequence-classification"], tmp_path / "m")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    if (edited / name).exists():
        shutil.move(edited / name, secret)
    else:
        secret.write_text(json.dumps({"debiasing": {"technique": "SECRET-CONTENT"}}))
    (edited / name).symlink_to(secret)
    with pytest.raises(ModelLoadError, match=f"'{name}' in model directory .* is a symlink to .*secret.txt"):
        load_target(edited, progress=False)


def test_cli_refuses_a_record_linked_outside_and_writes_nothing(tiny_dirs, tmp_path, capsys):
    edited = _copy(tiny_dirs["encoder"], tmp_path / "m")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"dp": {"note": "SECRET-CONTENT"}}))
    (edited / RECORD_FILENAME).symlink_to(secret)
    out = tmp_path / "o"
    assert main(["run", "--model", str(edited), "--probe", "seat", "--out", str(out), "--no-progress"]) == 2
    assert RECORD_FILENAME in capsys.readouterr().err
    assert not out.exists() or not any("SECRET" in p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())
    with pytest.raises(ModelLoadError, match="symlink"):
        read_records(edited)


def test_a_symlink_inside_the_model_directory_is_fine(tiny_dirs, tmp_path):
    edited = _copy(tiny_dirs["encoder"], tmp_path / "m")
    (edited / "store").mkdir()
    shutil.move(edited / "vocab.txt", edited / "store" / "vocab.txt")
    (edited / "vocab.txt").symlink_to(edited / "store" / "vocab.txt")
    assert load_target(edited, progress=False).fingerprint == load_target(tiny_dirs["encoder"], progress=False).fingerprint


def _fake_hub_cache(source: Path, root: Path, repo: str = "models--org--tiny") -> Path:
    """The Hugging Face cache layout: snapshots/<rev>/<file> -> ../../blobs/<sha256 of the file>."""
    blobs = root / repo / "blobs"
    snapshot = root / repo / "snapshots" / ("a" * 40)
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file():
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            shutil.copy(file, blobs / digest)
            (snapshot / file.name).symlink_to(Path("../../blobs") / digest)
    return snapshot


def test_the_hub_cache_blob_store_keeps_working(tiny_dirs, tmp_path):
    snapshot = _fake_hub_cache(tiny_dirs["encoder"], tmp_path / "hub")
    assert all((snapshot / n).is_symlink() for n in ("config.json", "model.safetensors"))
    target = load_target(snapshot, progress=False)
    assert target.fingerprint == load_target(tiny_dirs["encoder"], progress=False).fingerprint


def test_a_hub_snapshot_linking_into_another_repository_is_refused(tiny_dirs, tmp_path):
    hub = tmp_path / "hub"
    snapshot = _fake_hub_cache(tiny_dirs["encoder"], hub)
    other = _fake_hub_cache(tiny_dirs["causal-lm"], hub, repo="models--else--where")
    config = snapshot / "config.json"
    config.unlink()
    config.symlink_to((other / "config.json").resolve())
    with pytest.raises(ModelLoadError, match=r"'config\.json' in model directory .*models--else--where"):
        load_target(snapshot, progress=False)


# -- the schema ------------------------------------------------------------------------------
def test_schema_describes_the_provenance_fields():
    manifest = json_schema()["$defs"]["Manifest"]["properties"]
    for field in ("fingerprint", "fingerprint_parts", "files", "dtypes", "new_weights"):
        assert field in manifest


def test_results_without_the_new_fields_still_load(tmp_path, tiny_targets):
    results = Auditor(probes=[Outputs()]).run(tiny_targets["encoder"])
    raw = results.model_dump(mode="json")
    for field in ("fingerprint_parts", "files", "dtypes", "new_weights"):
        raw["manifest"].pop(field)
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert AuditResults.load(tmp_path / "old.json").manifest.new_weights == []


def test_default_model_has_no_new_weights():
    assert load_target(default_model_path(), progress=False).new_weights == []


def test_baseline_refusal_names_the_parts_that_differ():
    from audit.baseline import check_compatible
    from audit.errors import DataError
    from audit.results import AuditResults, Manifest

    def results(config_digest: str) -> AuditResults:
        parts = {"weights": "sha256:w", "config": config_digest, "tokenizer": "sha256:t"}
        manifest = Manifest(rai_audit_version="0", model_id="m", model_path="/m", fingerprint=f"sha256:{config_digest}",
                            fingerprint_parts=parts, kind="encoder", n_parameters=1, device="cpu", max_length=16,
                            seed=0, started_at="t0", finished_at="t1", duration_s=0.0, library_versions={})
        return AuditResults(manifest=manifest, results=[])

    with pytest.raises(DataError, match=r"a different model \(fingerprint parts that differ: config\)"):
        check_compatible(results("sha256:c1"), results("sha256:c2"))
    check_compatible(results("sha256:c1"), results("sha256:c2"), allow_different_models=True)


def test_an_unchanged_file_is_hashed_once_and_any_rewrite_is_seen(tmp_path, monkeypatch):
    import os

    from audit import provenance

    monkeypatch.setattr(provenance, "_SETTLED_NS", -1)  # as if every file had settled long ago
    monkeypatch.setattr(provenance, "_DIGESTS", {})
    opened: list[str] = []
    real_open = open
    monkeypatch.setattr(provenance, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k),
                        raising=False)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"A" * 1000)
    first = provenance.file_digest(f)
    assert provenance.file_digest(f) == first and len(opened) == 1  # the second look reads no bytes
    before = os.stat(f)
    f.write_bytes(b"B" * 1000)  # same size, and the modification time put back: the change time still moves
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert provenance.file_digest(f) == "sha256:" + hashlib.sha256(b"B" * 1000).hexdigest()
    assert len(opened) == 2


def test_a_file_changed_moments_ago_is_hashed_every_time(tmp_path, monkeypatch):
    from audit import provenance

    monkeypatch.setattr(provenance, "_DIGESTS", {})
    f = tmp_path / "fresh.txt"
    f.write_text("x")
    provenance.file_digest(f)
    assert provenance._DIGESTS == {}  # inside the timestamp window: not remembered
