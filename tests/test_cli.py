"""The CLI: exit codes, one-line errors with nothing written, and a full run on a tiny model."""

from __future__ import annotations

import json
import shutil

import pytest

from audit.cli import main
from tests.tiny import make_tiny_model

FAST = ["--probe", "seat", "--no-progress"]


@pytest.fixture
def cheap_config(tmp_path):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("probes:\n  seat:\n    params: {tests: [weat6], n_samples: 500, n_boot: 200}\n")
    return cfg


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, out_dir, fragment):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("rai-audit: error: ") and fragment in lines[0]
    assert "Traceback" not in err
    assert not out_dir.exists(), "nothing may be written on a usage error"


def test_run_writes_three_reports(capsys, tiny_dirs, tmp_path, cheap_config):
    out = tmp_path / "report"
    code, stdout, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out, *FAST)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"results.json", "model_card.html", "README.md"}
    results = json.loads((out / "results.json").read_text())
    assert results["manifest"]["model_path"] == str(tiny_dirs["encoder"])
    assert results["results"][0]["probe"] == "seat"
    assert "model_card.html" in stdout and "[1/1] seat:" in err


def test_report_rerenders_from_results(capsys, tiny_dirs, tmp_path, cheap_config):
    out = tmp_path / "report"
    assert run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cheap_config, "--out", out, *FAST)[0] == 0
    (out / "model_card.html").unlink()
    again = tmp_path / "again"
    code, _stdout, _ = run_cli(capsys, "report", out / "results.json", "--out", again)
    assert code == 0 and (again / "model_card.html").read_text().startswith("<!DOCTYPE html>")


def test_gate_failure_exits_1(capsys, tiny_dirs, tmp_path):
    cfg = tmp_path / "gate.yaml"
    cfg.write_text("probes:\n  seat:\n    params: {tests: [weat6], n_samples: 500, n_boot: 200}\n"
                   "    gates:\n      mean_abs_effect_size: {max: -1}\n")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cfg, "--out", out, *FAST)
    assert code == 1 and "gate failed: seat.mean_abs_effect_size" in err
    assert (out / "model_card.html").exists()


def test_missing_path(capsys, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", tmp_path / "missing", "--out", out)
    assert_usage_error(code, err, out, "does not exist")


def test_directory_without_config(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", tmp_path / "empty", "--out", out)
    assert_usage_error(code, err, out, "has no config.json")


def test_model_without_tokenizer(capsys, tiny_dirs, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dirs["encoder"] / name, model / name)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", model, "--out", out)
    assert_usage_error(code, err, out, "no tokenizer")


def test_pickle_only_weights(capsys, tmp_path):
    import torch
    from transformers import AutoModel

    model_dir = make_tiny_model("encoder", tmp_path / "m")
    state = AutoModel.from_pretrained(model_dir).state_dict()
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", model_dir, "--out", out)
    assert_usage_error(code, err, out, "only pickle weights")


def test_unknown_probe(capsys, tiny_dirs, tmp_path):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--probe", "nope", "--out", out)
    assert_usage_error(code, err, out, "Unknown probe 'nope'")


def test_invalid_yaml(capsys, tiny_dirs, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seed: [1,\n")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cfg, "--out", out)
    assert_usage_error(code, err, out, "is not valid YAML")


def test_unknown_config_key(capsys, tiny_dirs, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seed: 1\nouput_dir: x\n")
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--config", cfg, "--out", out)
    assert_usage_error(code, err, out, "unknown key 'ouput_dir'")


def test_unwritable_output_directory(capsys, tiny_dirs, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "report"
    code, _, err = run_cli(capsys, "run", "--model", tiny_dirs["encoder"], "--out", out)
    assert_usage_error(code, err, out, "cannot be")


def test_unknown_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--modle", "x"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1


def test_probes_lists_kinds(capsys):
    code, out, _ = run_cli(capsys, "probes", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert code == 0 and set(rows["seat"]["kinds"]) == {"encoder", "masked-lm", "causal-lm", "sequence-classification",
                                                        "seq2seq"}  # seq2seq: the encoder's states


def test_schema_command(capsys, tmp_path):
    code = main(["schema", "--out", str(tmp_path / "schema.json")])
    schema = json.loads((tmp_path / "schema.json").read_text())
    assert code == 0 and schema["title"].startswith("rai-audit results")
