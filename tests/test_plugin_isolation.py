"""The pytest plugin and ``import rai_audit`` in a project whose own packages are named ``audit`` and ``reports``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.tiny import make_tiny_model

SEAT = "probes:\n  seat:\n    params: {tests: [weat6], n_samples: 500, n_boot: 100}\n"


def _env() -> dict[str, str]:
    # The project is found from its own directory, as `python -m pytest` finds it, not through PYTHONPATH.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}


def _project(root: Path, *, ini: str) -> Path:
    for package in ("audit", "reports"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text(f"OWNER = 'the project ({package})'\n")
    (root / "pytest.ini").write_text("[pytest]\n" + ini)
    (root / "test_own.py").write_text(textwrap.dedent("""
        import audit
        import reports


        def test_own_packages_are_the_projects():
            assert audit.OWNER == "the project (audit)" and reports.OWNER == "the project (reports)"
    """))
    return root


def _pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=600)


def test_project_with_colliding_packages_runs_its_suite(tmp_path):
    root = _project(tmp_path / "project", ini="")
    (root / "test_plugin_off.py").write_text(textwrap.dedent("""
        import sys

        import pytest


        def test_plugin_loaded_nothing_of_the_tool(request):
            assert "torch" not in sys.modules and "audit.target" not in sys.modules
            with pytest.raises(pytest.FixtureLookupError):
                request.getfixturevalue("rai_audit")
            assert request.config.pluginmanager.has_plugin("rai_audit")
    """))
    proc = _pytest(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_plugin_enabled_in_project_with_colliding_packages(tmp_path):
    model = make_tiny_model("encoder", tmp_path / "my-model")
    root = _project(tmp_path / "project", ini="rai_audit = true\nrai_audit_model = ../my-model\nrai_audit_config = audit.yaml\n")
    (root / "audit.yaml").write_text(SEAT)
    assert model.is_dir()
    (root / "test_release.py").write_text(textwrap.dedent("""
        import audit


        def test_seat_is_small(rai_audit):
            rai_audit.assert_probe_passes("seat", max_abs_effect_size=5.0)
            assert rai_audit.results.manifest.fingerprint.startswith("sha256:")
            assert audit.OWNER == "the project (audit)"


        def test_seat_is_impossibly_small(rai_audit):
            rai_audit.assert_probe_passes("seat", max_abs_effect_size=-1.0)
    """))
    proc = _pytest(root)
    assert "1 failed, 2 passed" in proc.stdout and "Warning" not in proc.stdout, proc.stdout + proc.stderr
    assert "rai-audit probe 'seat': max_abs_effect_size = " in proc.stdout and "> -1" in proc.stdout


def test_rai_audit_is_the_public_import_path():
    code = ("import sys, rai_audit; assert 'audit' not in sys.modules and 'torch' not in sys.modules; "
            "import audit; from rai_audit import Auditor, load_target, __all__ as names; "
            "assert Auditor is audit.Auditor and load_target is audit.load_target and names == audit.__all__")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_rai_audit_names_say_when_audit_is_shadowed(tmp_path):
    root = _project(tmp_path / "project", ini="")
    code = ("import rai_audit\ntry:\n    rai_audit.Auditor\nexcept ImportError as exc:\n    print(exc)\n"
            "else:\n    raise SystemExit('no error')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    from rai_audit import SHADOWED_AUDIT

    expected = SHADOWED_AUDIT.format(origin=root / "audit" / "__init__.py", ours=Path(__file__).resolve().parents[1] / "audit")
    assert proc.stdout.strip() == expected


def test_plugin_entry_point_is_outside_the_core():
    from importlib.metadata import entry_points

    (plugin,) = [ep for ep in entry_points(group="pytest11") if ep.name == "rai_audit"]
    assert plugin.value == "rai_audit.pytest_plugin"
