"""A pytest plugin: an audit step as a test file in the user's own suite.

Off unless enabled (``--rai-audit`` on the command line or ``rai_audit = true`` in the ini file),
so it never slows down or changes a test suite that merely has rai-audit installed: when off it
only adds its command-line options, and imports nothing heavy.

Examples
--------
``pytest.ini``::

    [pytest]
    rai_audit = true
    rai_audit_model = ./my-model
    rai_audit_config = audit.yaml

``test_release.py``::

    def test_no_counterfactual_gap(rai_audit):
        rai_audit.assert_probe_passes("counterfactual", max_gap=0.05)
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["AuditSession"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rai-audit", "rai-audit model audits")
    group.addoption("--rai-audit", action="store_true", default=None, help="enable the rai_audit fixture")
    group.addoption("--rai-audit-model", default=None, help="model directory or Hub id to audit")
    group.addoption("--rai-audit-config", default=None, help="rai-audit YAML config for the audit")
    parser.addini("rai_audit", type="bool", default=False, help="enable the rai_audit fixture")
    parser.addini("rai_audit_model", default="", help="model directory or Hub id to audit")
    parser.addini("rai_audit_config", default="", help="rai-audit YAML config for the audit")


def pytest_configure(config: pytest.Config) -> None:
    enabled = config.getoption("--rai-audit") or config.getini("rai_audit")
    if enabled:
        config.pluginmanager.register(_Fixtures(), "rai-audit-fixtures")


class AuditSession:
    """One audit per test session, run on first use, with assertion helpers."""

    def __init__(self, model: str | None, config_path: str | None, rootdir: Any) -> None:
        self.model = model
        self.config_path = config_path
        self.rootdir = rootdir
        self._results: Any = None

    @property
    def results(self) -> Any:
        """The :class:`~audit.results.AuditResults`, computed once."""
        if self._results is None:
            from pathlib import Path

            from audit.config import AuditConfig, load_config
            from audit.runner import Auditor
            from audit.target import load_target

            config = AuditConfig()
            if self.config_path:
                path = Path(self.config_path)
                config = load_config(path if path.is_absolute() else Path(self.rootdir) / path)
            model = self.model or config.model
            if model and not Path(model).is_absolute() and (Path(self.rootdir) / model).exists():
                model = str(Path(self.rootdir) / model)
            target = load_target(model, kind=config.kind, revision=config.revision, device=config.device,
                                 progress=False, trust_remote_code=config.trust_remote_code,
                                 allow_pickle=config.allow_pickle, allow_new_weights=config.allow_new_weights,
                                 seed=config.seed, batch_size=config.batch_size, max_length=config.max_length)
            self._results = Auditor(config).run(target)
        return self._results

    def result(self, probe: str) -> Any:
        try:
            return self.results.result(probe)
        except KeyError:
            raise AssertionError(f"probe {probe!r} did not run; ran: {[r.probe for r in self.results.results]}") from None

    def assert_probe_passes(self, probe: str, **limits: float) -> None:
        """Assert that ``probe`` neither failed nor errored and that its metrics meet ``limits``.

        A limit names a metric as an upper bound (``max_abs_effect_size=0.8``); when no metric has
        that exact name, a ``max_`` or ``min_`` prefix gives the bound (``max_gap=0.05`` means
        metric ``gap`` <= 0.05, ``min_auc=0.9`` metric ``auc`` >= 0.9).
        """
        result = self.result(probe)
        problems = []
        if result.status in ("failed", "errored"):
            problems.append(f"status {result.status}: {result.summary}")
        for key, limit in limits.items():
            name, upper = key, True
            if name not in result.metrics and key.startswith(("max_", "min_")):
                name, upper = key[4:], key.startswith("max_")
            metric = result.metrics.get(name)
            if metric is None or metric.value is None:
                problems.append(f"metric {name!r} not available (have {sorted(result.metrics)})")
            elif (metric.value > limit) if upper else (metric.value < limit):
                ci = f" [{metric.ci[0]:.4g}, {metric.ci[1]:.4g}]" if metric.ci else ""
                problems.append(f"{name} = {metric.value:.4g}{ci} {'>' if upper else '<'} {limit:g}")
        if problems:
            raise AssertionError(f"rai-audit probe {probe!r}: " + "; ".join(problems))


class _Fixtures:
    @pytest.fixture(scope="session")
    def rai_audit(self, request: pytest.FixtureRequest) -> AuditSession:
        """The session's audit: ``rai_audit.results`` and ``rai_audit.assert_probe_passes(...)``."""
        config = request.config
        model = config.getoption("--rai-audit-model") or config.getini("rai_audit_model") or None
        config_path = config.getoption("--rai-audit-config") or config.getini("rai_audit_config") or None
        return AuditSession(model, config_path, config.rootpath)
