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
