"""Scanning and redacting personal data on a Ray cluster with Ray Data (``--ray-address``).

The data is read with Ray Data (CSV, JSONL or Parquet: a path every node can read, such as a
shared file system or ``s3://``), streamed through :class:`~privacy.pii.PIIScanner` in
``map_batches`` tasks (each worker builds the same Presidio engine once, so detections equal the
local scanner's), and never collected whole: the driver only receives detection offsets, types
and scores to count, and redacted rows go straight to partitioned Parquet or JSONL files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from audit.errors import ConfigError, DataError
from privacy.pii import Detection, EngineInfo, PIIScanner, ScanSummary, Unscanned, _Accumulator, _is_text

__all__ = ["RAY_FORMATS", "ray_redact", "ray_scan"]

RAY_FORMATS = ("parquet", "jsonl")
_READERS = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}
RAY_MISSING = "Ray Data is not installed; --ray-address needs it: pip install 'ray[data]'."
RAY_FORMAT_ERROR = ("--ray-address reads CSV, JSONL or Parquet (a file or a directory of them); got {path!r}. "
                    "Convert the data to one of those formats.")
RAY_OUTPUT_EXISTS = ("Output {path!r} exists. Ray writes a directory of partitioned files: give a new directory, "
                     "or pass --overwrite to replace it.")
RAY_EXAMPLES = ("Example rows are not collected on a Ray cluster (raw text would travel to the driver). Drop "
                "--examples, or scan a sample locally.")
_STATUS_SKIPPED = None


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def _connect(address: str) -> bool:
    """Connect to the cluster at ``address``; True when this call started the connection."""
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():  # a driver that already joined a cluster (a notebook, a test) must name that one
        current = ray.get_runtime_context().gcs_address
        if address not in ("auto", current) and not address.startswith("ray://"):
            raise ConfigError(f"This process is already connected to the Ray cluster at {current!r}, not {address!r}. "
                              "Pass that address, or run from a fresh process.")
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"Could not connect to the Ray cluster at {address!r} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}). Check --ray-address "
                          "(e.g. ray://head:10001, or 'auto' on a cluster node).") from None
    return True


def _kind(source: str) -> str:
    remote = "://" in source
    path = Path(source)
    if not remote and not path.exists():
        raise DataError(f"Data file {source!r} does not exist. Check the path.")
    suffixes = {p.suffix.lower() for p in path.iterdir() if p.is_file()} if not remote and path.is_dir() else {path.suffix.lower()}
    kinds = {_READERS[s] for s in suffixes if s in _READERS}
    if len(kinds) != 1:
        raise DataError(RAY_FORMAT_ERROR.format(path=source))
    return kinds.pop()


def _read(source: str | os.PathLike[str], columns: Sequence[str]) -> Any:
    ray = _ray()
    source = os.fspath(source)
    kind = _kind(source)
    if kind == "csv":
        import pyarrow as pa
        from pyarrow import csv

        # As the local reader: scanned columns are text, an empty cell is empty text.
        options = csv.ConvertOptions(column_types={c: pa.string() for c in columns}, strings_can_be_null=False)
        ds = ray.data.read_csv(source, convert_options=options)
    elif kind == "json":
        ds = ray.data.read_json(source, lines=True)
    else:
        ds = ray.data.read_parquet(source)
    names = ds.columns()
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"Column(s) {missing} are not in {source!r}. Columns: {names}. Name columns that exist.")
    return ds


def _encode(found: list[Detection], value: Any) -> str | None:
    if not _is_text(value):
        return _STATUS_SKIPPED
    if isinstance(found, Unscanned):
        return json.dumps({"error": found.error})
    return json.dumps([[d.entity_type, d.start, d.end, d.score] for d in found])


class _ScanBatch:
    """A Ray Data task: the scanner built once per worker, detections out, no text."""

    def __init__(self, options: Mapping[str, Any], columns: Sequence[str]) -> None:
        self.scanner = PIIScanner(**{**options, "n_process": 1, "progress": False})
        self.columns = list(columns)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for column in self.columns:
            values = [None if v is None else v for v in batch[column]]
            out[column] = [_encode(f, v) for f, v in zip(self.scanner.analyze(values), values, strict=True)]
        return out


def _options(scanner: PIIScanner) -> dict[str, Any]:
    return {k: getattr(scanner, k) for k in ("entities", "score_threshold", "language", "engine", "recognizers",
                                              "allow_list", "spacy_model", "ner_model", "ner_model_configuration",
                                              "batch_size", "max_chars")}


def _concurrency(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_scan(source: str | os.PathLike[str], *, columns: Sequence[str], scanner: PIIScanner, address: str,
             batch_size: int = 1_000, max_rows: int | None = None, n_examples: int = 0,
             detections_out: str | os.PathLike[str] | None = None, fmt: str = "parquet") -> ScanSummary:
    """Scan ``columns`` of ``source`` on the Ray cluster at ``address``: the same counts as
    :meth:`PIIScanner.scan_table` (rows in file order), examples excepted.

    Parameters
    ----------
    source : path or URI
        CSV, JSONL or Parquet file or directory, readable by every node.
    columns : sequence of str
    scanner : PIIScanner
        Its settings are sent to the workers, which build the engine themselves.
    address : str
        Ray cluster address (``ray://host:10001``, ``host:6379`` or ``auto``).
    batch_size : int, default=1000
        Rows per Ray Data batch (memory per worker stays within a few batches).
    max_rows : int, optional
    n_examples : int, default=0
        Must be 0: examples would bring raw text to the driver.
    detections_out : path, optional
        A new directory for the detections, one part file per batch (``fmt``: ``parquet`` or
        ``jsonl``): per row its number in file order and, per scanned column, a JSON list of
        ``[entity_type, start, end, score]`` (``{"error": ...}`` if it could not be analysed,
        null if not text). Offsets only, never the text. Written by the driver as the batches
        stream in, so memory stays at one batch.
    """
    import time

    if n_examples:
        raise ConfigError(RAY_EXAMPLES)
    if fmt not in RAY_FORMATS:
        raise ConfigError(f"Unknown output format {fmt!r} for --ray-address. Use one of {list(RAY_FORMATS)}.")
    if detections_out is not None and "://" in os.fspath(detections_out):
        raise ConfigError(f"--detections-out {os.fspath(detections_out)!r} must be a local directory (the driver "
                          "writes it as the batches stream in). Give a local path.")
    if detections_out is not None and Path(detections_out).exists():
        raise DataError(RAY_OUTPUT_EXISTS.format(path=os.fspath(detections_out)).replace(
            ", or pass --overwrite to replace it", ""))
    _, info, entities = scanner._engine()  # fail on bad settings before the cluster does
    ray = _ray()
    started = _connect(address)
    try:
        start = time.perf_counter()
        ds = _read(source, columns).select_columns(list(columns))
        if max_rows is not None:
            ds = ds.limit(max_rows)
        ds.context.execution_options.preserve_order = True
        mapped = ds.map_batches(_ScanBatch, fn_constructor_kwargs={"options": _options(scanner), "columns": list(columns)},
                                batch_size=batch_size, batch_format="default", concurrency=(1, _concurrency(ray)))
        batches = mapped.iter_batches(batch_size=batch_size, batch_format="default")
        if detections_out is not None:
            batches = _written(batches, Path(detections_out), list(columns), fmt)
        summary = _summarize(batches, list(columns), info=info, entities=entities,
                             threshold=float(scanner.score_threshold))
        return ScanSummary(**{**summary, "duration_s": round(time.perf_counter() - start, 3)})
    finally:
        if started:
            ray.shutdown()


def _written(batches: Iterator[dict[str, Any]], directory: Path, columns: list[str],
             fmt: str) -> Iterator[dict[str, Any]]:
    """Pass the batches through, writing each as one part file of detections (row numbers added)."""
    import pandas as pd

    directory.mkdir(parents=True)
    row = 0
    for part, batch in enumerate(batches):
        n = len(batch[columns[0]])
        frame = pd.DataFrame({"row": range(row, row + n), **{c: list(batch[c]) for c in columns}})
        target = directory / f"part-{part:05d}.{fmt}"
        if fmt == "parquet":
            frame.to_parquet(target, index=False)
        else:
            frame.to_json(target, orient="records", lines=True)
        row += n
        yield batch


def _decoded(cell: Any) -> list[Detection] | None:
    if cell is None:
        return None
    raw = json.loads(cell)
    if isinstance(raw, dict):
        return Unscanned(raw.get("error", ""))
    return [Detection(str(e), int(s), int(n), float(sc)) for e, s, n, sc in raw]


def _summarize(batches: Iterator[dict[str, Any]], columns: list[str], *, info: EngineInfo,
               entities: tuple[str, ...], threshold: float) -> dict[str, Any]:
    import numpy as np

    acc = _Accumulator(columns, 0, np.random.default_rng(0))
    rows = 0
    for batch in batches:
        n = len(batch[columns[0]])
        for i in range(n):
            row_has_pii = False
            for column in columns:
                found = _decoded(batch[column][i])
                if found is None:
                    acc.columns[column].skipped += 1
                    continue
                acc.add(rows, column, "", found)
                row_has_pii = row_has_pii or bool(found)
            acc.rows_with_pii += row_has_pii
            rows += 1
    if rows == 0:
        raise DataError("The data has no rows to scan. Give a table with at least one row.")
    by_cell = [
        {"entity": entity, "column": column, "spans": cell.spans, "documents": cell.documents,
         "mean_score": round(cell.score_sum / cell.spans, 4), "min_score": round(cell.score_min, 4),
         "max_score": round(cell.score_max, 4)}
        for (entity, column), cell in sorted(acc.cells.items(), key=lambda kv: (-kv[1].spans, kv[0]))
    ]
    return {"engine": info, "entities": entities, "score_threshold": threshold, "rows": rows,
            "documents": sum(s.documents for s in acc.columns.values()),
            "documents_with_pii": sum(s.with_pii for s in acc.columns.values()), "rows_with_pii": acc.rows_with_pii,
            "columns": {c: {"documents": s.documents, "with_pii": s.with_pii, "skipped": s.skipped, "failed": s.failed}
                        for c, s in acc.columns.items()},
            "entity_counts": dict(acc.entity_counts.most_common()), "by_entity_column": by_cell,
            "score_histogram": acc.histogram, "examples": [], "show_pii": False,
            "failures": dict(acc.failures.most_common())}


class _RedactBatch:
    """A Ray Data task: redact the named columns of a batch, report counts to a counter actor."""

    def __init__(self, redactor: Any, columns: Sequence[str], counter: Any) -> None:
        self.redactor = redactor.fit()
        self.columns = list(columns)
        self.counter = counter

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        stats = {}
        for column in self.columns:
            values = list(batch[column])
            new, found = self.redactor.redact(values)
            counts.update(found)
            stats[column] = {"values": len(values), "not_text": sum(not isinstance(v, str) for v in values),
                             "changed": sum(a != b for a, b in zip(values, new, strict=True))}
            batch[column] = new
        self.counter.add.remote(dict(counts), stats)
        return batch


def _counter_actor(ray: Any) -> Any:
    @ray.remote(num_cpus=0)
    class Counts:
        def __init__(self) -> None:
            self.counts: Counter[str] = Counter()
            self.stats: dict[str, Counter[str]] = {}

        def add(self, counts: dict[str, int], stats: dict[str, dict[str, int]]) -> None:
            self.counts.update(counts)
            for column, s in stats.items():
                self.stats.setdefault(column, Counter()).update(s)

        def get(self) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
            return dict(self.counts), {c: dict(s) for c, s in self.stats.items()}

    return Counts.remote()


def ray_redact(source: str | os.PathLike[str], output: str | os.PathLike[str], *, columns: Sequence[str],
               redactor: Any, address: str, fmt: str = "parquet", overwrite: bool = False,
               batch_size: int = 1_000) -> Any:
    """Redact ``columns`` of ``source`` on the Ray cluster at ``address`` into a directory of
    partitioned ``fmt`` files (``parquet`` or ``jsonl``); other columns are copied unchanged.

    Returns a :class:`~privacy.redact.RedactionSummary` with the same counts as
    :func:`~privacy.redact.redact_file` on the same data and settings.
    """
    import shutil
    import time

    from privacy.redact import UNSCANNED, RedactionSummary

    if fmt not in RAY_FORMATS:
        raise ConfigError(f"Unknown output format {fmt!r} for --ray-address. Use one of {list(RAY_FORMATS)}.")
    out = os.fspath(output)
    if "://" not in out and Path(out).exists():
        if not overwrite:
            raise DataError(RAY_OUTPUT_EXISTS.format(path=out))
        shutil.rmtree(out) if Path(out).is_dir() else Path(out).unlink()
    redactor.fit()  # bad settings fail here, not on the workers
    ray = _ray()
    started = _connect(address)
    try:
        start = time.perf_counter()
        counter = _counter_actor(ray)
        ds = _read(source, columns)
        ds.context.execution_options.preserve_order = True
        mapped = ds.map_batches(_RedactBatch, fn_constructor_kwargs={"redactor": redactor, "columns": list(columns),
                                                                      "counter": counter},
                                batch_size=batch_size, batch_format="default", concurrency=(1, _concurrency(ray)))
        if fmt == "parquet":
            mapped.write_parquet(out)
        else:
            mapped.write_json(out)
        counts, stats = ray.get(counter.get.remote())
        columns_stats = {c: {"values": stats.get(c, {}).get("values", 0), "changed": stats.get(c, {}).get("changed", 0),
                             "not_text": stats.get(c, {}).get("not_text", 0)} for c in dict.fromkeys(columns)}
        counts = Counter(counts)
        notes = []
        unscanned = counts.pop(UNSCANNED, 0)
        if unscanned:
            notes.append(f"NOT SCANNED: {unscanned:,} text value(s) could not be analysed; each was replaced by "
                         f"{UNSCANNED} rather than copied unredacted.")
        notes.append(f"Written with Ray Data as partitioned {fmt} files in the directory {out}.")
        rows = columns_stats[columns[0]]["values"]
        return RedactionSummary(input=os.fspath(source), output=out, rows=rows, columns=columns_stats,
                                entity_counts=dict(counts.most_common()), operator=redactor.operator,
                                engine=redactor.engine_info_, duration_s=round(time.perf_counter() - start, 3),
                                notes=notes)
    finally:
        if started:
            ray.shutdown()
