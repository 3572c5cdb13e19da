"""rai-audit core: load a Hugging Face model, run probes, collect traceable results.

Examples
--------
>>> from audit import Auditor, AuditConfig, load_target
>>> target = load_target(progress=False)          # bundled all-MiniLM-L6-v2
>>> config = AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat6"]}}})
>>> results = Auditor(config).run(target)
>>> results.manifest.fingerprint.startswith("sha256:")
True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported on first use, so `import audit` (e.g. by the pytest plugin) does not load torch.
_EXPORTS = {
    "AuditConfig": "audit.config", "load_config": "audit.config",
    "AuditContext": "audit.context",
    "AuditDataset": "audit.data", "load_dataset": "audit.data",
    "AuditError": "audit.errors", "ConfigError": "audit.errors", "DataError": "audit.errors",
    "ModelLoadError": "audit.errors", "NotApplicableError": "audit.errors", "NotFittedError": "audit.errors",
    "OutputError": "audit.errors", "PluginLoadError": "audit.errors",
    "ErrorInfo": "audit.probe", "Figure": "audit.probe", "Metric": "audit.probe", "Probe": "audit.probe",
    "ProbeResult": "audit.probe", "Table": "audit.probe",
    "discover_probes": "audit.registry",
    "SCHEMA_VERSION": "audit.results", "AuditResults": "audit.results", "json_schema": "audit.results",
    "Auditor": "audit.runner",
    "AuditTarget": "audit.target", "load_target": "audit.target",
}

if TYPE_CHECKING:
    from audit.config import AuditConfig, load_config
    from audit.context import AuditContext
    from audit.data import AuditDataset, load_dataset
    from audit.errors import (
        AuditError,
        ConfigError,
        DataError,
        ModelLoadError,
        NotApplicableError,
        NotFittedError,
        OutputError,
        PluginLoadError,
    )
    from audit.probe import ErrorInfo, Figure, Metric, Probe, ProbeResult, Table
    from audit.registry import discover_probes
    from audit.results import SCHEMA_VERSION, AuditResults, json_schema
    from audit.runner import Auditor
    from audit.target import AuditTarget, load_target


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'audit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "SCHEMA_VERSION",
    "AuditConfig",
    "AuditContext",
    "AuditDataset",
    "AuditError",
    "AuditResults",
    "AuditTarget",
    "Auditor",
    "ConfigError",
    "DataError",
    "ErrorInfo",
    "Figure",
    "Metric",
    "ModelLoadError",
    "NotApplicableError",
    "NotFittedError",
    "OutputError",
    "PluginLoadError",
    "Probe",
    "ProbeResult",
    "Table",
    "discover_probes",
    "json_schema",
    "load_config",
    "load_dataset",
    "load_target",
]
