"""Writing a debiased model directory: a fresh copy, never the input, with the merged training record."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit._io import write_json_atomic
from audit.errors import OutputError
from audit.records import ASSESSED_FIELDS, append_step, chain_entry, data_digest
from audit.target import PROJECTION_FILENAME, RECORD_FILENAME, THRESHOLDS_FILENAME, AuditTarget

_OWN_FILES = (RECORD_FILENAME, PROJECTION_FILENAME, THRESHOLDS_FILENAME)


def check_output_dir(out: str | Path, *, source: Path, overwrite: bool = False) -> Path:
    """Refuse to write into the source model or into a non-empty directory unless ``overwrite``."""
    directory = Path(out).expanduser()
    if directory.exists() and directory.resolve() == Path(source).resolve():
        raise OutputError(f"--out {str(directory)!r} is the input model's directory; debiasing never changes the "
                          "model it was given. Choose a new directory.")
    if directory.exists() and any(directory.iterdir()) and not overwrite:
        raise OutputError(f"--out {str(directory)!r} is not empty. Choose a new directory, or pass --overwrite.")
    return directory


def copy_model_dir(source: Path, out: Path) -> None:
    """Copy the model's files (weights, config, tokenizer) but not rai-audit's own side files."""
    out.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if item.is_file() and item.name not in _OWN_FILES:
            shutil.copy2(item, out / item.name)


def write_record(out: Path, target: AuditTarget, section: dict[str, Any], *, texts: Sequence[str] | None) -> Path:
    """Merge the ``debiasing`` section into the source model's record sections and write it beside ``out``.

    ``texts`` are the user's rows the technique read (``None`` when it read only built-in
    sentences); their keyed digest goes into the section and into the record's chain, where it
    tells whether a DP guarantee of the source model still holds. A model debiased twice keeps
    the earlier step under ``debiasing.previous``.
    """
    digest = data_digest(texts) if texts is not None else None
    records = dict(target.records)
    section = {**section, "source_model": target.model_id, "source_fingerprint": target.fingerprint,
               "private": False}
    if isinstance(section.get("data"), dict):
        section["data"] = {**section["data"], "keyed_fingerprint": digest["fingerprint"] if digest else None}
    earlier = records.get("debiasing")
    if isinstance(earlier, dict):
        earlier = {k: v for k, v in earlier.items() if k not in ASSESSED_FIELDS}
        section["previous"] = [*earlier.pop("previous", []), earlier]
    records["debiasing"] = section
    entry = chain_entry(step="debiasing", technique=str(section.get("technique")), digest=digest,
                        uses_user_data=texts is not None, private=False)
    return write_json_atomic(Path(out) / RECORD_FILENAME, append_step(records, entry))
