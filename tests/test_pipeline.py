"""Audits in pipelines: baselines, JUnit XML, JSON output, the pytest plugin, example CI files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from audit import SCHEMA_VERSION, AuditConfig, Auditor, DataError, load_target
from audit.cli import main
from tests.tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
XSD = Path(__file__).parent / "data" / "junit_common.xsd"
GATED = ("select: [seat]\nprobes:\n  seat:\n    params: {tests: [weat6], n_samples: 2000, n_boot: 500}\n"
         "    gates:\n      mean_abs_effect_size: {tolerance: 0.1}\n")


def plant_bias(src: Path, dst: Path) -> Path:
    """Copy a tiny encoder and push male names and career words one way, female names and family words the other."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    one = "john paul mike kevin steve greg jeff bill executive management professional corporation salary office business career"
    other = "amy joan lisa sarah diana kate ann donna home parents children family cousins marriage wedding relatives"
    import torch

    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    weights = model.get_input_embeddings().weight
    with torch.no_grad():
        for words, sign in ((one, 1.0), (other, -1.0)):
            for token_id in tokenizer.convert_tokens_to_ids(words.split()):
                weights[token_id] += sign * 4.0 * direction
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    fair = make_tiny_model("encoder", root / "fair")
    biased = plant_bias(fair, root / "biased")
    config = root / "audit.yaml"
    config.write_text(GATED)
    baseline_dir = root / "baseline"
    assert main(["run", "--model", str(fair), "--config", str(config), "--out", str(baseline_dir), "--no-progress"]) == 0
    return {"root": root, "fair": fair, "biased": biased, "config": config, "baseline": baseline_dir / "results.json"}


def validate_junit(path: Path) -> ET.Element:
    import xmlschema

    xmlschema.XMLSchema(str(XSD)).validate(str(path))
    return ET.parse(path).getroot()


def test_worse_model_fails_against_baseline_with_junit(pipeline, capsys):
    out, junit = pipeline["root"] / "worse", pipeline["root"] / "worse-junit.xml"
    code = main(["run", "--model", str(pipeline["biased"]), "--config", str(pipeline["config"]), "--out", str(out),
                 "--baseline", str(pipeline["baseline"]), "--allow-different-models", "--junit", str(junit), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "gate failed: seat.mean_abs_effect_size" in err and "significantly worse than the baseline" in err
    root = validate_junit(junit)
    failing = [case for case in root.iter("testcase") if case.find("failure") is not None]
    names = [case.get("name") for case in failing]
    assert "seat.mean_abs_effect_size no regression (tolerance 0.1)" in names
    failure = next(c for c in failing if c.get("classname") == "rai-audit.gates").find("failure")
    assert "vs baseline" in failure.get("message")
    results = json.loads((out / "results.json").read_text())
    regression = next(g for g in results["gates"] if g["kind"] == "regression")
    baseline = json.loads(pipeline["baseline"].read_text())
    expected = (results["results"][0]["metrics"]["mean_abs_effect_size"]["value"]
                - baseline["results"][0]["metrics"]["mean_abs_effect_size"]["value"])
    assert regression["change"] == pytest.approx(expected) and regression["change"] > 0.1
    assert "significantly worse" in (out / "model_card.html").read_text()


def test_same_model_passes_against_its_own_baseline(pipeline, tmp_path):
    junit = tmp_path / "junit.xml"
    code = main(["run", "--model", str(pipeline["fair"]), "--config", str(pipeline["config"]), "--out", str(tmp_path / "o"),
                 "--baseline", str(pipeline["baseline"]), "--junit", str(junit), "--no-progress", "--quiet"])
    assert code == 0
    root = validate_junit(junit)
    assert root.get("failures") == "0" and root.get("errors") == "0"


def test_baseline_from_another_model_is_refused(pipeline, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["run", "--model", str(pipeline["biased"]), "--config", str(pipeline["config"]), "--out", str(out),
                 "--baseline", str(pipeline["baseline"])])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--allow-different-models" in err and len(err.splitlines()) == 1 and not out.exists()


def test_baseline_with_unreadable_schema_version(pipeline, tmp_path, capsys):
    bad = tmp_path / "results.json"
    data = json.loads(pipeline["baseline"].read_text())
    data["schema_version"] = "7.0"
    bad.write_text(json.dumps(data))
    code = main(["run", "--model", str(pipeline["fair"]), "--baseline", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and "schema version '7.0'" in capsys.readouterr().err


def test_junit_in_missing_directory(pipeline, tmp_path, capsys):
    code = main(["run", "--model", str(pipeline["fair"]), "--junit", str(tmp_path / "nope" / "j.xml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and not (tmp_path / "o").exists()


def test_json_summary(pipeline, tmp_path, capsys):
    code = main(["run", "--model", str(pipeline["fair"]), "--config", str(pipeline["config"]), "--out", str(tmp_path / "o"),
                 "--json", "--no-progress"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["passed"] is True and summary["probes"][0]["probe"] == "seat"
    assert summary["probes"][0]["ci"] is not None and summary["files"]["html"].endswith("model_card.html")
    assert summary["schema_version"] == SCHEMA_VERSION


def test_python_api_results_object(pipeline):
    config = AuditConfig.model_validate(yaml.safe_load(GATED))
    baseline = __import__("audit").AuditResults.load(pipeline["baseline"])
    results = Auditor(config, baseline=baseline, allow_different_models=True).run(load_target(pipeline["biased"], progress=False))
    assert not results.passed and results.failed_gates[0].kind == "regression"
    assert json.loads(results.to_json())["manifest"]["fingerprint"] == results.manifest.fingerprint
    assert results.to_html().startswith("<!DOCTYPE html>") and results.to_markdown().startswith("---")
    with pytest.raises(DataError, match="--allow-different-models"):
        Auditor(config, baseline=baseline).run(load_target(pipeline["biased"], progress=False))


# -- the pytest plugin ---------------------------------------------------------------------
pytest_plugins = ["pytester"]


def _plugin_project(pytester, model: Path, enabled: bool) -> None:
    config = pytester.path / "audit.yaml"
    config.write_text("probes:\n  seat:\n    params: {tests: [weat6], n_samples: 500, n_boot: 100}\n")
    ini = f"[pytest]\nrai_audit_model = {model}\nrai_audit_config = audit.yaml\n"
    pytester.makefile(".ini", pytest=ini + ("rai_audit = true\n" if enabled else ""))


def test_pytest_plugin_pass_and_fail(pytester, pipeline):
    _plugin_project(pytester, pipeline["fair"], enabled=True)
    pytester.makepyfile(test_release="""
        def test_seat_is_small(rai_audit):
            rai_audit.assert_probe_passes("seat", max_abs_effect_size=5.0)

        def test_seat_is_impossibly_small(rai_audit):
            rai_audit.assert_probe_passes("seat", max_abs_effect_size=-1.0)
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*rai-audit probe 'seat': max_abs_effect_size = * > -1*"])


def test_pytest_plugin_has_no_effect_when_not_enabled(pytester, pipeline):
    _plugin_project(pytester, pipeline["fair"], enabled=False)
    pytester.makepyfile(test_other="""
        import sys

        def test_nothing_heavy_was_imported():
            assert "torch" not in sys.modules and "audit.target" not in sys.modules

        def test_fixture_absent(request):
            import pytest
            with pytest.raises(pytest.FixtureLookupError):
                request.getfixturevalue("rai_audit")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


# -- the example pipeline files ---------------------------------------------------------------
def _commands(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    if "jobs" in data:
        steps = [s for job in data["jobs"].values() for s in job["steps"]]
        return [s["run"] for s in steps if "rai-audit" in s.get("run", "")]
    return [line for job in data.values() if isinstance(job, dict) for line in job.get("script", []) if "rai-audit" in line]


def _install_lines(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    if "jobs" in data:
        steps = [s for job in data["jobs"].values() for s in job["steps"]]
        return [line for s in steps for line in s.get("run", "").splitlines() if "pip install" in line]
    return [line for job in data.values() if isinstance(job, dict) for line in job.get("before_script", []) if "pip install" in line]


@pytest.mark.slow
@pytest.mark.parametrize("example", ["github-actions.yml", "gitlab-ci.yml"])
def test_example_pipeline_commands_run(example, pipeline, tmp_path):
    """The example's command lines, as written: exit 0 on the released model, exit 1 on a worse one."""
    path = REPO / "examples" / example
    commands = _commands(path)
    assert commands, f"no rai-audit command in {example}"
    assert all("--baseline" in c for c in commands), "the example must compare with the released model's audit"
    # rai-audit is not on a package index: the example installs a built wheel or a path
    assert not any(re.search(r"pip install (\S+ )*rai-audit\b", line) for line in _install_lines(path))
    if "jobs" in yaml.safe_load(path.read_text()):
        assert yaml.safe_load(path.read_text())["permissions"]["checks"] == "write"  # the JUnit action needs it
    (tmp_path / "examples").mkdir()
    config = yaml.safe_load((REPO / "examples" / "audit.yaml").read_text())
    assert config["select"], "the example config selects its probes"
    config["probes"]["seat"]["params"].update(n_samples=2000, n_boot=500)  # the tiny model only needs a quick run
    (tmp_path / "examples" / "audit.yaml").write_text(yaml.safe_dump(config))
    released = tmp_path / "audits" / "released"
    assert main(["run", "--model", str(pipeline["fair"]), "--config", str(tmp_path / "examples" / "audit.yaml"),
                 "--out", str(released), "--no-progress", "--quiet"]) == 0
    for model, expected in ((pipeline["fair"], 0), (pipeline["biased"], 1)):
        env = {**os.environ, "MODEL_DIR": str(model), "BASELINE": str(released / "results.json"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for command in commands:
            proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=300)
            assert proc.returncode == expected, (model.name, proc.stderr)
        assert (tmp_path / "audit-report" / "model_card.html").exists()
        root = validate_junit(tmp_path / "audit-report" / "junit.xml")
        assert (int(root.get("failures")) > 0) == (expected == 1)
