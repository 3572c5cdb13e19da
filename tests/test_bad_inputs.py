"""Bad input is one line on stderr and exit 2, with nothing half-written; faults lose nothing (issue 12).

Each test here failed on the code before it: a traceback, a silent wrong answer, a file lost or
a mixed report set.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from audit import AuditConfig, Auditor, load_target
from audit.cli import main
from audit.errors import ConfigError, OutputError

SEAT = ["--probe", "seat", "--no-progress"]


@pytest.fixture
def cheap_config(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("probes:\n  seat:\n    params: {tests: [weat6], n_samples: 200, n_boot: 100}\n")
    return cfg


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, *fragments):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("rai-audit: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith((".tmp", ".old")))


def tree_digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# -- training records ------------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "field"), [
    ({"dp": {"epsilon": "abc", "delta": 1e-5}}, "'dp.epsilon'"),
    ({"dp": {"epsilon": 1.0, "delta": "x"}}, "'dp.delta'"),
    ({"dp": {"epsilon": 1.0, "delta": 2.0}}, "'dp.delta'"),
    ({"dp": {"epsilon": -1.0, "delta": 1e-5}}, "'dp.epsilon'"),
    ({"dp": "hello"}, "section 'dp'"),
    ({"federated": {"rounds": "x"}}, "'federated.rounds'"),
])
def test_malformed_record_fails_before_any_probe(capsys, tiny_dirs, tmp_path, cheap_config, record, field):
    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["encoder"], model)
    (model / "rai_audit_record.json").write_text(json.dumps(record))
    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "run", "--model", model, "--config", cheap_config, "--out", out, *SEAT)
    assert_one_line(code, err, field, "rai_audit_record.json")
    assert "[1/1]" not in err and not out.exists()


def test_card_that_cannot_render_keeps_the_finished_audit(tiny_targets, tmp_path):
    from reports.model_card import write_reports

    results = Auditor(AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat6"], "n_samples": 100,
                                                                               "n_boot": 50}}})
                      ).run(tiny_targets["encoder"])
    out = tmp_path / "out"
    write_reports(results, out)  # an earlier, good set
    broken = results.model_copy(update={"manifest": results.manifest.model_copy(
        update={"records": {"dp": {"epsilon": "abc", "delta": 1e-5}}})})
    with pytest.raises(OutputError, match=r"'dp\.epsilon'") as caught:
        write_reports(broken, out)
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert json.loads((out / "results.json").read_text())["manifest"]["records"]["dp"]["epsilon"] == "abc"


def test_rerendering_the_same_results_that_fail_keeps_the_cards(report_sets, tmp_path, monkeypatch):
    from reports.model_card import write_reports

    old, _new = report_sets
    out = tmp_path / "out"
    write_reports(old, out)
    before = tree_digest(out)

    def broken(_results):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr("reports.markdown_card.render_markdown_card", broken)
    with pytest.raises(OutputError, match="renderer failed"):
        write_reports(old, out)  # e.g. 'rai-audit report out/results.json' after an upgrade
    assert tree_digest(out) == before


# -- run options -------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_gpu(capsys, tiny_dirs, tmp_path, cheap_config, device):
    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out,
                           "--device", device, *SEAT)
    assert_one_line(code, err, repr(device), "--device cpu")
    assert not out.exists()


@pytest.mark.parametrize("device", ["tpu", "cuda:x"])
def test_unknown_device(capsys, tiny_dirs, tmp_path, cheap_config, device):
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config,
                           "--out", tmp_path / "r", "--device", device, *SEAT)
    assert_one_line(code, err, repr(device))


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_out_of_range(capsys, tiny_dirs, tmp_path, cheap_config, seed):
    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out,
                           "--seed", seed, *SEAT)
    assert_one_line(code, err, "'seed'", seed)
    assert not out.exists()


def test_max_length_above_position_embeddings(capsys, tiny_dirs, tmp_path, cheap_config):
    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out,
                           "--max-length", "100000", *SEAT)
    assert_one_line(code, err, "100000", "128")
    assert not out.exists()


@pytest.mark.parametrize("command", ["train-dp", "federate"])
def test_trainers_refuse_max_length_above_positions(capsys, tiny_dirs, tmp_path, command):
    data = tmp_path / "train.csv"
    data.write_text("text,label\n" + "".join(f"good movie {i},1\nbad film {i},0\n" for i in range(10)))
    out = tmp_path / "trained"
    code, _, err = run_cli(capsys, command, "--model", tiny_dirs["sequence-classification"], "--data", data,
                           "--label-column", "label", "--out", out, "--max-length", "100000", "--no-progress")
    assert_one_line(code, err, "100000", "128 position embeddings")
    assert not out.exists()


def test_out_pointing_at_the_model_is_refused(capsys, tiny_dirs, tmp_path, cheap_config):
    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["encoder"], model)
    (model / "README.md").write_text("# the model's own Hub card\n")
    before = tree_digest(model)
    code, _, err = run_cli(capsys, "run", "--model", model, "--config", cheap_config, "--out", model, *SEAT)
    assert_one_line(code, err, "holds a model", "--out")
    assert tree_digest(model) == before and not (model / ".cache").exists()


def test_out_pointing_at_another_model_directory_is_refused(capsys, tiny_dirs, tmp_path, cheap_config):
    other = tmp_path / "other"
    shutil.copytree(tiny_dirs["causal-lm"], other)
    before = tree_digest(other)
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", other,
                           *SEAT)
    assert_one_line(code, err, "config.json")
    assert tree_digest(other) == before


# -- output files ----------------------------------------------------------------------------------
def test_schema_out_is_a_directory(capsys, tmp_path):
    code, out, err = run_cli(capsys, "schema", "--out", tmp_path)
    assert_one_line(code, err, "is a directory", "--out")
    assert out == "" and list(tmp_path.iterdir()) == []


def test_schema_out_parent_missing(capsys, tmp_path):
    code, _, err = run_cli(capsys, "schema", "--out", tmp_path / "missing" / "schema.json")
    assert_one_line(code, err, "does not exist")
    assert not (tmp_path / "missing").exists()


def test_scan_pii_json_directory_fails_before_the_scan(capsys, tmp_path, monkeypatch):
    from privacy.pii import PIIScanner

    def never(*_args, **_kwargs):
        raise AssertionError("the scan ran before --json-file was checked")

    monkeypatch.setattr(PIIScanner, "scan_table", never)
    data = tmp_path / "d.csv"
    data.write_text("text\nmail jo@example.com\n")
    code, _, err = run_cli(capsys, "scan-pii", data, "--columns", "text", "--engine", "pattern",
                           "--json-file", tmp_path, "--no-progress")
    assert_one_line(code, err, "is a directory", "--json-file")


def test_scan_pii_json_onto_its_input_is_refused(capsys, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("text\nmail jo@example.com\n")
    before = tree_digest(tmp_path)
    code, _, err = run_cli(capsys, "scan-pii", data, "--columns", "text", "--engine", "pattern",
                           "--json-file", data, "--no-progress")
    assert_one_line(code, err, "is the input file", "--json-file")
    assert tree_digest(tmp_path) == before


def test_redact_csv_with_broken_quote(capsys, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text('id,text\n1,"broken quote\n2,fine\n')
    out = tmp_path / "out.csv"
    code, _, err = run_cli(capsys, "redact", data, "--out", out, "--columns", "text", "--engine", "pattern",
                           "--no-progress")
    assert_one_line(code, err, "not valid CSV", "d.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


@pytest.mark.parametrize("name", ["..", ".", "../escape", ".hidden"])
def test_experiment_technique_name_cannot_leave_out(capsys, tiny_dirs, tmp_path, name):
    spec = tmp_path / "experiment.yaml"
    spec.write_text(json.dumps({"baseline": str(tiny_dirs["sequence-classification"]), "out": str(tmp_path / "exp"),
                                "techniques": [{"name": name, "technique": "threshold"}]}))
    code, _, err = run_cli(capsys, "experiment", spec)
    assert_one_line(code, err, "techniques.0.name", repr(name))
    assert not (tmp_path / "exp").exists()


# -- the Python API --------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"max_length": 0}, "max_length must be a positive integer, got 0"),
    ({"max_length": -5}, "max_length must be a positive integer, got -5"),
    ({"batch_size": "8"}, "batch_size must be a positive integer, got '8'"),
    ({"batch_size": True}, "batch_size must be a positive integer, got True"),
    ({"max_length": 10_000}, "128 position embeddings"),
    ({"device": "tpu"}, "Unknown device 'tpu'"),
    ({"seed": -1}, "seed must be a whole number from 0 to 2**32 - 1, got -1"),
])
def test_load_target_arguments(tiny_dirs, kwargs, fragment):
    with pytest.raises(ConfigError) as caught:
        load_target(tiny_dirs["encoder"], progress=False, **kwargs)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_auditor_run_needs_a_target():
    with pytest.raises(ConfigError, match="needs an AuditTarget, got NoneType"):
        Auditor(AuditConfig(select=["seat"])).run(None)


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"batch_size": 0}, {"seed": "x"}, {"no_such_key": 1},
                                    {"data": {"path": None}}])
def test_audit_config_raises_config_error(kwargs):
    from pydantic import ValidationError

    with pytest.raises(ConfigError) as caught:
        AuditConfig(**kwargs)
    assert not isinstance(caught.value, ValidationError) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError):
        AuditConfig.model_validate(kwargs)


@pytest.mark.parametrize(("texts", "fragment"), [
    ("abc", "got one str ('abc')"),
    (None, "got NoneType"),
    (["ok", 3], "item 1 is int"),
    ({"a": 1}, "got dict"),
])
def test_texts_must_be_a_sequence_of_str(tiny_targets, texts, fragment):
    target = tiny_targets["encoder"]
    for op in (target.embed, target.tokenize, target.hidden_states):
        with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            op(texts)
    with pytest.raises(ConfigError, match="predict_proba"):
        tiny_targets["sequence-classification"].predict_proba(texts)


# -- faults ----------------------------------------------------------------------------------------
@pytest.fixture
def report_sets(tiny_targets):
    config = AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat6"], "n_samples": 100,
                                                                      "n_boot": 50}}})
    old = Auditor(config).run(tiny_targets["encoder"])
    new = Auditor(config.model_copy(update={"seed": 1})).run(tiny_targets["encoder"])
    return old, new


def test_full_disk_while_staging_leaves_the_old_set(report_sets, tmp_path, monkeypatch):
    import audit._io as io_module
    from reports.model_card import write_reports

    old, new = report_sets
    out = tmp_path / "out"
    write_reports(old, out)
    before = tree_digest(out)
    real = io_module._stage
    calls = []

    def full_disk(target, text):
        calls.append(target)
        if len(calls) == 2:  # results.json is staged, the card hits a full disk
            raise OutputError(io_module.WRITE_FAILED.format(path=str(target), reason=os.strerror(errno.ENOSPC)))
        return real(target, text)

    monkeypatch.setattr(io_module, "_stage", full_disk)
    with pytest.raises(OutputError, match="No space left") as caught:
        write_reports(new, out)
    assert "\n" not in str(caught.value)
    assert tree_digest(out) == before and leftovers(out) == []


def test_failed_rename_midway_restores_the_old_set(report_sets, tmp_path, monkeypatch):
    from reports.model_card import write_reports

    old, new = report_sets
    out = tmp_path / "out"
    write_reports(old, out)
    before = tree_digest(out)
    real = os.replace
    renames = []

    names = {"results.json", "model_card.html", "README.md"}

    def flaky(src, dst):
        if Path(dst).name in names and str(src).endswith(".tmp"):  # a staged file moving into place
            renames.append(dst)
            if len(renames) == 2:
                raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputError, match="Input/output error"):
        write_reports(new, out)
    assert tree_digest(out) == before and leftovers(out) == []


def test_disk_full_in_cli_is_one_line(capsys, tiny_dirs, tmp_path, cheap_config, monkeypatch):
    import audit._io as io_module

    out = tmp_path / "report"
    assert run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out, *SEAT)[0] == 0
    before = tree_digest(out)

    def full_disk(*_args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_module.os, "fsync", full_disk)  # every staged write now fails
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out,
                           "--seed", "3", "--quiet", *SEAT)
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("rai-audit: error: ")]
    assert code == 2 and len(errors) == 1 and "No space left" in errors[0] and "results.json" in errors[0], err
    # The cache that could not be written is one warning line, not a Python warning with its source line.
    assert all(line.startswith(("rai-audit: error: ", "rai-audit: warning: could not cache")) for line in lines), err
    assert tree_digest(out) == before and leftovers(out) == []


def test_resumed_run_counts_the_same_truncated_texts(capsys, tiny_dirs, tmp_path, cheap_config):
    out = tmp_path / "report"
    counts = []
    for _ in range(2):
        code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config,
                               "--out", out, "--max-length", "6", *SEAT)
        assert code == 0, err
        counts.append(json.loads((out / "results.json").read_text())["manifest"]["truncated_texts"])
    assert "cached" in err and counts[0] == counts[1] > 0
    # The cache holds keyed digests of the truncated texts, never the texts themselves.
    cached = next((out / ".cache").glob("seat-*.json")).read_text()
    assert "This is" not in cached and len(json.loads(cached)["truncated"]) == counts[0]


def test_truncation_count_is_per_audit_not_per_target(tiny_dirs):
    def config(test):
        return AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": [test], "n_samples": 100,
                                                                        "n_boot": 50}}})

    def fresh():
        return load_target(tiny_dirs["encoder"], progress=False, device="cpu", max_length=6)

    alone = Auditor(config("weat7")).run(fresh()).manifest.truncated_texts
    shared = fresh()
    Auditor(config("weat6")).run(shared)
    after_another = Auditor(config("weat7")).run(shared).manifest.truncated_texts
    assert after_another == alone > 0  # not the texts an earlier audit of the same target truncated


# -- permissions -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    from audit._io import write_json_atomic

    old = os.umask(umask)
    try:
        path = write_json_atomic(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_an_existing_file_keeps_its_mode(tmp_path):
    from audit._io import write_text_atomic

    path = tmp_path / "x.txt"
    path.write_text("old")
    path.chmod(0o640)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o640


def test_reports_and_redacted_output_respect_the_umask(capsys, tiny_dirs, tmp_path, cheap_config):
    old = os.umask(0o022)
    try:
        out = tmp_path / "report"
        assert run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out,
                       *SEAT)[0] == 0
        data = tmp_path / "d.csv"
        data.write_text("text\nmail jo@example.com\n")
        assert run_cli(capsys, "redact", data, "--out", tmp_path / "r.csv", "--columns", "text",
                       "--engine", "pattern", "--no-progress")[0] == 0
    finally:
        os.umask(old)
    for path in [out / "results.json", out / "model_card.html", out / "README.md", tmp_path / "r.csv"]:
        assert path.stat().st_mode & 0o777 == 0o644, path

