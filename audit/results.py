"""The versioned results schema: a manifest that makes every number traceable, then the results."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit._io import write_json_atomic
from audit.errors import DataError
from audit.probe import ProbeResult

__all__ = [
    "SCHEMA_VERSION",
    "AuditResults",
    "DataManifest",
    "GateNotChecked",
    "GateOutcome",
    "Manifest",
    "json_schema",
    "library_versions",
]

#: Major.minor. A reader accepts any file with the same major version.
SCHEMA_VERSION = "1.3"  # 1.1: manifest provenance fields, Metric.ideal and "closer_to_ideal"; 1.2: gates_not_checked, probes_not_run; 1.3: manifest.loading (adapters, device map, chat template), records.dp.empirical_epsilon_lower_bound
TRACKED_LIBRARIES = (
    "rai-audit", "torch", "transformers", "tokenizers", "safetensors", "huggingface-hub",
    "numpy", "scipy", "pandas", "scikit-learn", "fairlearn", "opacus", "flwr", "captum",
    "presidio-analyzer", "presidio-anonymizer", "spacy", "evaluate", "matplotlib", "pydantic",
)
_FROZEN = ConfigDict(frozen=True, extra="forbid")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an audit's numbers depend on."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class DataManifest(BaseModel):
    model_config = _FROZEN

    path: str
    fingerprint: str
    rows: int
    text_column: str
    label_column: str | None = None
    sensitive_features: list[str] = Field(default_factory=list)


class Manifest(BaseModel):
    """Where every number came from: model, data, versions, seed, timings."""

    model_config = _FROZEN

    rai_audit_version: str
    model_id: str
    model_path: str
    revision: str | None = None
    #: sha256 over everything that changes the model's behaviour (see ``fingerprint_parts``).
    fingerprint: str
    #: The digests the fingerprint combines: weights (tensor contents), config, tokenizer, artefacts, record.
    fingerprint_parts: dict[str, str] = Field(default_factory=dict)
    #: sha256 of every file of the model directory that went into the fingerprint, by name.
    files: dict[str, str] = Field(default_factory=dict)
    #: dtypes of the audited model's parameters.
    dtypes: list[str] = Field(default_factory=list)
    #: Tensors the checkpoint lacked, newly initialised from the seed: results describe an untrained head.
    new_weights: list[str] = Field(default_factory=list)
    kind: str
    n_parameters: int
    device: str
    max_length: int
    seed: int
    started_at: str
    finished_at: str
    duration_s: float
    library_versions: dict[str, str]
    platform: str = Field(default_factory=lambda: f"{platform.system()} {platform.machine()}")
    command: list[str] = Field(default_factory=lambda: list(sys.argv))
    data: DataManifest | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    #: The training records found beside the model, one section per step (``dp``, ``federated``, ...).
    #: ``dp.empirical_epsilon_lower_bound``: the one-run audit's 95% lower bound on epsilon, when one ran.
    records: dict[str, Any] = Field(default_factory=dict, json_schema_extra={"properties": {"dp": {
        "type": "object",
        "properties": {"empirical_epsilon_lower_bound": {
            "type": "number", "minimum": 0,
            "description": ("One-run audit (Steinke, Nasr and Jagielski 2023): epsilon refuted at 95% confidence by "
                            "guessing which random canaries were trained on; present only when an audit ran. Above "
                            "dp.epsilon means the training did not deliver its guarantee."),
        }},
    }}})
    notes: list[str] = Field(default_factory=list)
    truncated_texts: int = 0
    #: How the model was loaded: classifier ``head`` (single-label, multi-label, score), ``dtype``,
    #: ``device_map`` (modules per device), ``adapter`` (a PEFT adapter's path, type and fingerprint and
    #: its base model's id, path and fingerprint) and ``chat_template`` (whether generation used it).
    loading: dict[str, Any] = Field(default_factory=dict)


class GateOutcome(BaseModel):
    """One gate checked against one metric: an absolute threshold, or a regression against a baseline.

    For ``kind="threshold"``, ``bound`` is ``"max"`` or ``"min"`` and ``threshold`` the limit. For
    ``kind="regression"``, ``bound`` is ``"tolerance"``, ``threshold`` the tolerated worsening,
    ``baseline`` the baseline's value and ``change`` the worsening (positive = worse).
    """

    model_config = _FROZEN

    probe: str
    metric: str
    bound: str
    threshold: float
    value: float | None
    passed: bool
    message: str
    kind: Literal["threshold", "regression"] = "threshold"
    baseline: float | None = None
    change: float | None = None
    interval: tuple[float, float] | None = None


class GateNotChecked(BaseModel):
    """A configured gate this audit did not check, and why (a ``tolerance`` gate without a baseline)."""

    model_config = _FROZEN

    probe: str
    metric: str
    bound: str
    threshold: float
    reason: str


class AuditResults(BaseModel):
    """Everything one audit produced; what reports read.

    Examples
    --------
    >>> from audit.results import AuditResults, SCHEMA_VERSION
    >>> AuditResults.model_json_schema()["properties"]["schema_version"]["default"] == SCHEMA_VERSION
    True
    """

    model_config = _FROZEN

    schema_version: str = SCHEMA_VERSION
    manifest: Manifest
    results: list[ProbeResult]
    gates: list[GateOutcome] = Field(default_factory=list)
    card: dict[str, Any] = Field(default_factory=dict)
    gates_not_checked: list[GateNotChecked] = Field(default_factory=list)
    probes_not_run: dict[str, str] = Field(default_factory=dict)

    @property
    def failed_gates(self) -> list[GateOutcome]:
        """The gates that did not pass."""
        return [g for g in self.gates if not g.passed]

    @property
    def passed(self) -> bool:
        """True when every gate passed and no probe failed or errored.

        Examples
        --------
        >>> from audit import AuditConfig, Auditor, load_target
        >>> config = AuditConfig(select=["seat"], probes={"seat": {
        ...     "params": {"tests": ["weat7"]}, "gates": {"mean_abs_effect_size": {"max": 5.0}}}})
        >>> results = Auditor(config).run(load_target(progress=False))
        >>> results.passed, results.failed_gates
        (True, [])
        """
        bad = any(r.status in ("failed", "errored") for r in self.results)
        return not bad and not self.failed_gates

    def verdict(self) -> str:
        """The overall verdict in one line: ``passed``, or ``failed because ...``, and what was not checked.

        Examples
        --------
        >>> from audit import AuditConfig, Auditor, load_target
        >>> results = Auditor(AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat7"]}}})).run(
        ...     load_target(progress=False))
        >>> results.verdict()
        'passed (no release gates configured: only probe statuses were checked)'
        """
        reasons = [f"gate {g.probe}.{g.metric} ({g.bound} {g.threshold:g}) failed" for g in self.failed_gates]
        reasons += [f"probe {r.probe} {r.status}" for r in self.results
                    if r.status in ("failed", "errored") and not any(g.probe == r.probe for g in self.failed_gates)]
        shown = "; ".join(reasons[:_MAX_REASONS]) + (f"; and {len(reasons) - _MAX_REASONS} more" if len(reasons) > _MAX_REASONS else "")
        line = f"failed because {shown}" if reasons else "passed"
        n = len(self.gates_not_checked)
        if n and self.gates:
            line += f" ({n} gate(s) not checked: {self.gates_not_checked[0].reason})"
        elif n:
            line += f" (no release gate was checked: {n} gate(s) not checked: {self.gates_not_checked[0].reason})"
        elif not self.gates:
            line += " (no release gates configured: only probe statuses were checked)"
        return line

    @property
    def exit_code(self) -> int:
        """0 when every gate passed and no probe failed or errored, 1 otherwise."""
        return 0 if self.passed else 1

    def to_json(self, *, indent: int | None = 2) -> str:
        """The results as a JSON string (what ``results.json`` holds)."""
        return json.dumps(self.model_dump(mode="json"), indent=indent, ensure_ascii=False, allow_nan=False)

    def to_html(self) -> str:
        """The self-contained HTML model card, rendered by the installed ``html`` report plugin."""
        return report_plugin("html")(self)

    def to_markdown(self) -> str:
        """The Hugging Face Hub ``README.md`` card, rendered by the installed ``markdown`` report plugin."""
        return report_plugin("markdown")(self)

    def result(self, probe: str) -> ProbeResult:
        for r in self.results:
            if r.probe == probe:
                return r
        raise KeyError(probe)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the results as JSON, atomically."""
        return write_json_atomic(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuditResults:
        """Read a results file, refusing another major schema version with a clear message."""
        source = Path(path)
        if not source.is_file():
            raise DataError(f"Results file {str(source)!r} does not exist. Give the results.json an audit wrote.")
        try:
            raw = json.loads(source.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"Results file {str(source)!r} is not valid JSON ({exc}).") from None
        version = str(raw.get("schema_version", "")) if isinstance(raw, dict) else ""
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise DataError(
                f"Results file {str(source)!r} has schema version {version or '(none)'!r}; this "
                f"rai-audit reads {SCHEMA_VERSION.split('.')[0]}.x. Re-run the audit with this version."
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise DataError(
                f"Results file {str(source)!r} does not follow the schema at {loc!r}: {first['msg']}."
            ) from None


REPORT_GROUP = "rai_audit.reports"
_MAX_REASONS = 5


def report_plugin(name: str) -> Any:
    """The report plugin ``name`` of the ``rai_audit.reports`` entry-point group, loaded.

    ``html`` and ``markdown`` render a card from results; ``write`` writes the whole set
    (``results.json`` and the cards) into a directory. The core knows no report module by name:
    reports are found like probes, through an entry point.
    """
    for ep in importlib.metadata.entry_points(group=REPORT_GROUP):
        if ep.name == name:
            return ep.load()
    raise DataError(
        f"No report plugin {name!r} is installed (entry-point group {REPORT_GROUP!r}). "
        "Reinstall rai-audit: pip install rai-audit."
    )


def json_schema() -> dict[str, Any]:
    """The JSON Schema of ``results.json`` (``rai-audit schema`` prints it).

    Examples
    --------
    >>> from audit import json_schema
    >>> from audit.results import SCHEMA_VERSION
    >>> json_schema()["title"] == f"rai-audit results {SCHEMA_VERSION}"
    True
    """
    schema = AuditResults.model_json_schema()
    schema["$id"] = f"urn:rai-audit:results:{SCHEMA_VERSION}"
    schema["title"] = f"rai-audit results {SCHEMA_VERSION}"
    return schema
