"""Reading the user's dataset: CSV, JSONL, Parquet or a saved Hugging Face dataset."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import DataError

__all__ = ["SUPPORTED_FORMATS", "AuditDataset", "fingerprint_path", "load_dataset", "read_table"]

SUPPORTED_FORMATS = (".csv", ".jsonl", ".json", ".parquet", "saved Hugging Face dataset directory")


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, or of every file in a directory (relative name and content)."""
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    outer = hashlib.sha256()
    for file in files:
        inner = hashlib.sha256()
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                inner.update(chunk)
        name = file.relative_to(root).as_posix() if root.is_dir() else file.name
        outer.update(name.encode("utf-8") + b"\0" + inner.hexdigest().encode("ascii") + b"\n")
    return "sha256:" + outer.hexdigest()


def read_table(path: str | os.PathLike[str]) -> Any:
    """Read a whole table into a pandas DataFrame, with one-line errors for bad files."""
    import pandas as pd

    source = Path(path)
    if not source.exists():
        raise DataError(
            f"Data file {str(source)!r} does not exist. Check the path given as data.path or --data."
        )
    try:
        if source.is_dir():
            import datasets

            try:
                return datasets.load_from_disk(str(source)).to_pandas()
            except FileNotFoundError:
                raise DataError(
                    f"Directory {str(source)!r} is not a saved Hugging Face dataset "
                    "(no dataset_info.json / state.json). Give a file or a dataset saved with "
                    "save_to_disk."
                ) from None
        suffix = source.suffix.lower()
        if suffix == ".csv":
            frame = pd.read_csv(source, encoding="utf-8", keep_default_na=False)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(source, lines=True, encoding="utf-8")
        elif suffix == ".json":
            frame = pd.read_json(source, encoding="utf-8")
        elif suffix == ".parquet":
            frame = pd.read_parquet(source)
        else:
            raise DataError(
                f"Data file {str(source)!r} has an unsupported format {suffix or '(no suffix)'!r}. "
                f"Use one of: {', '.join(SUPPORTED_FORMATS)}."
            )
    except UnicodeDecodeError as exc:
        raise DataError(
            f"Data file {str(source)!r} is not valid UTF-8 (byte {exc.start}: {exc.reason}). "
            "Re-encode it as UTF-8."
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"Data file {str(source)!r} is empty. Give a file with a header and rows.") from None
    except ValueError as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(
            f"Data file {str(source)!r} cannot be parsed as {source.suffix or 'a table'} "
            f"({str(exc).splitlines()[0][:200]}). Check its format."
        ) from None
    if len(frame) == 0:
        raise DataError(f"Data file {str(source)!r} has no rows. Give a file with at least one row.")
    return frame


@dataclass(frozen=True)
class AuditDataset:
    """The audit's evaluation data and the roles of its columns.

    Examples
    --------
    >>> import pandas as pd
    >>> from audit import AuditDataset
    >>> ds = AuditDataset(frame=pd.DataFrame({"text": ["a", "b"], "sex": ["f", "m"]}), text_column="text",
    ...                   sensitive_features=("sex",))
    >>> len(ds), ds.texts
    (2, ['a', 'b'])

    Attributes
    ----------
    frame : pandas.DataFrame
        The rows, in file order.
    text_column : str
    label_column : str or None
    sensitive_features : tuple of str
        Columns naming the group each row belongs to (fairlearn's vocabulary).
    path : str
    fingerprint : str
        sha256 of the file's bytes, for the manifest.
    """

    frame: Any
    text_column: str
    label_column: str | None = None
    sensitive_features: tuple[str, ...] = ()
    path: str = ""
    fingerprint: str = ""
    extra_columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def texts(self) -> list[str]:
        return [str(t) for t in self.frame[self.text_column].tolist()]

    def __len__(self) -> int:
        return len(self.frame)


def load_dataset(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_column: str | None = None,
    sensitive_features: Sequence[str] = (),
) -> AuditDataset:
    """Load an evaluation dataset and check that the named columns exist.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.data import load_dataset
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
    >>> _ = p.write_text("text,label,sex\\nfine,1,f\\nbad,0,m\\n", encoding="utf-8")
    >>> ds = load_dataset(p, label_column="label", sensitive_features=["sex"])
    >>> len(ds), ds.texts
    (2, ['fine', 'bad'])
    """
    frame = read_table(path)
    columns = [str(c) for c in frame.columns]
    wanted = [("text_column", text_column)]
    if label_column is not None:
        wanted.append(("label_column", label_column))
    wanted += [("sensitive_features", c) for c in sensitive_features]
    for role, column in wanted:
        if column not in columns:
            raise DataError(
                f"Column {column!r} ({role}) is not in {str(path)!r}. Columns: {columns}. "
                f"Set {role} to one of them."
            )
    return AuditDataset(
        frame=frame,
        text_column=text_column,
        label_column=label_column,
        sensitive_features=tuple(sensitive_features),
        path=os.fspath(path),
        fingerprint=fingerprint_path(path),
    )
