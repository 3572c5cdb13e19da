"""Every code block of README.md runs, offline, so the README cannot drift from the tool.

Blocks are taken from the README itself. ``bash`` lines are parsed by the CLI's own argument parser
(every ``rai-audit`` line, and the ``rai-audit`` lines ``make -n`` would run), and the fast ones run
against tiny models saved under the names the README uses (``./my-model``, ``./clf``, ...); the
lines that train or need the Hub (``train-dp``, ``federate``, ``debias``, ``experiment``, the bundled
MiniLM over every probe, ``org/name``) are parsed only. ``python`` blocks run in a directory holding
those fixtures; ``yaml`` blocks are validated as audit configs (or an experiment file); the ``ini``
block is the ``pytest.ini`` the plugin example runs under; the ``toml`` block is parsed.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from audit.cli import build_parser, main
from audit.config import validate_config
from tests.tiny import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LANGUAGES = {"bash", "python", "yaml", "ini", "toml"}
KEY = "0123456789abcdef"  # the 16-character AES key the README's `--key "$KEY"` line reads

# The README's rai-audit lines that run here on tiny models (the rest are parsed only).
RUN_FAST = {
    "rai-audit run --config audit.yaml --probe seat --seed 7",
    "rai-audit probes",
    "rai-audit schema --out results.schema.json",
    "rai-audit scan-pii data.csv --columns text notes",
    "rai-audit scan-pii data.csv --columns text --json",
    "rai-audit redact data.csv --out clean.csv --columns text notes --operator replace",
    'rai-audit redact data.parquet --out enc.parquet --columns text --operator encrypt --key "$KEY"',
}
RUN_SLOW = {
    "rai-audit run --model ./my-model --out report",
    "rai-audit report report/results.json",
    "rai-audit run --model ./candidate --config audit.yaml --out report "
    "--baseline released/results.json --allow-different-models --junit report/junit.xml",
}
EXIT = {"rai-audit scan-pii data.csv --columns text notes": 1,  # "exit 1 if PII found": the fixture has PII
        "rai-audit scan-pii data.csv --columns text --json": 1}
SLOW_PYTHON = ("DPFineTuner", "FederatedFineTuner")


def readme_blocks() -> list[tuple[str, str, int]]:
    text = README.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def _blocks(language: str) -> list[tuple[str, int]]:
    return [(body, line) for lang, body, line in readme_blocks() if lang == language]


def bash_commands(body: str) -> list[str]:
    """The block's commands, continuation lines joined and comments dropped."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words).replace("'$KEY'", '"$KEY"'))
    return commands


def _normal(command: str) -> str:
    return " ".join(command.split())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with the files and models the README's examples name."""
    root = tmp_path_factory.mktemp("readme")
    encoder = make_tiny_model("encoder", root / "my-model")
    classifier = make_tiny_model("sequence-classification", root / "clf")
    for name in ("candidate",):
        make_tiny_model("encoder", root / name, seed=1)
    for name in ("my-classifier", "model", "path/to/model"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(classifier, root / name)
    rows = [{"text": f"{who} {verb} the {thing}.", "label": i % 2, "gender": ("female", "male")[i % 2],
             "sex": ("f", "m")[(i // 2) % 2], "region": ("north", "south", "east")[i % 3]}
            for i, (who, verb, thing) in enumerate(
                (w, v, t) for w in ("She", "He", "Mary", "John") for v in ("liked", "hated", "read", "wrote")
                for t in ("book", "film", "report", "song", "poem"))]
    for name in ("eval.csv", "train.csv"):
        with open(root / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    pii = [{"text": f"Write to person{i}@example.com about order {i}.", "notes": "call 212-555-0199"} for i in range(6)]
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "notes"])
        writer.writeheader()
        writer.writerows(pii)
    import pandas as pd

    pd.DataFrame(pii).to_parquet(root / "data.parquet")
    (root / "audit.yaml").write_text(
        f"model: {encoder}\nselect: [seat]\nprobes:\n  seat:\n    params: {{tests: [weat6], n_samples: 500, n_boot: 100}}\n"
        "    gates:\n      mean_abs_effect_size: {tolerance: 0.05}\n")
    return root


def test_every_block_has_a_runner():
    blocks = readme_blocks()
    assert len(blocks) >= 20, "README blocks not found: has the fence syntax changed?"
    unknown = [(lang, line) for lang, _, line in blocks if lang not in LANGUAGES]
    assert not unknown, f"README blocks with no runner in this test (language, line): {unknown}"


# -- bash ------------------------------------------------------------------------------------
def _parse(argv: list[str]) -> None:
    parser, _ = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"the CLI does not parse `rai-audit {shlex.join(argv)}` (exit {exc.code})")
    assert args.command == argv[0]


def test_every_bash_line_parses():
    readme_commands = {_normal(c) for body, _ in _blocks("bash") for c in bash_commands(body)}
    assert readme_commands >= RUN_FAST | RUN_SLOW, "a README line this test runs is gone: update RUN_FAST/RUN_SLOW"
    for body, line in _blocks("bash"):
        for command in bash_commands(body):
            argv = shlex.split(command)
            if argv[0] == "rai-audit":
                _parse(argv[1:])
            elif argv[0] == "make":
                dry = subprocess.run(["make", "-n", *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
                assert dry.returncode == 0, f"README line {line}: `{command}`: {dry.stderr}"
                for step in dry.stdout.splitlines():
                    words = shlex.split(step)
                    if words and words[0].endswith("/rai-audit"):
                        _parse(words[1:])
            elif argv[:2] == ["python", "-m"]:
                import importlib.util

                assert importlib.util.find_spec(argv[2]) is not None, f"README line {line}: no module {argv[2]}"
            else:
                pytest.fail(f"README line {line}: no runner for `{command}`")


def _run_line(command: str, workdir: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("KEY", KEY)
    argv = [os.path.expandvars(w) for w in shlex.split(command)][1:]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == EXIT.get(command, 0), f"`{command}` exited {code}: {captured.err[-2000:]}"


@pytest.mark.parametrize("command", sorted(RUN_FAST))
def test_fast_bash_lines_run(command, workdir, monkeypatch, capsys):
    _run_line(command, workdir, monkeypatch, capsys)


@pytest.mark.slow
def test_slow_bash_lines_run(workdir, monkeypatch, capsys):
    # the baseline the README's gate line compares with
    _run_line(f"rai-audit run --model {workdir / 'my-model'} --config audit.yaml --out released", workdir, monkeypatch, capsys)
    for command in ("rai-audit run --model ./my-model --out report", "rai-audit report report/results.json"):
        _run_line(command, workdir, monkeypatch, capsys)
    (gated,) = RUN_SLOW - {"rai-audit run --model ./my-model --out report", "rai-audit report report/results.json"}
    _run_line(gated, workdir, monkeypatch, capsys)
    assert (workdir / "report" / "junit.xml").is_file()


# -- python ----------------------------------------------------------------------------------
def _python_blocks(*, slow: bool) -> list:
    return [pytest.param(body, line, id=f"line{line}") for body, line in _blocks("python")
            if "def test_" not in body and any(m in body for m in SLOW_PYTHON) == slow]


def _exec(body: str, line: int, workdir: Path, monkeypatch) -> dict:
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": f"readme_line_{line}"}
    exec(compile(body, f"README.md:{line}", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("body", "line"), _python_blocks(slow=False))
def test_python_block_runs(body, line, workdir, monkeypatch):
    namespace = _exec(body, line, workdir, monkeypatch)
    if "LengthProbe" in namespace:  # a plugin class: it must satisfy the contract the registry checks
        from audit import Probe

        assert issubclass(namespace["LengthProbe"], Probe) and namespace["LengthProbe"].name == "length"


@pytest.mark.slow
@pytest.mark.parametrize(("body", "line"), _python_blocks(slow=True))
def test_slow_python_block_runs(body, line, workdir, monkeypatch):
    _exec(body, line, workdir, monkeypatch)


def test_pytest_plugin_example_runs_under_the_readme_ini(tmp_path):
    """The ``pytest.ini`` and the example test, as the README shows them, in a project of their own."""
    ((ini, _),) = _blocks("ini")
    ((test, _),) = [(b, n) for b, n in _blocks("python") if "def test_" in b]
    make_tiny_model("sequence-classification", tmp_path / "model")
    (tmp_path / "pytest.ini").write_text(ini)
    (tmp_path / "audit.yaml").write_text(
        "select: [seat, counterfactual]\nprobes:\n  seat: {params: {tests: [weat6], n_samples: 500, n_boot: 100}}\n"
        "  counterfactual: {params: {axes: [gender], n_boot: 100}}\n")
    (tmp_path / "test_release.py").write_text(test)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1), out
    # The tiny random model may miss a bound; the example itself must be sound: metrics that exist, probes that ran.
    assert "not available" not in out and "did not run" not in out and "Error" not in out.replace("AssertionError", ""), out
    if proc.returncode == 1:
        assert re.search(r"AssertionError: (rai-audit probe '\w+': \w+ = \S+ .*> |assert False)", out), out


# -- yaml, toml ------------------------------------------------------------------------------
def test_yaml_blocks_are_valid_configs(tmp_path):
    from probes.debias.experiment import load_experiment

    blocks = _blocks("yaml")
    assert blocks
    for body, line in blocks:
        raw = yaml.safe_load(body)
        if "techniques" in raw:
            path = tmp_path / "experiment.yaml"
            path.write_text(body)
            load_experiment(path)
        else:
            validate_config(raw, source=f"README.md line {line}")


def test_toml_block_declares_an_entry_point():
    ((body, _),) = _blocks("toml")
    group = tomllib.loads(body)["project"]["entry-points"]["rai_audit.probes"]
    assert all(re.fullmatch(r"[\w.]+:\w+", target) for target in group.values())
