"""The :class:`Auditor`: plan the probes, run each in isolation, apply gates, cache results."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import hmac
import inspect
import json
import os
import re
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from audit._io import write_json_atomic
from audit._version import version as _version
from audit.baseline import check_compatible, regression_gates
from audit.config import AuditConfig, GateSpec
from audit.context import AuditContext
from audit.data import AuditDataset, load_dataset
from audit.errors import AuditError, ConfigError, NotApplicableError
from audit.probe import ErrorInfo, Metric, Probe, ProbeResult
from audit.registry import ProbeSpec, discover_probes
from audit.results import AuditResults, DataManifest, GateNotChecked, GateOutcome, Manifest, library_versions
from audit.target import AuditTarget

__all__ = ["Auditor", "build_probe", "plan_probes"]

#: Called after each probe with (position, total, result).
ResultCallback = Callable[[int, int, ProbeResult], None]


def build_probe(cls: type[Probe], params: Mapping[str, Any]) -> Probe:
    """Instantiate ``cls`` with ``params``, naming any unknown or invalid parameter."""
    signature = inspect.signature(cls.__init__)
    accepted = [p for p in signature.parameters if p != "self"]
    for key in params:
        if key not in accepted:
            raise ConfigError(
                f"Probe {cls.name!r} has no parameter {key!r} (probes.{cls.name}.params.{key}). "
                f"Its parameters: {accepted}."
            )
    try:
        return cls(**params)
    except AuditError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Probe {cls.name!r}: invalid parameters {dict(params)!r}: {exc}") from None


def plan_probes(
    config: AuditConfig,
    specs: Mapping[str, ProbeSpec],
) -> list[tuple[str, Probe | None, ProbeSpec]]:
    """The probes to run, in dependency order, each built from its config; errors name the key."""
    known = sorted(specs)
    disabled = set(config.disable)
    for name in [*(config.select or []), *config.probes, *disabled]:
        if name not in specs and name not in disabled:
            raise ConfigError(f"Unknown probe {name!r}. Available probes: {known}. Run 'rai-audit probes' to list them.")
    for name in config.select or []:
        if name in disabled:
            raise ConfigError(f"Probe {name!r} is both selected and disabled. Keep one of --probe/--disable.")
    names = [n for n in (config.select or known) if n not in disabled and n in specs]
    names = [n for n in names if config.probes.get(n) is None or config.probes[n].enabled or n in (config.select or [])]
    planned: dict[str, tuple[str, Probe | None, ProbeSpec]] = {}
    for name in names:
        spec = specs[name]
        probe = None
        if spec.cls is not None:
            probe = build_probe(spec.cls, config.probes[name].params if name in config.probes else {})
        planned[name] = (name, probe, spec)
    return _order(planned)


def probes_not_run(config: AuditConfig, specs: Mapping[str, ProbeSpec], planned: Sequence[str]) -> dict[str, str]:
    """Each registered probe left out of the plan, with the reason (``disabled``, ``not selected``, ...)."""
    out = {}
    for name in sorted({*specs, *config.disable} - set(planned)):
        if name in config.disable:
            out[name] = "disabled (--disable)"
        elif config.probes.get(name) is not None and not config.probes[name].enabled:
            out[name] = "enabled: false in the config"
        else:
            out[name] = "not selected (--probe / select)"
    return out


def _order(planned: dict[str, tuple[str, Probe | None, ProbeSpec]]) -> list[tuple[str, Probe | None, ProbeSpec]]:
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered or name not in planned:
            return
        if name in visiting:
            raise ConfigError(f"Probes {sorted(visiting)} declare a cycle through 'after'. Fix their 'after' lists.")
        visiting.add(name)
        probe = planned[name][1]
        for dep in getattr(probe, "after", ()) if probe is not None else ():
            visit(dep)
        visiting.discard(name)
        ordered.append(name)

    for name in planned:
        visit(name)
    return [planned[n] for n in ordered]


NOT_A_TARGET = ("Auditor.run() needs an AuditTarget, got {kind}. Load the model first: "
                "Auditor(config).run(load_target(path)).")
NO_BASELINE = "no --baseline given, so tolerance gates had nothing to compare with; pass --baseline RESULTS_JSON"
_KEY_FILE = "truncation.key"


def _take_truncated(target: AuditTarget) -> set[str]:
    take = getattr(target, "take_truncated", None)
    return take() if callable(take) else set()


def code_digest(module: str) -> str:
    """sha256 over the source of the audit core and of the package (or lone module) ``module`` comes from.

    Part of every cache key: a cached result is only reused by the same code, so editing a probe
    (or the target it runs on) without bumping its ``version`` cannot bring back results the old
    code computed. Files are read once per process.

    Examples
    --------
    >>> from audit.runner import code_digest
    >>> code_digest("audit.stats") == code_digest("audit.runner")  # both: the audit package
    True
    """
    import importlib.util

    spec = importlib.util.find_spec(module.split(".")[0])
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    roots = [Path(__file__).resolve().parent]
    if origin is not None:
        roots.append(origin.parent if spec.submodule_search_locations else origin)  # type: ignore[union-attr]
    return _digest_files(tuple(sorted({r.resolve() for r in roots})))


_PATH_PARAM = re.compile(r"(^path$|_path$|_file$|_dir$|_model$)")


def input_digests(probe: Probe) -> dict[str, str]:
    """What a probe's parameters point at, by content: part of every cache key.

    A parameter named ``path`` or ending in ``_path``, ``_file``, ``_dir`` or ``_model`` (at any
    depth: ``recognizers[0].deny_list_file``) whose value names an existing file or directory is
    digested (:func:`audit.provenance.file_digest`, :func:`~audit.provenance.directory_digest`),
    so a benchmark file, NER model or deny list replaced behind an unchanged path misses the
    cache. A probe with other inputs adds them with an ``input_digests()`` method.
    """
    from audit.provenance import directory_digest, file_digest

    out: dict[str, str] = {}

    def visit(name: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                visit(f"{name}.{key}" if name else str(key), item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(f"{name}[{i}]", item)
        elif isinstance(value, (str, os.PathLike)) and _PATH_PARAM.search(name.rsplit(".", 1)[-1]):
            path = Path(value).expanduser()
            if path.is_file():
                out[name] = file_digest(path)
            elif path.is_dir():
                out[name] = directory_digest(path)

    for parameter in list(inspect.signature(type(probe).__init__).parameters)[1:]:
        visit(parameter, getattr(probe, parameter, None))
    extra = getattr(probe, "input_digests", None)
    return {**out, **(extra() if callable(extra) else {})}


@functools.cache
def _digest_files(roots: tuple[Path, ...]) -> str:
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes())
    return "sha256:" + digest.hexdigest()


def _cache_key(cache_dir: Path | None) -> bytes:
    """The secret that keys digests in the cache; readable only by its owner (0600)."""
    import secrets

    if cache_dir is None:
        return secrets.token_bytes(32)
    file = cache_dir / _KEY_FILE
    try:
        return bytes.fromhex(file.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        pass
    key = secrets.token_bytes(32)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key.hex())
    except OSError:  # without a saved key, counts are exact for this run and recomputed on the next
        pass
    return key


def _stub_results(target: AuditTarget) -> AuditResults:
    """Just enough of a results object to check a baseline's model before any probe runs."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    manifest = Manifest(rai_audit_version=_version(), model_id=target.model_id, model_path=str(target.path),
                        fingerprint=target.fingerprint, kind=target.kind, n_parameters=0, device="", max_length=0,
                        seed=0, started_at=now, finished_at=now, duration_s=0.0, library_versions={})
    return AuditResults(manifest=manifest, results=[])


GATE_PROBE_NOT_RUN = ("{probe}.{metric}: the gate could not be checked because {probe} did not run ({status}: {why}); "
                      "a required gate does not pass unchecked. Make the probe apply (model kind, data), or set "
                      "required: false on the gate to list it as not checked instead.")


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0].rstrip(".") if lines else "no reason given"


def _unchecked_gates(probe: str, gates: Mapping[str, GateSpec], reason: str) -> list[GateNotChecked]:
    """The ``max``/``min`` bounds of ``gates``, as not checked for ``reason``."""
    return [GateNotChecked(probe=probe, metric=metric, bound=bound, threshold=threshold, reason=reason)
            for metric, gate in gates.items()
            for bound, threshold in (("max", gate.max), ("min", gate.min)) if threshold is not None]


def _check_gate(probe: str, metric_name: str, spec: GateSpec, result: ProbeResult) -> list[GateOutcome]:
    metric = result.metrics.get(metric_name)
    outcomes = []
    for bound, threshold in (("max", spec.max), ("min", spec.min)):  # tolerance: see audit.baseline
        if threshold is None:
            continue
        if result.status in ("skipped", "not_applicable"):
            outcomes.append(GateOutcome(probe=probe, metric=metric_name, bound=bound, threshold=threshold,
                                        value=None, passed=False,
                                        message=GATE_PROBE_NOT_RUN.format(probe=probe, metric=metric_name,
                                                                          status=result.status,
                                                                          why=_first_line(result.summary))))
            continue
        if metric is None or metric.value is None:
            why = "was not produced" if metric is None else f"could not be computed ({metric.note})"
            outcomes.append(GateOutcome(probe=probe, metric=metric_name, bound=bound, threshold=threshold,
                                        value=None, passed=False,
                                        message=f"{probe}.{metric_name} {why}; available: {sorted(result.metrics)}"))
            continue
        ok, message = _bound_check(f"{probe}.{metric_name}", bound, threshold, metric, signed=spec.signed)
        outcomes.append(GateOutcome(probe=probe, metric=metric_name, bound=bound, threshold=threshold,
                                    value=metric.value, passed=ok, message=message))
    return outcomes


def _bound_check(where: str, bound: str, threshold: float, metric: Metric, *, signed: bool) -> tuple[bool, str]:
    """Whether ``metric`` meets a ``max``/``min`` gate; on a metric with an ideal (and not ``signed``),
    the gate bounds the distance from the ideal, so -0.56 fails ``max: 0.5`` on a signed effect size."""
    value = float(metric.value)  # type: ignore[arg-type]
    if metric.ideal is None or signed:
        ok = value <= threshold if bound == "max" else value >= threshold
        sign = "<=" if bound == "max" else ">="
        return ok, f"{where} = {value:.4g} {'meets' if ok else 'violates'} {sign} {threshold:g}"
    ideal = metric.ideal
    if (threshold < ideal) if bound == "max" else (threshold > ideal):
        side = "above" if bound == "max" else "below"
        return False, (f"{where}: gate {bound}: {threshold:g} is on the wrong side of the metric's ideal {ideal:g}, so it "
                       f"cannot bound the distance from the ideal. Give a {bound} {side} {ideal:g}, or set signed: true "
                       "to bound the value itself.")
    limit, distance = abs(threshold - ideal), abs(value - ideal)
    ok = distance <= limit
    return ok, (f"{where} = {value:.4g}: distance from the ideal {ideal:g} is {distance:.4g}, which "
                f"{'meets' if ok else 'violates'} <= {limit:g} (gate {bound}: {threshold:g} bounds the distance; "
                "signed: true bounds the value)")


class Auditor:
    """Runs probes against a target and collects :class:`~audit.results.AuditResults`.

    Each probe runs in isolation: an exception makes that probe ``errored`` (traceback kept in
    the JSON) and the others still run. Finished results are cached on disk, keyed by the model
    fingerprint, the probe, its parameters, the data and the seed, so a re-run after a crash
    resumes instead of recomputing.

    Parameters
    ----------
    config : AuditConfig, optional
        Probes, parameters, gates, data and seed. Defaults to every registered probe.
    probes : sequence of Probe, optional
        Probe instances to run instead of the registered ones (their gates still come from
        ``config.probes``).
    cache_dir : path, optional
        Where finished results are cached; ``None`` turns caching off.
    on_result : callable, optional
        Called as ``on_result(i, n, result)`` after each probe, for progress display.
    baseline : AuditResults, optional
        A previous audit. Metrics with a ``tolerance`` gate (or, if none has one, each probe's
        headline metric) fail when significantly worse than in the baseline.
    allow_different_models : bool, default=False
        Compare against a baseline audited on other weights.

    Examples
    --------
    >>> from audit import Auditor, AuditConfig, load_target
    >>> target = load_target(progress=False)
    >>> results = Auditor(AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat6"]}}})).run(target)
    >>> results.result("seat").status in ("passed", "warned", "failed")
    True
    """

    def __init__(
        self,
        config: AuditConfig | None = None,
        *,
        probes: Sequence[Probe] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        on_result: ResultCallback | None = None,
        baseline: AuditResults | None = None,
        allow_different_models: bool = False,
    ) -> None:
        self.config = config or AuditConfig()
        self.probes = probes
        self.cache_dir = cache_dir
        self.on_result = on_result
        self.baseline = baseline
        self.allow_different_models = allow_different_models
        self._plan: list[tuple[str, Probe | None, ProbeSpec]] | None = None
        self._not_run: dict[str, str] = {}
        self._truncated_seen: set[str] = set()
        self._key: bytes | None = None

    def plan(self) -> list[tuple[str, Probe | None, ProbeSpec]]:
        """Resolve which probes will run; raises :class:`ConfigError` before any work. Computed once."""
        if self._plan is None:
            self._plan = self._make_plan()
        return self._plan

    def _make_plan(self) -> list[tuple[str, Probe | None, ProbeSpec]]:
        if self.probes is not None:
            specs = {p.name: ProbeSpec(name=p.name, source=type(p).__module__, dist=None, cls=type(p))
                     for p in self.probes}
            planned = {p.name: (p.name, p, specs[p.name]) for p in self.probes}
            return _order(planned)
        specs = discover_probes(disabled=self.config.disable)
        plan = plan_probes(self.config, specs)
        self._not_run = probes_not_run(self.config, specs, [name for name, _, _ in plan])
        return plan

    def check_baseline(self, target: AuditTarget) -> None:
        """Refuse a baseline audited on other weights, unless ``allow_different_models``."""
        if self.baseline is not None and not self.allow_different_models:
            check_compatible(_stub_results(target), self.baseline)

    def load_data(self) -> AuditDataset | None:
        data = self.config.data
        if data is None:
            return None
        return load_dataset(data.path, text_column=data.text_column, label_column=data.label_column,
                            sensitive_features=data.sensitive_features)

    def run(self, target: AuditTarget, *, data: AuditDataset | None = None) -> AuditResults:
        """Run the planned probes on ``target`` and return the results with their manifest."""
        if not isinstance(target, AuditTarget):
            raise ConfigError(NOT_A_TARGET.format(kind=type(target).__name__))
        plan = self.plan()
        self.check_baseline(target)
        dataset = data if data is not None else self.load_data()
        self._truncated_seen = set()
        self._not_checked = self._gates_of_unplanned(plan)
        started = _dt.datetime.now(_dt.timezone.utc)
        clock = time.perf_counter()
        results: dict[str, ProbeResult] = {}
        gates: list[GateOutcome] = []
        with tempfile.TemporaryDirectory(prefix="rai-audit-") as scratch:
            base_context = AuditContext(seed=self.config.seed, data=dataset, show_pii=self.config.show_pii,
                                        show_examples=self.config.show_examples,
                                        scratch_dir=Path(scratch))
            for position, (name, probe, spec) in enumerate(plan, start=1):
                result = self._run_one(name, probe, spec, target, base_context.for_probe(name, results))
                probe_config = self.config.probes.get(name)
                outcomes = []
                for metric_name, gate in (probe_config.gates.items() if probe_config else ()):
                    if not gate.required and result.status in ("skipped", "not_applicable"):
                        self._not_checked += _unchecked_gates(name, {metric_name: gate}, (
                            f"{name} did not run ({result.status}: {_first_line(result.summary)}); required: false"))
                        continue
                    outcomes += _check_gate(name, metric_name, gate, result)
                if any(not o.passed for o in outcomes) and result.status in ("passed", "warned"):
                    result = result.model_copy(update={"status": "failed"})
                gates += outcomes
                results[name] = result
                if self.on_result is not None:
                    self.on_result(position, len(plan), result)
        finished = _dt.datetime.now(_dt.timezone.utc)
        manifest = Manifest(
            rai_audit_version=_version(),
            model_id=target.model_id,
            model_path=str(target.path),
            revision=target.revision,
            fingerprint=target.fingerprint,
            fingerprint_parts=getattr(target, "fingerprint_parts", {}),
            files=getattr(target, "files", {}),
            dtypes=getattr(target, "dtypes", []),
            new_weights=getattr(target, "new_weights", []),
            kind=target.kind,
            n_parameters=target.n_parameters,
            device=str(target.device),
            max_length=target.max_length,
            seed=self.config.seed,
            started_at=started.isoformat(timespec="seconds"),
            finished_at=finished.isoformat(timespec="seconds"),
            duration_s=round(time.perf_counter() - clock, 3),
            library_versions=library_versions(),
            data=None if dataset is None else DataManifest(
                path=dataset.path, fingerprint=dataset.fingerprint, rows=len(dataset),
                text_column=dataset.text_column, label_column=dataset.label_column,
                sensitive_features=list(dataset.sensitive_features),
            ),
            config=self._manifest_config(plan),
            records=target.records,
            notes=target.notes,
            truncated_texts=len(self._truncated_seen),
            loading=dict(getattr(target, "loading", {}) or {}),
        )
        audit = AuditResults(manifest=manifest, results=list(results.values()), gates=gates,
                             card=self.config.card.model_dump(mode="json"), probes_not_run=self._not_run)
        audit = audit.model_copy(update={"gates_not_checked": list(self._not_checked)})
        if self.baseline is None:
            return audit.model_copy(update={"gates_not_checked": [*self._not_checked,
                                                                  *self._unchecked_tolerances(plan)]})
        regressions = regression_gates(audit, self.baseline,
                                       {name: cfg.gates for name, cfg in self.config.probes.items()})
        worse = {g.probe for g in regressions if not g.passed}
        updated = [r.model_copy(update={"status": "failed"}) if r.probe in worse and r.status in ("passed", "warned")
                   else r for r in audit.results]
        return audit.model_copy(update={"results": updated, "gates": [*audit.gates, *regressions]})

    def _gates_of_unplanned(self, plan: Sequence[tuple[str, Probe | None, ProbeSpec]]) -> list[GateNotChecked]:
        """Gates configured on probes the plan leaves out (disabled, not selected, not installed): not checked."""
        planned = {name for name, _, _ in plan}
        not_run = getattr(self, "_not_run", {})
        return [gate for name, cfg in sorted(self.config.probes.items()) if name not in planned and cfg.gates
                for gate in _unchecked_gates(name, cfg.gates, f"{name} is not in this audit's plan "
                                                              f"({not_run.get(name, 'not selected or not installed')})")]

    def _unchecked_tolerances(self, plan: Sequence[tuple[str, Probe | None, ProbeSpec]]) -> list[GateNotChecked]:
        """The ``tolerance`` gates of the planned probes: without a baseline there is nothing to compare with."""
        return [GateNotChecked(probe=name, metric=metric, bound="tolerance", threshold=gate.tolerance,
                               reason=NO_BASELINE)
                for name, _, _ in plan if name in self.config.probes
                for metric, gate in self.config.probes[name].gates.items() if gate.tolerance is not None]

    def _manifest_config(self, plan: Sequence[tuple[str, Probe | None, ProbeSpec]]) -> dict[str, Any]:
        """The configuration for the manifest, with probes' sensitive parameters replaced by digests."""
        from audit.probe import redacted_digest

        config = self.config.model_dump(mode="json", exclude={"card"})
        for name, _probe, spec in plan:
            sensitive = getattr(spec.cls, "sensitive_params", ()) if spec.cls is not None else ()
            params = config.get("probes", {}).get(name, {}).get("params", {})
            for key in sensitive:
                if params.get(key) not in (None, (), [], {}, ""):
                    params[key] = redacted_digest(params[key])
        return config

    def _digest(self, text: str) -> str:
        """HMAC-SHA256 of a text under a key kept in the cache directory (random when there is none)."""
        if self._key is None:
            self._key = _cache_key(None if self.cache_dir is None else Path(self.cache_dir))
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:32]

    # -- one probe --------------------------------------------------------------------
    def _cache_path(self, probe: Probe, target: AuditTarget, context: AuditContext) -> Path | None:
        if self.cache_dir is None:
            return None
        data = context.data
        key = {
            "rai_audit": _version(),
            "model": target.fingerprint,  # covers weights, config, tokenizer, artefacts, record, new head
            "kind": target.kind,
            "dtypes": getattr(target, "dtypes", []),
            "device": target.device.type,
            "max_length": target.max_length,
            "probe": probe.name,
            "probe_version": probe.version,
            "code": code_digest(type(probe).__module__),  # a code change without a version bump still misses
            "params": probe.get_params(),
            "inputs": input_digests(probe),  # the files those parameters name, by content
            "seed": context.seed,
            "show_pii": context.show_pii,
            "show_examples": context.show_examples,
            "data": None if data is None else [data.fingerprint, data.text_column, data.label_column,
                                               list(data.sensitive_features)],
            "after": {n: context.results[n].model_dump(mode="json", exclude={"duration_s", "cached"})
                      for n in probe.after if n in context.results},
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8")).hexdigest()
        return Path(self.cache_dir) / f"{probe.name}-{digest[:32]}.json"

    def _run_one(self, name: str, probe: Probe | None, spec: ProbeSpec, target: AuditTarget,
                 context: AuditContext) -> ProbeResult:
        if probe is None:
            error = spec.error or ErrorInfo(type="PluginLoadError", message=f"Plugin {name!r} did not load.")
            return ProbeResult(probe=name, status="errored", summary=error.message, error=error)
        result = self._execute(name, probe, target, context)
        if result.category != probe.category:  # a probe that built its ProbeResult by hand
            result = result.model_copy(update={"category": probe.category})
        return result

    def _execute(self, name: str, probe: Probe, target: AuditTarget, context: AuditContext) -> ProbeResult:
        if not probe.applies_to(target):
            return probe.result(
                status="not_applicable",
                summary=f"Applies to {', '.join(sorted(probe.kinds))}; this model is {target.kind}.",
            )
        if probe.requires_data and context.data is None:
            return probe.result(status="skipped",
                                summary="Needs a dataset; none was given (set data.path in the config or --data).")
        cache_file = self._cache_path(probe, target, context)
        if cache_file is not None and cache_file.is_file():
            try:
                entry = json.loads(cache_file.read_text(encoding="utf-8"))
                cached = ProbeResult.model_validate(entry["result"])
                self._truncated_seen.update(str(d) for d in entry["truncated"])
                return cached.model_copy(update={"cached": True})
            except (ValueError, KeyError, TypeError):
                cache_file.unlink(missing_ok=True)
        _take_truncated(target)  # what earlier probes used is theirs
        start = time.perf_counter()
        try:
            if len(inspect.signature(probe.run).parameters) >= 2:
                result = probe.run(target, context)
            else:  # a third-party probe written as run(target)
                result = probe.run(target)  # type: ignore[call-arg]
            if not isinstance(result, ProbeResult):
                raise TypeError(f"probe {name!r} returned {type(result).__name__}, not ProbeResult")
        except NotApplicableError as exc:
            result = probe.result(status="not_applicable", summary=context.scrub(str(exc)))
        except Exception as exc:  # isolate: one probe's failure never stops the audit
            # An exception's text may quote a row of the data: scrub() masks the words it shares with it.
            message = context.scrub(str(exc) if isinstance(exc, AuditError) else f"{type(exc).__name__}: {exc}")
            result = probe.result(
                status="errored",
                summary=f"The probe raised an error: {message.splitlines()[0] if message else type(exc).__name__}",
                error=ErrorInfo(type=type(exc).__name__, message=context.scrub(str(exc)),
                                traceback=context.scrub(traceback.format_exc())),
            )
        result = result.model_copy(update={"duration_s": round(time.perf_counter() - start, 3)})
        # Keyed digests, never the texts: a resumed run then counts the same truncated texts as a clean one.
        used = sorted(self._digest(t) for t in _take_truncated(target))
        self._truncated_seen.update(used)
        if cache_file is not None and result.status != "errored":
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(cache_file, {"result": result.model_dump(mode="json"), "truncated": used})
            except OSError as exc:  # a cache that cannot be written only costs a re-run
                warnings.warn(f"could not cache {name!r} in {str(cache_file.parent)!r}: {exc}", stacklevel=2)
        return result
