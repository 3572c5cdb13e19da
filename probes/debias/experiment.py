"""An experiment file: one baseline model, several debiasing techniques, every audit and the comparison.

Researchers comparing techniques run the same probes before and after each one; this makes that
one command (``rai-audit experiment experiment.yaml``) whose outputs are a debiased model, an
audit (``results.json``, model card) per model and a comparison card against the baseline.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from audit.config import AuditConfig, load_config, validate_config
from audit.errors import ConfigError, OutputError

__all__ = ["ExperimentCommand", "ExperimentConfig", "TechniqueSpec", "load_experiment", "run_experiment"]

_STRICT = ConfigDict(extra="forbid")


class TechniqueSpec(BaseModel):
    """One debiasing step applied to the baseline model."""

    model_config = _STRICT

    #: Becomes a directory name under ``out``: a letter or digit first, so never ``.`` or ``..``.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    technique: Literal["cda", "sentence-debias", "inlp", "threshold"]
    data: Path | None = None
    text_column: str = "text"
    label_column: str | None = None
    sensitive_feature: str | None = None
    word_lists: list[str] | None = None
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(BaseModel):
    """``baseline`` model, ``techniques`` to apply to it, the ``audit`` every model gets, ``out`` directory.

    Examples
    --------
    >>> from probes.debias.experiment import ExperimentConfig
    >>> cfg = ExperimentConfig.model_validate({"baseline": "clf", "out": "exp",
    ...     "techniques": [{"name": "thr", "technique": "threshold", "data": "train.csv",
    ...                     "label_column": "label", "sensitive_feature": "gender"}]})
    >>> [t.technique for t in cfg.techniques]
    ['threshold']
    """

    model_config = _STRICT

    baseline: Path
    out: Path = Path("experiment")
    audit: Path | dict[str, Any] = Field(default_factory=dict)
    techniques: list[TechniqueSpec] = Field(min_length=1)
    overwrite: bool = False


def load_experiment(path: str | os.PathLike[str]) -> tuple[ExperimentConfig, AuditConfig]:
    """Read an experiment file; relative paths in it are read relative to the file."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"Experiment file {str(source)!r} does not exist. Check the path.")
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"Experiment file {str(source)!r} is not valid YAML ({str(exc).splitlines()[0]}). Fix the syntax.") from None
    try:
        experiment = ExperimentConfig.model_validate(raw or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        received = first.get("input")
        shown = "a mapping" if isinstance(received, dict) else repr(received)[:80]
        raise ConfigError(f"Experiment file {str(source)!r}: key {loc!r}: {first['msg']} (received {shown}). "
                          "See the README's experiment example.") from None
    base = source.parent

    def resolve(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else base / p

    experiment = experiment.model_copy(update={
        "baseline": resolve(experiment.baseline),
        "out": resolve(experiment.out),
        "techniques": [t.model_copy(update={"data": resolve(t.data)}) for t in experiment.techniques],
    })
    if isinstance(experiment.audit, Path):
        audit = load_config(resolve(experiment.audit))
    else:
        audit = validate_config(experiment.audit, source=f"Experiment file {str(source)!r}, key 'audit'")
        if audit.data is not None and not audit.data.path.is_absolute():
            audit = audit.model_copy(update={"data": audit.data.model_copy(update={"path": base / audit.data.path})})
    names = [t.name for t in experiment.techniques]
    if len(set(names)) != len(names) or "baseline" in names:
        raise ConfigError(f"Experiment file {str(source)!r}: technique names must be unique and not 'baseline', got {names}.")
    return experiment, audit


def run_experiment(experiment: ExperimentConfig, audit: AuditConfig, *, log: Any = print) -> tuple[dict[str, Any], list[Any]]:
    """Debias, audit every model, compare. Returns the comparison (as written to ``comparison.json``)
    and the audits (baseline first)."""
    from audit.data import load_dataset
    from audit.results import AuditResults
    from audit.runner import Auditor
    from audit.target import load_target
    from probes.debias.cli import debias
    from reports.compare import compare_results, write_comparison
    from reports.model_card import write_reports

    out = experiment.out
    if out.exists() and any(out.iterdir()) and not experiment.overwrite:
        raise OutputError(f"Experiment output {str(out)!r} is not empty. Choose another 'out' or set overwrite: true.")
    if not experiment.baseline.is_dir():
        raise ConfigError(f"baseline {str(experiment.baseline)!r} is not a model directory. Give a directory written by save_pretrained.")
    auditor = Auditor(audit)
    auditor.plan()  # unknown probes and bad parameters fail before any training
    eval_data = auditor.load_data()
    models = {"baseline": experiment.baseline}
    for spec in experiment.techniques:
        data = None
        if spec.data is not None:
            data = load_dataset(spec.data, text_column=spec.text_column, label_column=spec.label_column,
                                sensitive_features=[spec.sensitive_feature] if spec.sensitive_feature else [])
        log(f"[{spec.name}] {spec.technique} on {experiment.baseline}")
        destination = out / "models" / spec.name
        debias(spec.technique, experiment.baseline, destination, data=data, word_lists=spec.word_lists,
               seed=spec.seed, overwrite=experiment.overwrite, **spec.params)
        models[spec.name] = destination
    audits: list[AuditResults] = []
    for name, path in models.items():
        log(f"[{name}] auditing {path}")
        results = auditor.run(load_target(path, kind=audit.kind, device=audit.device, progress=False,
                                          allow_new_weights=audit.allow_new_weights, seed=audit.seed,
                                          batch_size=audit.batch_size, max_length=audit.max_length), data=eval_data)
        write_reports(results, out / "audits" / name)
        audits.append(results)
    comparison = compare_results(audits, names=list(models))
    paths = write_comparison(comparison, out / "comparison")
    log(f"Comparison: {paths['html']}")
    return comparison, audits


class ExperimentCommand:
    """``rai-audit experiment FILE``: a baseline, several techniques, all audits and the comparison."""

    name = "experiment"
    help = "debias a baseline with several techniques, audit every model and compare them, from one YAML file"
    examples = (
        "rai-audit experiment experiment.yaml",
    )

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", type=Path, help="experiment YAML (baseline, techniques, audit, out)")

    def run(self, args: argparse.Namespace) -> int:
        experiment, audit = load_experiment(args.file)
        _comparison, audits = run_experiment(experiment, audit)
        return 1 if any(r.status == "errored" for a in audits for r in a.results) else 0
