"""Redacting personal data with Presidio's anonymizer: :class:`PIIRedactor` and ``rai-audit redact``.

:class:`PIIRedactor` is a transformer in the scikit-learn sense: configuration in ``__init__``,
``transform(texts)`` returns the texts with every detected span replaced, masked, hashed,
removed or encrypted by the matching Presidio anonymizer operator. :func:`redact_file` applies
it to chosen columns of a CSV, JSONL or Parquet file or a saved Hugging Face dataset, keeping
every other column and the row order, streaming the rows, and writing the output atomically.
Summaries count what changed; they never hold a raw value, and the encryption key is never shown.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from audit.cli import JSON_MEANS, DeprecatedForm
from audit.errors import ConfigError, DataError
from privacy.pii import (
    ENGINES,
    SPACY_MODEL,
    Detection,
    Engine,
    EngineInfo,
    PIIScanner,
    Unscanned,
    anonymize,
    check_scanner_params,
)

__all__ = ["KEY_ENV", "OPERATORS", "PIIRedactor", "RedactCommand", "RedactionSummary", "redact_file"]

Operator = Literal["replace", "mask", "hash", "redact", "encrypt"]
OPERATORS: tuple[str, ...] = get_args(Operator)
#: Environment variable read for the encryption key when ``--key`` is not given.
KEY_ENV = "RAI_AUDIT_REDACT_KEY"
_AES_KEY_BYTES = (16, 24, 32)
_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "replace": {},
    "mask": {"masking_char": "*", "chars_to_mask": 1_000_000, "from_end": False},
    "hash": {"hash_type": "sha256"},
    "redact": {},
    "encrypt": {},
}

UNKNOWN_OPERATOR = "Unknown redaction operator {operator!r}. Use one of {operators}."
MISSING_KEY = ("The encrypt operator needs a key: pass --key (key=...) or set {env}, with 16, 24 or 32 "
               "characters (an AES-128, -192 or -256 key).")
#: What a text that could not be analysed becomes: withheld, since it may hold personal data.
UNSCANNED = "<NOT_SCANNED>"
BAD_KEY = ("The encrypt key must be 16, 24 or 32 bytes (AES-128, -192 or -256); received a key of {n} bytes. "
           "Give a key of one of those lengths.")


class PIIRedactor:
    """Replace personal data in texts using Presidio's analyzer and anonymizer operators.

    Parameters
    ----------
    operator : {"replace", "mask", "hash", "redact", "encrypt"}, default="replace"
        ``replace``: ``<ENTITY_TYPE>``; ``mask``: every character becomes ``*``; ``hash``:
        sha256 of the value with a random salt per value (pass ``operator_params={"salt": ...}``,
        16+ bytes, for hashes that link equal values); ``redact``: removed; ``encrypt``: AES with
        ``key``, reversible with Presidio's ``DeanonymizeEngine``.
    entities : sequence of str, optional
        Entity types to redact; ``None`` redacts every type the engine finds.
    score_threshold : float, default=0.4
    language : str, default="en"
    engine : {"auto", "spacy", "pattern"}, default="auto"
    recognizers : sequence of mapping, default=()
        Custom deny-list and regex recognizers (see :func:`privacy.pii.parse_recognizers`).
    allow_list : sequence of str, default=()
        Exact strings never redacted.
    key : str or bytes, optional
        The AES key for ``encrypt`` (16, 24 or 32 bytes).
    operator_params : mapping, optional
        Extra parameters of the Presidio operator (``masking_char``, ``chars_to_mask``,
        ``from_end``, ``new_value``, ``hash_type``, ``salt``).
    spacy_model, ner_model, ner_model_configuration, batch_size, n_process, progress
        As in :class:`~privacy.pii.PIIScanner`.

    A text whose analysis fails (see :class:`~privacy.pii.Unscanned`) is replaced by
    ``<NOT_SCANNED>`` and counted, never passed through unredacted.

    Attributes
    ----------
    engine_info_ : EngineInfo
        The engine that ran, set by :meth:`fit` (which :meth:`transform` calls when needed).

    Examples
    --------
    >>> from privacy.redact import PIIRedactor
    >>> PIIRedactor(entities=["EMAIL_ADDRESS"], engine="pattern").transform(["mail jo@example.com"])
    ['mail <EMAIL_ADDRESS>']
    >>> PIIRedactor(operator="mask", entities=["EMAIL_ADDRESS"], engine="pattern").transform(["a@b.org"])
    ['*******']
    """

    def __init__(
        self,
        *,
        operator: Operator = "replace",
        entities: Sequence[str] | None = None,
        score_threshold: float = 0.4,
        language: str = "en",
        engine: Engine = "auto",
        recognizers: Sequence[Mapping[str, Any]] = (),
        allow_list: Sequence[str] = (),
        key: str | bytes | None = None,
        operator_params: Mapping[str, Any] | None = None,
        spacy_model: str | None = None,
        ner_model: str | os.PathLike[str] | None = None,
        ner_model_configuration: Mapping[str, Any] | None = None,
        batch_size: int = 256,
        n_process: int = 1,
        progress: bool = False,
    ) -> None:
        self.operator = operator
        self.entities = entities
        self.score_threshold = score_threshold
        self.language = language
        self.engine = engine
        self.recognizers = recognizers
        self.allow_list = allow_list
        self.key = key
        self.operator_params = operator_params
        self.spacy_model = spacy_model
        self.ner_model = ner_model
        self.ner_model_configuration = ner_model_configuration
        self.batch_size = batch_size
        self.n_process = n_process
        self.progress = progress

    def __repr__(self) -> str:
        shown = {k: v for k, v in vars(self).items() if not k.endswith("_") and v not in (None, (), [])}
        if "key" in shown:
            shown["key"] = "***"
        return f"PIIRedactor({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def _operators(self) -> dict[str, Any]:
        from presidio_anonymizer.entities import OperatorConfig

        if self.operator not in OPERATORS:
            raise ConfigError(UNKNOWN_OPERATOR.format(operator=self.operator, operators=list(OPERATORS)))
        params = {**_DEFAULT_PARAMS[self.operator], **dict(self.operator_params or {})}
        if self.operator == "encrypt":
            if self.key is None or self.key == "":
                raise ConfigError(MISSING_KEY.format(env=KEY_ENV))
            key = self.key.encode("utf-8") if isinstance(self.key, str) else bytes(self.key)
            if len(key) not in _AES_KEY_BYTES:
                raise ConfigError(BAD_KEY.format(n=len(key)))
            params["key"] = self.key
        elif self.key is not None:
            raise ConfigError(f"A key was given but operator is {self.operator!r}; a key is used only by 'encrypt'. "
                              "Drop the key or use --operator encrypt.")
        return {"DEFAULT": OperatorConfig(self.operator, params)}

    def fit(self, X: Iterable[Any] | None = None, y: Any = None) -> PIIRedactor:
        """Build and check the engine and the operator (no data is needed; ``X`` is ignored)."""
        from presidio_anonymizer.entities import InvalidParamError

        check_scanner_params(score_threshold=self.score_threshold, batch_size=self.batch_size,
                             n_process=self.n_process, engine=self.engine)
        operators = self._operators()
        scanner = PIIScanner(entities=self.entities, score_threshold=self.score_threshold, language=self.language,
                             engine=self.engine, recognizers=self.recognizers, allow_list=self.allow_list,
                             spacy_model=self.spacy_model, ner_model=self.ner_model,
                             ner_model_configuration=self.ner_model_configuration,
                             batch_size=self.batch_size, n_process=self.n_process, progress=self.progress)
        info = scanner.engine_info
        try:  # Presidio checks operator parameters only when it first applies them
            anonymize("x", [Detection("PROBE", 0, 1, 1.0)], operators)
        except InvalidParamError as exc:
            raise ConfigError(f"Operator {self.operator!r} rejected its parameters: {str(exc).rstrip('.')}. "
                              "Fix operator_params (or --key / --salt).") from None
        self.scanner_ = scanner
        self.operators_ = operators
        self.engine_info_: EngineInfo = info
        return self

    def _fitted(self) -> None:
        if not hasattr(self, "operators_"):
            self.fit()

    def redact(self, texts: Iterable[Any]) -> tuple[list[Any], Counter[str]]:
        """The redacted texts and how many spans of each entity type were found and redacted.

        The counts are the detections, exactly as :class:`~privacy.pii.PIIScanner` counts them
        (the anonymizer then merges overlapping spans into one replacement). Values that are not
        text (``None``, numbers) are returned unchanged; a text that could not be analysed becomes
        ``<NOT_SCANNED>`` and is counted under that name.
        """
        self._fitted()
        out: list[Any] = []
        counts: Counter[str] = Counter()
        values = list(texts)
        for value, detections in zip(values, self.scanner_.analyze(values), strict=True):
            if isinstance(detections, Unscanned):
                counts[UNSCANNED] += 1
                out.append(UNSCANNED)
                continue
            if not detections:
                out.append(value)
                continue
            text, _ = anonymize(value, detections, self.operators_)
            counts.update(d.entity_type for d in detections)
            out.append(text)
        return out, counts

    def transform(self, texts: Iterable[Any]) -> list[Any]:
        """The texts with their personal data redacted, in order."""
        return self.redact(texts)[0]

    def fit_transform(self, texts: Iterable[Any], y: Any = None) -> list[Any]:
        return self.fit().transform(texts)


@dataclass(frozen=True)
class RedactionSummary:
    """What :func:`redact_file` changed: counts only, never a value."""

    input: str
    output: str
    rows: int
    columns: dict[str, dict[str, int]]
    entity_counts: dict[str, int]
    operator: str
    engine: EngineInfo
    duration_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def values_changed(self) -> int:
        return sum(c["changed"] for c in self.columns.values())

    def format_text(self) -> str:
        lines = [
            f"Redacted {self.values_changed:,} value(s) in column(s) {', '.join(self.columns)} of {self.input} "
            f"with operator {self.operator!r}: wrote {self.rows:,} row(s) to {self.output} "
            f"(other columns and row order unchanged) in {self.duration_s:.1f} s.",
        ]
        if self.entity_counts:
            lines.append("Spans redacted by entity type: "
                         + ", ".join(f"{k} {v:,}" for k, v in sorted(self.entity_counts.items(), key=lambda kv: -kv[1])) + ".")
        else:
            lines.append("No personal data was found; the output equals the input.")
        for name, c in self.columns.items():
            extra = f"; {c['not_text']:,} non-text value(s) left as they were" if c["not_text"] else ""
            lines.append(f"  {name}: {c['changed']:,} of {c['values']:,} value(s) changed{extra}.")
        lines.append(f"Engine: {self.engine.description}")
        lines += self.notes
        return "\n".join(lines)


def redact_file(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    columns: Sequence[str],
    redactor: PIIRedactor | None = None,
    overwrite: bool = False,
    chunk_size: int = 10_000,
) -> RedactionSummary:
    """Redact ``columns`` of a table file into ``output``; everything else is copied unchanged.

    Parameters
    ----------
    path : path
        CSV, JSONL or Parquet file, or a saved Hugging Face dataset directory.
    output : path
        Same format as ``path``. Refused if it exists, unless ``overwrite``.
    columns : sequence of str
    redactor : PIIRedactor, optional
        Defaults to ``PIIRedactor()`` (replace every entity with ``<ENTITY_TYPE>``).
    overwrite : bool, default=False
    chunk_size : int, default=10000
        Rows held in memory at a time.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from privacy.redact import PIIRedactor, redact_file
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "in.csv").write_text("id,text\\n7,mail jo@example.com\\n", encoding="utf-8")
    >>> s = redact_file(d / "in.csv", d / "out.csv", columns=["text"],
    ...                 redactor=PIIRedactor(entities=["EMAIL_ADDRESS"], engine="pattern"))
    >>> (d / "out.csv").read_text(encoding="utf-8")
    'id,text\\n7,mail <EMAIL_ADDRESS>\\n'
    """
    from privacy.tables import rewrite_columns

    if isinstance(columns, str) or not columns:
        raise ConfigError(f"columns must be a non-empty list of column names, got {columns!r}.")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    redactor = redactor if redactor is not None else PIIRedactor()
    redactor._fitted()
    stats = {c: {"values": 0, "changed": 0, "not_text": 0} for c in dict.fromkeys(columns)}
    counts: Counter[str] = Counter()
    start = time.perf_counter()

    def transform(column: str, values: list[Any]) -> list[Any]:
        new, found = redactor.redact(values)
        counts.update(found)
        s = stats[column]
        s["values"] += len(values)
        s["not_text"] += sum(not isinstance(v, str) for v in values)
        s["changed"] += sum(a != b for a, b in zip(values, new, strict=True))
        return new

    rows = rewrite_columns(path, output, list(stats), transform, overwrite=overwrite, chunk_size=chunk_size)
    notes = []
    unscanned = counts.pop(UNSCANNED, 0)
    if unscanned:
        notes.append(f"NOT SCANNED: {unscanned:,} text value(s) could not be analysed; each was replaced by {UNSCANNED} "
                     "rather than copied unredacted.")
    if redactor.operator == "hash" and "salt" not in (redactor.operator_params or {}):
        notes.append("Hashes use a random salt per value, so equal values get different hashes; pass a salt to link them.")
    return RedactionSummary(input=os.fspath(path), output=os.fspath(output), rows=rows, columns=stats,
                            entity_counts=dict(counts.most_common()), operator=redactor.operator,
                            engine=redactor.engine_info_, duration_s=round(time.perf_counter() - start, 3), notes=notes)


def load_recognizer_file(path: Path) -> list[dict[str, Any]]:
    """Custom recognizers from a YAML or JSON file: a list, or a mapping with a ``recognizers`` list."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Recognizer file {str(path)!r} does not exist. Check the --recognizers path.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"Recognizer file {str(path)!r} is not UTF-8 text. Re-encode it as UTF-8.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"Recognizer file {str(path)!r} is not valid YAML or JSON ({str(exc).splitlines()[0]}).") from None
    if isinstance(raw, Mapping):
        raw = raw.get("recognizers")
    if not isinstance(raw, list):
        raise ConfigError(f"Recognizer file {str(path)!r} must hold a list of recognizers (or a 'recognizers' list).")
    return raw


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The detection options shared by ``redact`` and ``scan-pii``."""
    parser.add_argument("--entities", nargs="+", metavar="ENTITY",
                        help="entity types to look for (default: all the engine finds), e.g. EMAIL_ADDRESS PERSON")
    parser.add_argument("--score-threshold", type=float, default=0.4, help="lowest detection score used (default 0.4)")
    parser.add_argument("--language", default="en", help="language of the texts (default en)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="auto: Hugging Face NER with --ner-model, else spaCy NER when the spaCy model is "
                             "installed, else patterns only")
    parser.add_argument("--spacy-model", metavar="NAME",
                        help=f"installed spaCy model package or directory for NER (default {SPACY_MODEL})")
    parser.add_argument("--ner-model", type=Path, metavar="DIR",
                        help="local Hugging Face token-classification model directory (e.g. a BERT NER checkpoint), "
                             "run through Presidio's TransformersNlpEngine")
    parser.add_argument("--ner-config", type=Path, metavar="FILE",
                        help="YAML/JSON of Presidio NerModelConfiguration keys, e.g. model_to_presidio_entity_mapping")
    parser.add_argument("--recognizers", type=Path, metavar="FILE",
                        help="YAML/JSON list of custom recognizers (entity + regex/patterns/deny_list/deny_list_file, context)")
    parser.add_argument("--allow", nargs="+", default=[], metavar="TEXT", help="exact strings never reported")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="rows read at a time (default 10000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--ray-address", metavar="ADDRESS",
                        help="run on a Ray cluster with Ray Data (e.g. ray://head:10001, or 'auto' on a cluster node)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The detector settings given on the command line, as :class:`PIIScanner` keyword arguments."""
    return {"entities": args.entities, "score_threshold": args.score_threshold, "language": args.language,
            "engine": args.engine, "recognizers": load_recognizer_file(args.recognizers) if args.recognizers else (),
            "allow_list": args.allow, "spacy_model": args.spacy_model, "ner_model": args.ner_model,
            "ner_model_configuration": load_ner_config_file(args.ner_config) if args.ner_config else None,
            "n_process": args.workers, "progress": not args.no_progress}


def load_ner_config_file(path: Path) -> dict[str, Any]:
    """A Presidio ``NerModelConfiguration`` mapping from a YAML or JSON file."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"NER configuration file {str(path)!r} does not exist. Check the --ner-config path.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"NER configuration file {str(path)!r} is not UTF-8 text. Re-encode it as UTF-8.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"NER configuration file {str(path)!r} is not valid YAML or JSON "
                          f"({str(exc).splitlines()[0]}).") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("ner_model_configuration"), Mapping):
        raw = raw["ner_model_configuration"]
    if not isinstance(raw, Mapping):
        raise ConfigError(f"NER configuration file {str(path)!r} must hold a mapping such as "
                          "{model_to_presidio_entity_mapping: {PER: PERSON}}.")
    return dict(raw)


class RedactCommand:
    """``rai-audit redact INPUT --out OUTPUT --columns ... --operator ...``."""

    name = "redact"
    help = "redact personal data in columns of a CSV/JSONL/Parquet file or saved dataset (Presidio)"
    examples = (
        "rai-audit redact data.csv --out clean.csv --columns text notes --operator replace",
        'rai-audit redact data.parquet --out enc.parquet --columns text --operator encrypt --key "$KEY"',
    )

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("input", type=Path, help="CSV, JSONL or Parquet file, or a saved Hugging Face dataset")
        parser.add_argument("--out", type=Path, required=True, help="output path, same format as the input")
        parser.add_argument("--columns", nargs="+", required=True, metavar="COLUMN", help="text columns to redact")
        parser.add_argument("--operator", choices=OPERATORS, default="replace",
                            help="replace (<ENTITY>), mask (***), hash (sha256), redact (remove) or encrypt (AES, needs --key)")
        parser.add_argument("--key", help=f"AES key for --operator encrypt (16, 24 or 32 characters); or set {KEY_ENV}")
        parser.add_argument("--salt", help="salt for --operator hash (16+ characters) so equal values hash equally")
        parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
        parser.add_argument("--ray-format", choices=("parquet", "jsonl"), default="parquet",
                            help="with --ray-address: format of the partitioned files written into the --out directory")
        add_engine_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        key = args.key
        if key is None and args.operator == "encrypt":
            key = os.environ.get(KEY_ENV) or None
        params = {"salt": args.salt} if args.salt is not None else None
        if params is not None and args.operator != "hash":
            raise ConfigError(f"--salt is used only by --operator hash, not {args.operator!r}. Drop --salt.")
        redactor = PIIRedactor(operator=args.operator, key=key, operator_params=params, **engine_options(args))
        if args.ray_address:
            from privacy.pii_ray import ray_redact

            summary = ray_redact(args.input, args.out, columns=args.columns, redactor=redactor,
                                 address=args.ray_address, fmt=args.ray_format, overwrite=args.overwrite)
        else:
            summary = redact_file(args.input, args.out, columns=args.columns, redactor=redactor,
                                  overwrite=args.overwrite, chunk_size=args.chunk_size)
        print(summary.format_text())
        return 0


class ScanCommand:
    """``rai-audit scan-pii INPUT --columns ...``: count personal data in a table without a model."""

    name = "scan-pii"
    help = "count personal data in columns of a CSV/JSONL/Parquet file or saved dataset (Presidio)"
    examples = (
        "rai-audit scan-pii data.csv --columns text notes",
    )

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("input", type=Path, help="CSV, JSONL, JSON or Parquet file, or a saved Hugging Face dataset")
        parser.add_argument("--columns", nargs="+", required=True, metavar="COLUMN", help="text columns to scan")
        parser.add_argument("--json-file", type=Path, metavar="FILE", help="also write the summary as JSON to FILE")
        parser.add_argument("--json", action=DeprecatedForm, nargs="?", type=Path, default=False, metavar="FILE",
                            old_dest="json_file", new="--json-file FILE", reason=JSON_MEANS,
                            help="print the summary as JSON on stdout instead of text (--json FILE: deprecated "
                                 "spelling of --json-file FILE)")
        parser.add_argument("--max-rows", type=int, help="scan only the first N rows")
        parser.add_argument("--examples", type=int, default=0, help="redacted example rows to print (default 0)")
        parser.add_argument("--show-pii", action="store_true", help="show raw values in the examples")
        parser.add_argument("--detections-out", type=Path, metavar="DIR",
                            help="with --ray-address: a new directory for per-row detection offsets (no text), "
                                 "as partitioned --ray-format files")
        parser.add_argument("--ray-format", choices=("parquet", "jsonl"), default="parquet",
                            help="with --detections-out: format of the part files")
        add_engine_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from audit._io import check_output_file, write_json_atomic

        if args.max_rows is not None and args.max_rows < 1:
            raise DataError(f"--max-rows must be a positive integer, got {args.max_rows}.")
        if args.examples < 0:
            raise DataError(f"--examples must be 0 or more, got {args.examples}. Pass --examples 5 to see five rows.")
        if args.json_file is not None:  # a bad --json-file path must fail before the scan, not after it
            check_output_file(args.json_file, flag="--json-file")
            if args.input.exists() and args.json_file.exists() and args.json_file.resolve() == args.input.resolve():
                raise DataError(f"--json-file {str(args.json_file)!r} is the input file; the summary would overwrite "
                                "the data. Give another path for --json-file.")
        scanner = PIIScanner(**engine_options(args))
        if args.ray_address:
            from privacy.pii_ray import ray_scan

            summary = ray_scan(args.input, columns=args.columns, scanner=scanner, address=args.ray_address,
                               max_rows=args.max_rows, n_examples=args.examples, detections_out=args.detections_out,
                               fmt=args.ray_format)
        else:
            if args.detections_out is not None:
                raise ConfigError("--detections-out is written only with --ray-address. Add --ray-address or drop it.")
            summary = scanner.scan_table(args.input, columns=args.columns, chunk_size=args.chunk_size,
                                         max_rows=args.max_rows, n_examples=args.examples, show_pii=args.show_pii)
        if args.json:
            print(json.dumps(summary.to_dict(), indent=2))
        else:
            print(summary.format_text())
            for example in summary.examples:
                print("  " + "; ".join(f"{k}: {v}" for k, v in example.items()))
        if args.json_file is not None:
            write_json_atomic(args.json_file, summary.to_dict())
        return 0 if not summary.documents_with_pii else 1
