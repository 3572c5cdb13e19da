"""CLI help conventions: every option says what it does and its default; every sub-command ends with examples that parse."""

from __future__ import annotations

import argparse
import shlex

import pytest

from audit.cli import build_parser

PARSER, _ = build_parser()
(SUB,) = [a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)]


def _options(name: str) -> list[argparse.Action]:
    return [a for a in SUB.choices[name]._actions if not isinstance(a, argparse._HelpAction)]


@pytest.mark.parametrize("command", sorted(SUB.choices))
def test_every_option_has_help(command):
    missing = [a.option_strings[0] if a.option_strings else a.dest for a in _options(command) if not a.help]
    assert not missing, f"rai-audit {command}: options without help: {missing}"


@pytest.mark.parametrize("command", sorted(SUB.choices))
def test_every_default_is_shown(command):
    text = SUB.choices[command].format_help()
    for action in _options(command):
        default = action.default
        if not action.option_strings or default is None or default is False or (isinstance(default, (list, tuple)) and not default):
            continue
        line = " ".join(text.split())
        assert f"(default: {default})" in line or "default" in (action.help or "").lower(), \
            f"rai-audit {command} {action.option_strings[0]}: default {default!r} not shown"


@pytest.mark.parametrize("command", sorted(SUB.choices))
def test_help_ends_with_examples_that_parse(command):
    text = SUB.choices[command].format_help().rstrip()
    assert "examples:" in text, f"rai-audit {command} --help has no examples"
    examples = [line.strip() for line in text.split("examples:")[-1].splitlines() if line.strip()]
    assert examples
    for example in examples:
        argv = shlex.split(example)
        assert argv[:2] == ["rai-audit", command], example
        args = PARSER.parse_args(argv[1:])
        assert args.command == command


def test_terminal_numbers_are_rounded():
    from probes.debias.cli import rounded

    assert rounded({"gap": 0.03999999999999998, "per_layer": [1.23456789, 2], "name": "inlp"}) == \
        {"gap": 0.04, "per_layer": [1.235, 2], "name": "inlp"}


def test_decision_layer_is_not_printed_as_a_float(tmp_path):
    import re

    from audit import AuditConfig, Auditor, load_target
    from tests.tiny import make_tiny_model

    model = make_tiny_model("sequence-classification", tmp_path / "clf")
    config = AuditConfig(select=["decision_path"], probes={"decision_path": {"params": {"min_margin": 1e-6}}})
    result = Auditor(config).run(load_target(model, progress=False)).result("decision_path")
    assert "is decided" in result.summary, result.summary  # a tiny margin: every example decides somewhere
    assert re.search(r"at layer \d+(\.\d)? of 2 on average", result.summary) and ".0 of" not in result.summary


def test_an_option_name_means_one_thing_in_every_command():
    """A name is a switch everywhere or takes a value everywhere; --baseline is a results file, --json a switch."""
    from audit.cli import DeprecatedForm

    kinds: dict[str, dict[bool, list[str]]] = {}
    for command, parser in SUB.choices.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, DeprecatedForm)):
                continue
            for option in action.option_strings:
                kinds.setdefault(option, {}).setdefault(action.nargs == 0, []).append(command)
    mixed = {option: found for option, found in kinds.items() if len(found) > 1}
    assert not mixed, f"options that are a switch in some commands and take a value in others: {mixed}"
    assert kinds["--baseline"] == {False: ["run"]} and set(kinds["--json"]) == {True}


@pytest.mark.parametrize(("argv", "dest", "value", "new"), [
    (["train-dp", "--model", "m", "--data", "d", "--out", "o", "--baseline"], "baseline", True, "--non-private-baseline"),
    (["federate", "--model", "m", "--data", "d", "--out", "o", "--baseline"], "baseline", True, "--centralized-baseline"),
    (["scan-pii", "d.csv", "--columns", "text", "--json", "s.json"], "json_file", "s.json", "--json-file FILE"),
])
def test_old_meanings_still_work_with_a_deprecation_line(capsys, argv, dest, value, new):
    args = PARSER.parse_args(argv)
    assert str(getattr(args, dest)) == str(value)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deprecated" in err and f"use {new} instead" in err, err


@pytest.mark.parametrize(("argv", "dest", "value"), [
    (["train-dp", "--model", "m", "--data", "d", "--out", "o", "--non-private-baseline"], "baseline", True),
    (["train-dp", "--model", "m", "--data", "d", "--out", "o"], "baseline", False),
    (["federate", "--model", "m", "--data", "d", "--out", "o", "--centralized-baseline"], "baseline", True),
    (["scan-pii", "d.csv", "--columns", "text", "--json"], "json", True),
    (["scan-pii", "d.csv", "--columns", "text"], "json", False),
    (["scan-pii", "d.csv", "--columns", "text", "--json-file", "s.json"], "json_file", "s.json"),
])
def test_new_spellings_parse_silently(capsys, argv, dest, value):
    assert str(getattr(PARSER.parse_args(argv), dest)) == str(value)
    assert capsys.readouterr().err == ""


def test_help_loads_neither_torch_nor_scikit_learn():
    """Every CLI start built --version from audit.runner and registered commands whose modules
    imported torch and scikit-learn: `rai-audit --help` took 3.7 s; it needs neither."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom audit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'fairlearn', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip().splitlines()[-1] == "[]"
