"""The ``rai-audit`` command line.

A user's mistake (an :class:`~audit.errors.AuditError`) becomes one line on stderr and exit
code 2, with nothing written; a failed gate or an errored probe exits 1; a clean audit 0.
Sub-commands beyond the core ones (``redact``, ``train-dp``, ``federate``, ...) are plugins in
the ``rai_audit.commands`` entry-point group, so this module knows none of them by name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import traceback
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from audit.errors import AuditError, ConfigError, OutputError
from audit.kinds import KINDS

__all__ = ["Command", "DeprecatedForm", "main"]

EXIT_OK, EXIT_GATE, EXIT_USAGE = 0, 1, 2
_OFFLINE_DEFAULTS = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


class Command(Protocol):
    """A sub-command plugin, registered under ``rai_audit.commands``.

    ``name`` and ``help`` describe it; ``configure(parser)`` adds its arguments;
    ``run(args)`` does the work and returns the exit code. An optional ``examples`` tuple of
    command lines ends its ``--help``.
    """

    name: str
    help: str

    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


BASELINE_MEANS = "--baseline names an earlier results.json to compare with, as in 'rai-audit run'"
JSON_MEANS = "--json prints the summary as JSON on stdout, as in 'rai-audit run'"
DEPRECATED_FORM = ("{old} is deprecated here: {reason}; use {new} instead (the old form stops working in the "
                   "next release)")


class DeprecatedForm(argparse.Action):
    """An option's old spelling or meaning, still accepted for one release with a one-line warning.

    A flag name means one thing in every sub-command (``--baseline`` a results.json to compare
    with, ``--json`` a switch that prints JSON on stdout), so a command that used the name for
    something else keeps the old form only through this action.

    Parameters
    ----------
    new : str
        The option to use instead, named in the warning.
    reason : str
        What the name means now, named in the warning.
    old_dest : str, optional
        With ``nargs="?"``: a bare flag sets ``dest`` to True (the new meaning) and a given value is
        the old form, stored in ``old_dest`` after the warning. Without it the old switch sets
        ``dest`` to True after the warning.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, reason: str,
                 old_dest: str | None = None, nargs: Any = 0, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.new, self.reason, self.old_dest = new, reason, old_dest

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.old_dest is not None and values is None:  # the bare flag: its one meaning everywhere
            setattr(namespace, self.dest, True)
            return
        sys.stderr.write("rai-audit: warning: " + DEPRECATED_FORM.format(
            old=f"{option_string} {values}" if self.old_dest is not None else option_string,
            reason=self.reason, new=self.new) + "\n")
        if self.old_dest is not None:
            setattr(namespace, self.old_dest, values)
        else:
            setattr(namespace, self.dest, True)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help shows its default, unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        # identity, not equality: a default of 0 is shown, a default of False (a switch) is not
        shown = (default is not None and default is not False and default is not argparse.SUPPRESS
                 and not (isinstance(default, (list, tuple)) and not default))
        if shown and "default" not in text.lower() and action.option_strings:
            text += " (default: %(default)s)"
        return text


_EXAMPLES = {
    "run": ("rai-audit run --model ./my-model --out report",
            "rai-audit run --config audit.yaml --probe seat --baseline released/results.json --junit junit.xml"),
    "report": ("rai-audit report report/results.json", "rai-audit report report/results.json --out card/"),
    "probes": ("rai-audit probes", "rai-audit probes --json"),
    "schema": ("rai-audit schema", "rai-audit schema --out results.schema.json"),
}


def _examples_epilog(lines: Sequence[str]) -> str | None:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None


def _finish_help(sub: Any, commands: Mapping[str, Any]) -> None:
    """Defaults in every option's help, and each sub-command's help ending with its examples."""
    for name, parser in sub.choices.items():
        parser.formatter_class = _HelpFormatter
        examples = _EXAMPLES.get(name) or tuple(getattr(commands.get(name), "examples", ()))
        parser.epilog = _examples_epilog(examples)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        sys.stderr.write(f"rai-audit: error: {message.rstrip('.')}. See '{self.prog} --help'.\n")
        raise SystemExit(EXIT_USAGE)


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="audit a model and write results.json, model_card.html and README.md")
    p.add_argument("--model", help="model directory or Hub id (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--config", type=Path, help="YAML audit config (see the README)")
    p.add_argument("--out", type=Path, help="output directory (default: audit-report)")
    p.add_argument("--probe", action="append", dest="probes", metavar="NAME", help="run only this probe (repeatable)")
    p.add_argument("--disable", action="append", default=[], metavar="NAME", help="do not load or run this probe (repeatable)")
    p.add_argument("--seed", type=int, help="seed for every random choice (default 0)")
    p.add_argument("--kind", choices=list(KINDS),
                   help="model kind (default: detected from config.json)")
    p.add_argument("--revision", help="Hub revision")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--batch-size", type=int, help="texts per forward pass (default: 32, or the config's)")
    p.add_argument("--max-length", type=int, help="truncation length in tokens (default: the model's limit)")
    p.add_argument("--trust-remote-code", action="store_true", default=None, help="allow the model's own Python code to run")
    p.add_argument("--allow-pickle", action="store_true", default=None, help="allow pickle weights (*.bin, *.pt)")
    p.add_argument("--allow-new-weights", action="store_true", default=None,
                   help="allow newly initialised tensors beyond a new task head (audits random weights)")
    _add_loading_options(p)
    p.add_argument("--data", type=Path, help="evaluation dataset (CSV, JSONL, Parquet or saved HF dataset)")
    p.add_argument("--text-column", help="column of --data holding the texts (default: text)")
    p.add_argument("--label-column", help="column of --data holding the labels, for group fairness")
    p.add_argument("--sensitive-feature", action="append", dest="sensitive_features", metavar="COLUMN",
                   help="column of --data holding a demographic attribute (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="recompute every probe instead of reusing cached results")
    p.add_argument("--show-pii", action="store_true", default=None, help="allow raw personal data in the reports")
    p.add_argument("--show-examples", action="store_true", default=None,
                   help="allow rows of --data to appear verbatim in the reports (default: masked)")
    p.add_argument("--baseline", type=Path, metavar="RESULTS_JSON",
                   help="fail when a metric is significantly worse than in this earlier results.json")
    p.add_argument("--allow-different-models", action="store_true",
                   help="allow a baseline audited on another model")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML (one test case per probe and gate)")
    p.add_argument("--json", action="store_true", help="print a JSON summary to stdout instead of text")
    p.add_argument("--quiet", action="store_true", help="print only failures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_loading_options(p: argparse.ArgumentParser) -> None:
    """Adapters, large models and instruction models (see audit.adapters, audit.placement)."""
    p.add_argument("--base-model", metavar="PATH",
                   help="base model of a PEFT adapter directory (default: its adapter_config.json's base_model_name_or_path)")
    p.add_argument("--device-map", metavar="MAP",
                   help="'auto' splits a model too large for one device across GPUs, CPU and disk (needs accelerate)")
    p.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"],
                   help="parameter dtype to load in (default: float32; auto: the checkpoint's)")
    p.add_argument("--max-memory", action="append", metavar="DEVICE=SIZE",
                   help="with --device-map: most memory for a device, e.g. cpu=2GiB or 0=20GiB (repeatable)")
    p.add_argument("--offload-folder", type=Path, help="with --device-map: where layers that fit nowhere go (default: a temporary directory)")
    p.add_argument("--no-chat-template", action="store_false", dest="chat_template", default=None,
                   help="generation probes send prompts as plain text, not in the tokenizer's chat template")


BAD_MAX_MEMORY = "--max-memory takes DEVICE=SIZE (e.g. cpu=2GiB or 0=20GiB), got {value!r}."


def _max_memory(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        device, sep, size = value.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise ConfigError(BAD_MAX_MEMORY.format(value=value))
        out[device.strip()] = size.strip()
    return out


def _loading_kwargs(config: Any) -> dict[str, Any]:
    """load_target's adapter and placement arguments from the config (GPU indices as ints for accelerate)."""
    memory = None if config.max_memory is None else {
        (int(k) if str(k).isdigit() else k): v for k, v in config.max_memory.items()}
    return {"base_model": config.base_model, "device_map": config.device_map, "dtype": config.dtype,
            "max_memory": memory, "offload_folder": config.offload_folder}


def _config_from_args(args: argparse.Namespace) -> Any:
    from audit.config import AuditConfig, DataConfig, load_config, validate_config

    config = load_config(args.config) if args.config else AuditConfig()
    raw = config.model_dump()
    for key in ("model", "kind", "revision", "device", "batch_size", "max_length", "seed",
                "trust_remote_code", "allow_pickle", "show_pii", "show_examples", "allow_new_weights",
                "base_model", "device_map", "dtype", "offload_folder", "chat_template"):
        value = getattr(args, key, None)
        if value is not None:
            raw[key] = value
    if getattr(args, "max_memory", None):
        raw["max_memory"] = _max_memory(args.max_memory)
    if args.out is not None:
        raw["output_dir"] = args.out
    if args.probes:
        raw["select"] = list(dict.fromkeys(args.probes))
    if args.disable:
        raw["disable"] = list(dict.fromkeys([*raw.get("disable", []), *args.disable]))
    if args.no_cache:
        raw["cache"] = False
    if args.data is not None:
        raw["data"] = DataConfig(path=args.data).model_dump()
    if raw.get("data") is not None:
        for key, value in (("text_column", args.text_column), ("label_column", args.label_column),
                           ("sensitive_features", args.sensitive_features)):
            if value is not None:
                raw["data"][key] = value
    elif args.text_column or args.label_column or args.sensitive_features:
        raise ConfigError("--text-column, --label-column and --sensitive-feature need --data FILE (or data.path in the config).")
    return validate_config(raw, source="command line")


MODEL_DIR_AS_OUT = ("Output directory {out!r} holds a model ({found}); the reports would overwrite its files "
                    "(README.md is the model's Hub card). Choose another --out, e.g. {suggestion!r}.")


def _refuse_model_dir(path: Path, model: str | os.PathLike[str] | None = None) -> None:
    """A report directory must never be a model directory: writing README.md there replaces the model's card."""
    if not path.is_dir():
        return
    markers = [name for name in ("config.json", "rai_audit_record.json") if (path / name).is_file()]
    markers += sorted(p.name for p in path.glob("*.safetensors"))[:1]
    same = model is not None and Path(model).expanduser().is_dir() and \
        Path(model).expanduser().resolve() == path.resolve()
    if markers or same:
        raise OutputError(MODEL_DIR_AS_OUT.format(out=str(path), found=", ".join(markers) or "it is --model",
                                                  suggestion=str(path / "audit-report")))


def _check_output_dir(path: Path, *, model: str | os.PathLike[str] | None = None) -> None:
    """Fail before any work when ``path`` cannot be created or written; leave nothing behind."""
    import tempfile

    _refuse_model_dir(path, model)
    created: list[Path] = []
    probe = path.absolute()
    while not probe.exists() and probe.parent != probe:
        created.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"Output path {str(path)!r} cannot be used: {str(probe)!r} is a file. Choose another --out.")
    try:
        for directory in reversed(created):
            directory.mkdir()
        with tempfile.NamedTemporaryFile(dir=path, prefix=".rai-write-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"Output directory {str(path)!r} cannot be written ({exc.strerror or exc}). "
                          "Choose another --out or fix its permissions.") from None
    finally:
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _cmd_run(args: argparse.Namespace) -> int:
    from audit._validate import check_records
    from audit.results import AuditResults, report_plugin
    from audit.runner import Auditor
    from audit.target import RECORD_FILENAME, load_target

    write_reports = report_plugin("write")
    config = _config_from_args(args)
    _check_output_dir(config.output_dir, model=config.model)
    if args.junit is not None and args.junit.is_dir():
        raise OutputError(f"JUnit file {str(args.junit)!r} is a directory. Give a file path with --junit.")
    junit_dir = args.junit.absolute().parent if args.junit is not None else None
    if junit_dir is not None and not junit_dir.is_dir() and junit_dir != config.output_dir.absolute():
        raise OutputError(f"JUnit file {str(args.junit)!r} cannot be written: directory "
                          f"{str(args.junit.absolute().parent)!r} does not exist. Create it or choose another path.")
    baseline = AuditResults.load(args.baseline) if args.baseline is not None else None
    cache_dir = (config.cache_dir or config.output_dir / ".cache") if config.cache else None
    paint = _painter(sys.stderr)

    def on_result(i: int, n: int, result: Any) -> None:
        if args.quiet and result.status not in ("failed", "errored"):
            return
        cached = ", cached" if result.cached else ""
        sys.stderr.write(f"[{i}/{n}] {result.probe}: {paint(result.status)} ({result.duration_s:.1f}s{cached}) "
                         f"{result.summary}\n")

    auditor = Auditor(config, cache_dir=cache_dir, on_result=on_result, baseline=baseline,
                      allow_different_models=args.allow_different_models)
    plan = auditor.plan()
    data = auditor.load_data()
    target = load_target(config.model, kind=config.kind, revision=config.revision, device=config.device,
                         trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle,
                         allow_new_weights=config.allow_new_weights, seed=config.seed,
                         batch_size=config.batch_size, max_length=config.max_length,
                         **_loading_kwargs(config),
                         progress=not args.no_progress)
    target.use_chat_template = config.chat_template
    _refuse_model_dir(config.output_dir, target.path)
    check_records(target.records, source=str(target.path / RECORD_FILENAME))
    auditor.check_baseline(target)
    if not args.quiet and not args.json:
        sys.stderr.write(f"Auditing {target.model_id} ({target.kind}, {target.n_parameters:,} parameters) "
                         f"with {len(plan)} probe(s)\n")
    results = auditor.run(target, data=data)
    paths = write_reports(results, config.output_dir)
    if args.junit is not None:
        from audit.junit import write_junit

        paths["junit"] = write_junit(results, args.junit)
    for gate in results.failed_gates:
        sys.stderr.write(f"{paint('gate failed')}: {gate.message}\n")
    if results.gates_not_checked:
        names = ", ".join(f"{g.probe}.{g.metric}" for g in results.gates_not_checked)
        sys.stderr.write(f"{paint('gate not checked')}: {names}: {results.gates_not_checked[0].reason}\n")
    if args.json:
        print(json.dumps(_summary(results, paths), indent=2))
    elif not args.quiet:
        print(f"Model card: {paths['html']}")
        print(f"Results:    {paths['results']}")
        print(f"Hub card:   {paths['markdown']}")
        if "junit" in paths:
            print(f"JUnit:      {paths['junit']}")
        verdict = results.verdict()
        word = verdict.split()[0]
        print(f"Verdict:    {paint(word)}{verdict[len(word):]}")
    elif not results.passed:
        sys.stderr.write(f"Verdict: {results.verdict()}\n")
    return results.exit_code


def _summary(results: Any, paths: dict[str, Path]) -> dict[str, Any]:
    """The machine-readable summary ``--json`` prints."""
    probes = []
    for r in results.results:
        hm = r.headline_metric
        probes.append({"probe": r.probe, "status": r.status, "summary": r.summary, "headline": r.headline,
                       "value": hm.value if hm else None, "ci": list(hm.ci) if hm and hm.ci else None,
                       "p_value": hm.p_value if hm else None})
    return {"schema_version": results.schema_version, "passed": results.passed, "exit_code": results.exit_code,
            "model_id": results.manifest.model_id,
            "fingerprint": results.manifest.fingerprint, "probes": probes,
            "verdict": results.verdict(),
            "gates": [g.model_dump(mode="json") for g in results.gates],
            "gates_not_checked": [g.model_dump(mode="json") for g in results.gates_not_checked],
            "probes_not_run": dict(results.probes_not_run),
            "files": {k: str(v) for k, v in paths.items()}}


_COLOURS = {"passed": "32", "warned": "33", "failed": "31", "errored": "35", "gate failed": "31", "gate not checked": "33"}


def _painter(stream: Any) -> Any:
    """Colour status words on a terminal; plain text otherwise or when NO_COLOR is set."""
    use = hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")

    def paint(word: str) -> str:
        code = _COLOURS.get(word)
        return f"\033[{code}m{word}\033[0m" if use and code else word

    return paint


def _cmd_report(args: argparse.Namespace) -> int:
    from audit.results import AuditResults, report_plugin

    write_reports = report_plugin("write")

    results = AuditResults.load(args.results)
    out = args.out or args.results.parent
    _check_output_dir(out, model=results.manifest.model_path)
    paths = write_reports(results, out)
    print(f"Model card: {paths['html']}")
    return EXIT_OK


def _cmd_probes(args: argparse.Namespace) -> int:
    from audit.registry import discover_probes

    specs = discover_probes()
    rows = []
    for name, spec in specs.items():
        if spec.cls is None:
            rows.append({"name": name, "kinds": [], "description": "", "status": "failed to load",
                         "error": spec.error.message if spec.error else "", "source": spec.source})
        else:
            rows.append({"name": name, "kinds": sorted(spec.cls.kinds), "description": spec.cls.description,
                         "status": "ok", "source": spec.source, "requires_data": spec.cls.requires_data})
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        if row["status"] == "ok":
            print(f"{row['name']:<24} {', '.join(row['kinds']):<60} {row['description']}")
        else:
            print(f"{row['name']:<24} FAILED TO LOAD: {row['error']}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from audit._io import check_output_file, write_json_atomic
    from audit.results import json_schema

    if args.out:
        check_output_file(args.out, flag="--out")
    schema = json_schema()
    if args.out:
        write_json_atomic(args.out, schema)
    else:
        print(json.dumps(schema, indent=2))
    return EXIT_OK


def _plugin_commands(sub: Any) -> dict[str, Command]:
    from audit.registry import COMMAND_GROUP, entry_points

    commands: dict[str, Command] = {}
    for ep in entry_points(COMMAND_GROUP):
        try:
            command = ep.load()
            command = command() if isinstance(command, type) else command
            parser = sub.add_parser(command.name, help=command.help)
            command.configure(parser)
        except Exception as exc:  # a broken plugin command must not take the CLI down
            sys.stderr.write(f"rai-audit: warning: command plugin {ep.name!r} ({ep.value}) failed to load: {exc}\n")
            continue
        commands[command.name] = command
    return commands


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = _Parser(prog="rai-audit", description="Audit a Hugging Face model and write a model card.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_run(sub)
    p = sub.add_parser("report", help="re-render the model card from a results.json")
    p.add_argument("results", type=Path, help="a results.json an audit wrote")
    p.add_argument("--out", type=Path, help="output directory (default: beside the results file)")
    p = sub.add_parser("probes", help="list the registered probes and the model kinds each applies to")
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p = sub.add_parser("schema", help="print the JSON Schema of results.json")
    p.add_argument("--out", type=Path, help="write the schema to this file instead of stdout")
    commands = _plugin_commands(sub)
    _finish_help(sub, commands)
    return parser, commands


def _version() -> str:
    from audit._version import version  # not audit.runner's import, which loads torch

    return version()


def _show_warning(message: Any, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
    """A warning is one line on stderr, like an error, without Python's source-line echo."""
    text = str(message).splitlines()[0] if str(message) else category.__name__
    sys.stderr.write(f"rai-audit: warning: {text}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rai-audit`` console script; returns the exit code."""
    for key, value in _OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    parser, plugins = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    handlers = {"run": _cmd_run, "report": _cmd_report, "probes": _cmd_probes, "schema": _cmd_schema}
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.command in handlers:
                return handlers[args.command](args)
            return plugins[args.command].run(args)
    except AuditError as exc:
        sys.stderr.write(f"rai-audit: error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("rai-audit: interrupted; finished probes are cached and a re-run resumes from them\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:
        traceback.print_exc()
        return EXIT_GATE


if __name__ == "__main__":
    raise SystemExit(main())
