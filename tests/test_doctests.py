"""The examples in the public docstrings run (and so stay true)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["audit", "audit.config", "audit.context", "audit.data", "audit.errors", "audit.figures", "audit.masking", "audit.probe",
           "audit._io", "audit._validate", "audit.provenance", "audit.records", "audit.registry", "audit.results", "audit.runner", "audit.stats", "audit.target",
           "reports.markdown_card", "reports.model_card", "privacy.dp", "privacy.pii", "privacy.redact",
           "privacy.leakage", "privacy.federated.partition", "privacy.federated.task",
           "probes.debias.experiment"]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {name}"


def test_every_public_name_has_a_runnable_example():
    import inspect

    import audit

    missing = [n for n in audit.__all__ if (inspect.isclass(getattr(audit, n)) or inspect.isfunction(getattr(audit, n)))
               and ">>>" not in (getattr(audit, n).__doc__ or "")]
    assert not missing, f"public names without a docstring example: {missing}"
