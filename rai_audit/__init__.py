"""rai-audit's public import path: ``import rai_audit`` (or ``from rai_audit import Auditor``).

The names are those of :mod:`audit`, imported on first use, so ``import rai_audit`` (and the
pytest plugin in :mod:`rai_audit.pytest_plugin`) loads nothing of the tool. The core lives in the
top-level package ``audit``; when a project of its own has an ``audit`` package that shadows it,
using a name here says so instead of returning the project's module.

Examples
--------
>>> import rai_audit
>>> rai_audit.AuditConfig is __import__("audit").AuditConfig
True
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

# rai-audit's own top-level packages sit beside this one, in the same directory.
_TOOL_ROOT = Path(__file__).resolve().parent.parent

SHADOWED_AUDIT = (
    "rai_audit: the name 'audit' resolves to {origin}, not rai-audit's core package in {ours}. "
    "Rename that package, or run from a directory that does not put it on sys.path "
    "(the pytest plugin and the `rai-audit` command run the audit apart from it)."
)


def foreign_audit() -> str | None:
    """Where ``audit`` resolves when it is not rai-audit's core package; ``None`` when it is.

    Looks at ``sys.modules`` first, then at what ``import audit`` would find, without importing it.
    """
    module = sys.modules.get("audit")
    if module is not None:
        origin = getattr(module, "__file__", None)
    else:
        try:
            spec = importlib.util.find_spec("audit")
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
    if origin is not None and Path(origin).resolve().parent == _TOOL_ROOT / "audit":
        return None
    return str(origin) if origin else "(not found)"


def _core() -> Any:
    origin = foreign_audit()
    if origin is not None:
        raise ImportError(SHADOWED_AUDIT.format(origin=origin, ours=_TOOL_ROOT / "audit"))
    return importlib.import_module("audit")


def __getattr__(name: str) -> Any:
    if name.startswith("__") and name != "__all__":
        raise AttributeError(name)
    core = _core()
    if name == "__all__":
        return list(core.__all__)
    if name not in core.__all__:
        raise AttributeError(f"module 'rai_audit' has no attribute {name!r}")
    value = getattr(core, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(_core().__all__)
