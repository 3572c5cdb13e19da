"""A pytest plugin: an audit step as a test file in the user's own suite.

Off unless enabled (``--rai-audit`` on the command line or ``rai_audit = true`` in the ini file),
so it never slows down or changes a test suite that merely has rai-audit installed: when off it
only adds its command-line options and imports nothing of the tool. It lives in ``rai_audit``, a
name of its own, so a project with its own ``audit`` or ``reports`` package still starts; when that
project's ``audit`` shadows rai-audit's core, the audit runs in a separate Python process that
does not see the project's directory, and its ``results.json`` is read back.

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

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rai_audit import foreign_audit

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


ISOLATED_RUN_FAILED = (
    "rai-audit: the audit (run apart from this project, whose 'audit' package shadows rai-audit's "
    "core: {origin}) exited {code}: {message}"
)

# Run the CLI with neither the working directory nor PYTHONPATH on sys.path (`-I`, and the
# explicit filter for Pythons whose -I still adds the cwd), so `audit` is rai-audit's own.
_ISOLATED_MAIN = (
    "import os, sys; sys.path[:] = [p for p in sys.path if p not in ('', os.getcwd())]; "
    "from audit.cli import main; sys.exit(main())"
)


class AuditSession:
    """One audit per test session, run on first use, with assertion helpers.

    Parameters
    ----------
    model : str or None
        Model directory or Hub id; ``None`` takes the config's model (or the bundled one).
    config_path : str or None
        The YAML audit config, relative to ``rootdir`` unless absolute.
    rootdir : path
        The pytest root directory; relative paths are resolved against it.
    workdir : path, optional
        Where an audit run apart from the project writes its ``results.json``.
    """

    def __init__(self, model: str | None, config_path: str | None, rootdir: Any, *, workdir: Any = None) -> None:
        self.model = model
        self.config_path = config_path
        self.rootdir = rootdir
        self.workdir = workdir
        self._results: Any = None

    @property
    def results(self) -> Any:
        """The :class:`~audit.results.AuditResults`, computed once.

        When the project's own ``audit`` package shadows rai-audit's core, the audit runs in a
        separate process and this is a read-only view of its ``results.json`` with the same
        attribute names (``results``, ``gates``, ``passed``, ``result(probe)``, ``metrics[...]``).
        """
        if self._results is None:
            origin = foreign_audit()
            self._results = self._run_apart(origin) if origin is not None else self._run_here()
        return self._results

    def _path(self, path: str | None) -> str | None:
        # Relative paths are the project's, whatever directory pytest was started from.
        if path and not Path(path).is_absolute() and (Path(self.rootdir) / path).exists():
            return str(Path(self.rootdir) / path)
        return path

    def _run_here(self) -> Any:
        from audit.config import AuditConfig, load_config
        from audit.runner import Auditor
        from audit.target import load_target

        config_path = self._path(self.config_path)
        config = load_config(Path(config_path)) if config_path else AuditConfig()
        model = self._path(self.model or config.model)
        target = load_target(model, kind=config.kind, revision=config.revision, device=config.device,
                             progress=False, trust_remote_code=config.trust_remote_code,
                             allow_pickle=config.allow_pickle, allow_new_weights=config.allow_new_weights,
                             seed=config.seed, batch_size=config.batch_size, max_length=config.max_length)
        return Auditor(config).run(target)

    def _run_apart(self, origin: str) -> Any:
        model, config_path = self._path(self.model), self._path(self.config_path)
        out = Path(self.workdir) if self.workdir is not None else Path(tempfile.mkdtemp(prefix="rai-audit-"))
        command = [sys.executable, "-I", "-c", _ISOLATED_MAIN, "run", "--out", str(out), "--no-progress", "--quiet"]
        if model:
            command += ["--model", model]
        if config_path:
            command += ["--config", str(config_path)]
        proc = subprocess.run(command, cwd=self.rootdir, env=dict(os.environ), capture_output=True, text=True)
        results = out / "results.json"
        # Exit 1 is a failed gate or probe, which the assertions report; anything else is no audit.
        if proc.returncode not in (0, 1) or not results.is_file():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            raise RuntimeError(ISOLATED_RUN_FAILED.format(origin=origin, code=proc.returncode,
                                                          message=lines[-1] if lines else "(no output)"))
        return _ResultsView(json.loads(results.read_text(encoding="utf-8")))

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
    @classmethod
    def rai_audit(cls, request: pytest.FixtureRequest) -> AuditSession:
        """The session's audit: ``rai_audit.results`` and ``rai_audit.assert_probe_passes(...)``."""
        config = request.config
        model = config.getoption("--rai-audit-model") or config.getini("rai_audit_model") or None
        config_path = config.getoption("--rai-audit-config") or config.getini("rai_audit_config") or None
        workdir = request.getfixturevalue("tmp_path_factory").mktemp("rai-audit")
        return AuditSession(model, config_path, config.rootpath, workdir=workdir)


def _view(value: Any) -> Any:
    if isinstance(value, dict):
        return SimpleNamespace(**{k: _view(v) if k != "metrics" else {n: _view(m) for n, m in v.items()}
                                  for k, v in value.items()})
    if isinstance(value, list):
        return [_view(v) for v in value]
    return value


class _ResultsView:
    """``results.json`` with the attribute names of :class:`~audit.results.AuditResults`."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.schema_version = data.get("schema_version")
        self.manifest = _view(data.get("manifest", {}))
        self.results = _view(data.get("results", []))
        self.gates = _view(data.get("gates", []))

    @property
    def failed_gates(self) -> list[Any]:
        return [g for g in self.gates if not g.passed]

    @property
    def passed(self) -> bool:
        return not any(r.status in ("failed", "errored") for r in self.results) and not self.failed_gates

    def result(self, probe: str) -> Any:
        for r in self.results:
            if r.probe == probe:
                return r
        raise KeyError(probe)
