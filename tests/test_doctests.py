"""The examples in the public docstrings run (and so stay true)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "probes", "privacy", "reports", "rai_audit")


def _modules_with_examples() -> list[str]:
    """Every module of the packages whose source holds a docstring example (none can be left off a list)."""
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>> " in path.read_text(encoding="utf-8"):
                parts = path.relative_to(ROOT).with_suffix("").parts
                out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


MODULES = _modules_with_examples()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"


def test_the_examples_found_include_the_core_modules():
    assert {"audit.stats", "audit.records", "privacy.mia", "privacy.dp_audit", "reports.reliability"} <= set(MODULES)


def test_every_public_name_has_a_runnable_example():
    import inspect

    import audit

    missing = [n for n in audit.__all__ if (inspect.isclass(getattr(audit, n)) or inspect.isfunction(getattr(audit, n)))
               and ">>>" not in (getattr(audit, n).__doc__ or "")]
    assert not missing, f"public names without a docstring example: {missing}"
