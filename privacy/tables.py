"""Tables read and written in chunks: CSV, JSONL, Parquet and saved Hugging Face datasets.

Scanning and redaction stream through a file so memory stays flat however many rows it has.
Every reader raises a one-line :class:`~audit.errors.DataError` for a missing file, an empty
file, a file that is not UTF-8 or a column that is not there; every writer writes to a
temporary file beside the output and moves it into place only when all rows are written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from audit._io import new_file_mode
from audit.errors import DataError, OutputError

__all__ = [
    "TABLE_FORMATS",
    "check_columns",
    "count_rows",
    "iter_columns",
    "rewrite_columns",
    "table_format",
]

TABLE_FORMATS = ("csv", "jsonl", "json", "parquet", "hf-dataset")
_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}

#: ``transform(column, values) -> values`` applied to one chunk of one column.
ColumnTransform = Callable[[str, list[Any]], list[Any]]


def table_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path``: one of :data:`TABLE_FORMATS`; raises DataError otherwise."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"Data file {str(source)!r} does not exist. Check the path.")
    if source.is_dir():
        if (source / "dataset_info.json").is_file() or (source / "state.json").is_file():
            return "hf-dataset"
        raise DataError(
            f"Directory {str(source)!r} is not a saved Hugging Face dataset (no dataset_info.json or "
            "state.json). Give a CSV, JSONL or Parquet file, or a dataset saved with save_to_disk."
        )
    fmt = _SUFFIXES.get(source.suffix.lower())
    if fmt is None:
        raise DataError(
            f"Data file {str(source)!r} has an unsupported format {source.suffix or '(no suffix)'!r}. "
            "Use .csv, .jsonl, .json, .parquet or a saved Hugging Face dataset directory."
        )
    if source.stat().st_size == 0:
        raise DataError(f"Data file {str(source)!r} is empty. Give a file with a header and rows.")
    return fmt


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> DataError:
    return DataError(
        f"Data file {str(path)!r} is not valid UTF-8 (byte {exc.start}: {exc.reason}). Re-encode it as UTF-8."
    )


def _jsonl_records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"Data file {str(path)!r}, line {number}, is not valid JSON ({exc.msg}). "
                        "Give one JSON object per line."
                    ) from None
                if not isinstance(record, dict):
                    raise DataError(
                        f"Data file {str(path)!r}, line {number}, holds a JSON {type(record).__name__}, "
                        "not an object. Give one JSON object per line."
                    )
                yield record
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc) from None


def _columns_of(path: Path, fmt: str) -> list[str]:
    if fmt == "csv":
        import pandas as pd

        try:
            return [str(c) for c in pd.read_csv(path, nrows=0, encoding="utf-8").columns]
        except UnicodeDecodeError as exc:
            raise _not_utf8(path, exc) from None
        except pd.errors.EmptyDataError:
            raise DataError(f"Data file {str(path)!r} is empty. Give a file with a header and rows.") from None
        except pd.errors.ParserError as exc:
            raise DataError(f"Data file {str(path)!r} is not valid CSV ({str(exc).splitlines()[0]}). "
                            "Fix its quoting or delimiters.") from None
    if fmt == "jsonl":
        first = next(_jsonl_records(path), None)
        if first is None:
            raise DataError(f"Data file {str(path)!r} has no rows. Give a file with at least one JSON object.")
        return list(first)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    if fmt == "hf-dataset":
        return list(_load_hf(path).column_names)
    from audit.data import read_table

    return [str(c) for c in read_table(path).columns]


def check_columns(path: str | os.PathLike[str], columns: Sequence[str]) -> list[str]:
    """Check that ``columns`` are in the table at ``path``; return all of its columns."""
    source = Path(path)
    fmt = table_format(source)
    available = _columns_of(source, fmt)
    if not columns:
        raise DataError(f"No columns were named for {str(source)!r}. Columns: {available}. Name at least one.")
    missing = [c for c in columns if c not in available]
    if missing:
        raise DataError(
            f"Column(s) {missing} are not in {str(source)!r}. Columns: {available}. Name columns that exist."
        )
    return available


def _load_hf(path: Path) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(
            f"Directory {str(path)!r} is not a saved Hugging Face dataset. Give one saved with save_to_disk."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(
            f"Directory {str(path)!r} holds a DatasetDict with splits {list(loaded)}; give the directory "
            "of one split (save each split with save_to_disk)."
        )
    return loaded


def count_rows(path: str | os.PathLike[str]) -> int | None:
    """Number of rows when the format stores it (Parquet, saved datasets); ``None`` otherwise."""
    source = Path(path)
    fmt = table_format(source)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(source).metadata.num_rows)
    if fmt == "hf-dataset":
        return len(_load_hf(source))
    return None


def iter_columns(
    path: str | os.PathLike[str], columns: Sequence[str], *, chunk_size: int = 10_000
) -> Iterator[dict[str, list[Any]]]:
    """Yield ``{column: values}`` for successive chunks of at most ``chunk_size`` rows, in file order.

    Only the named columns are read. A JSONL record without one of the columns gives ``None``
    there. ``.json`` files (one JSON array) cannot be streamed and are read whole.
    """
    source = Path(path)
    fmt = table_format(source)
    check_columns(source, columns)
    if fmt == "csv":
        import pandas as pd

        try:
            reader = pd.read_csv(source, usecols=list(columns), dtype=str, keep_default_na=False,
                                 encoding="utf-8", chunksize=chunk_size)
            for frame in reader:
                yield {c: frame[c].tolist() for c in columns}
        except UnicodeDecodeError as exc:
            raise _not_utf8(source, exc) from None
        except pd.errors.ParserError as exc:
            raise DataError(f"Data file {str(source)!r} is not valid CSV ({str(exc).splitlines()[0]}). Fix the file.") from None
    elif fmt == "jsonl":
        batch: dict[str, list[Any]] = {c: [] for c in columns}
        for record in _jsonl_records(source):
            for c in columns:
                batch[c].append(record.get(c))
            if len(batch[columns[0]]) >= chunk_size:
                yield batch
                batch = {c: [] for c in columns}
        if batch[columns[0]]:
            yield batch
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for record_batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_size, columns=list(columns)):
            yield {c: record_batch.column(c).to_pylist() for c in columns}
    elif fmt == "hf-dataset":
        dataset = _load_hf(source).select_columns(list(columns))
        for start in range(0, len(dataset), chunk_size):
            part = dataset[start : start + chunk_size]
            yield {c: list(part[c]) for c in columns}
    else:
        from audit.data import read_table

        frame = read_table(source)
        for start in range(0, len(frame), chunk_size):
            part = frame.iloc[start : start + chunk_size]
            yield {c: [None if _is_missing(v) else v for v in part[c].tolist()] for c in columns}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _check_output(source: Path, output: Path, fmt: str, overwrite: bool) -> None:
    out_fmt = "hf-dataset" if fmt == "hf-dataset" else _SUFFIXES.get(output.suffix.lower())
    if fmt == "json":
        raise DataError(
            f"Data file {str(source)!r} is a single JSON array, which cannot be rewritten row by row. "
            "Convert it to JSON Lines (.jsonl) first."
        )
    if out_fmt != fmt:
        raise OutputError(
            f"Output {str(output)!r} must have the input's format ({fmt}); got suffix "
            f"{output.suffix or '(none)'!r}. Give an output path ending like the input."
        )
    if output.exists() and not overwrite:
        raise OutputError(f"Output {str(output)!r} already exists. Pass --overwrite (overwrite=True) to replace it.")
    if fmt == "hf-dataset" and output.resolve() == source.resolve():
        raise OutputError(
            f"Output {str(output)!r} is the input dataset directory, which is memory-mapped while it is "
            "read. Write to another directory."
        )
    if not output.parent.is_dir():
        raise OutputError(f"Directory {str(output.parent)!r} for the output does not exist. Create it first.")


def rewrite_columns(
    path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    columns: Sequence[str],
    transform: ColumnTransform,
    *,
    overwrite: bool = False,
    chunk_size: int = 10_000,
) -> int:
    """Copy the table at ``path`` to ``output`` with ``transform`` applied to ``columns``.

    Every other column, the column order and the row order are kept. The output is written to a
    temporary file beside it and moved into place only at the end, so a failure never leaves a
    half-written output. Returns the number of rows written.
    """
    source, target = Path(path), Path(output)
    fmt = table_format(source)
    check_columns(source, columns)
    _check_output(source, target, fmt, overwrite)
    if fmt == "hf-dataset":
        return _rewrite_hf(source, target, columns, transform, chunk_size)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.fchmod(fd, new_file_mode(target))  # mkstemp creates 0600 whatever the umask
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "csv":
            rows = _rewrite_csv(source, tmp, columns, transform, chunk_size)
        elif fmt == "jsonl":
            rows = _rewrite_jsonl(source, tmp, columns, transform, chunk_size)
        else:
            rows = _rewrite_parquet(source, tmp, columns, transform, chunk_size)
        if rows == 0:
            raise DataError(f"Data file {str(source)!r} has no rows. Give a file with at least one row.")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def _rewrite_csv(source: Path, tmp: Path, columns: Sequence[str], transform: ColumnTransform, chunk_size: int) -> int:
    import pandas as pd

    rows = 0
    try:
        reader = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8", chunksize=chunk_size)
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            for frame in reader:
                for c in columns:
                    frame[c] = transform(c, frame[c].tolist())
                frame.to_csv(handle, index=False, header=rows == 0)
                rows += len(frame)
            handle.flush()
            os.fsync(handle.fileno())
    except UnicodeDecodeError as exc:
        raise _not_utf8(source, exc) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"Data file {str(source)!r} is not valid CSV ({str(exc).splitlines()[0]}). Fix the file.") from None
    return rows


def _rewrite_jsonl(source: Path, tmp: Path, columns: Sequence[str], transform: ColumnTransform, chunk_size: int) -> int:
    rows = 0

    def flush(records: list[dict[str, Any]], handle: Any) -> None:
        for c in columns:
            present = [i for i, r in enumerate(records) if c in r]
            new = transform(c, [records[i][c] for i in present])
            for i, value in zip(present, new, strict=True):
                records[i][c] = value
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        chunk: list[dict[str, Any]] = []
        for record in _jsonl_records(source):
            chunk.append(record)
            if len(chunk) >= chunk_size:
                flush(chunk, handle)
                rows += len(chunk)
                chunk = []
        if chunk:
            flush(chunk, handle)
            rows += len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return rows


def _rewrite_parquet(source: Path, tmp: Path, columns: Sequence[str], transform: ColumnTransform, chunk_size: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = pq.ParquetFile(source)
    schema = reader.schema_arrow
    rows = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for batch in reader.iter_batches(batch_size=chunk_size):
            arrays = []
            for name in schema.names:
                column = batch.column(name)
                if name in columns:
                    column = pa.array(transform(name, column.to_pylist()), type=column.type)
                arrays.append(column)
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            rows += batch.num_rows
    return rows


def _rewrite_hf(source: Path, target: Path, columns: Sequence[str], transform: ColumnTransform, chunk_size: int) -> int:
    dataset = _load_hf(source)
    if len(dataset) == 0:
        raise DataError(f"Dataset {str(source)!r} has no rows. Give a dataset with at least one row.")
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        def apply(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            return {c: transform(c, list(batch[c])) for c in columns}

        rewritten = dataset.map(apply, batched=True, batch_size=chunk_size, load_from_cache_file=False,
                                cache_file_name=str(staging / "map-cache.arrow"), desc=None)
        rewritten.save_to_disk(str(staging / "dataset"))
        backup = None
        if target.exists():
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, backup)
        os.replace(staging / "dataset", target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(dataset)
