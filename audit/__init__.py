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
