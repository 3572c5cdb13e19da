"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Files are created with the permissions the user's umask allows (``0666 & ~umask``), like any
other program's output; a file that already exists keeps its mode. A write that fails (a full
disk, a read-only directory) raises a one-line :class:`~audit.errors.OutputError` and leaves
every earlier file as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.errors import OutputError

__all__ = ["check_output_file", "ensure_writable_dir", "new_file_mode", "write_json_atomic", "write_text_atomic", "write_texts_atomic"]

OUTPUT_IS_DIRECTORY = "Output file {path!r} is a directory. Give a file path{hint}."
OUTPUT_PARENT_MISSING = ("Directory {parent!r} for the output file {path!r} does not exist. Create it first, or give "
                         "another path{hint}.")
OUTPUT_PARENT_NOT_DIR = "Output file {path!r} cannot be created: {parent!r} is a file, not a directory{hint}."
OUTPUT_NOT_WRITABLE = "Output file {path!r} cannot be written ({reason}). Choose another path{hint}."
WRITE_FAILED = ("Writing {path!r} failed ({reason}); nothing was replaced and earlier files are unchanged. "
                "Free disk space or choose another output location.")


def _umask() -> int:
    try:  # Linux states it; reading it elsewhere means setting it, which races with other threads
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(target: Path) -> int:
    """The mode a new file at ``target`` gets: an existing file's own mode, else ``0666 & ~umask``."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _hint(flag: str | None) -> str:
    return f" with {flag}" if flag else ""


def check_output_file(path: str | os.PathLike[str], *, flag: str | None = None) -> Path:
    """Fail before any work when ``path`` cannot be written as a file; create nothing.

    Examples
    --------
    >>> import tempfile
    >>> from audit._io import check_output_file
    >>> from audit.errors import OutputError
    >>> try:
    ...     check_output_file(tempfile.gettempdir())
    ... except OutputError as exc:
    ...     print(str(exc).split(" is a ")[1])
    directory. Give a file path.
    """
    target = Path(path)
    hint = _hint(flag)
    if target.is_dir():
        raise OutputError(OUTPUT_IS_DIRECTORY.format(path=str(target), hint=hint))
    parent = target.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(OUTPUT_PARENT_NOT_DIR.format(path=str(target), parent=str(parent), hint=hint))
    if not parent.is_dir():
        raise OutputError(OUTPUT_PARENT_MISSING.format(path=str(target), parent=str(parent), hint=hint))
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputError(OUTPUT_NOT_WRITABLE.format(path=str(target), reason="permission denied", hint=hint))
    return target


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check that files can be written there."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".rai-write-check-"):
            pass
    except OSError as exc:
        raise OutputError(
            f"Output directory {str(directory)!r} cannot be written ({exc.strerror or exc}). "
            "Choose another directory with --out or fix its permissions."
        ) from None
    return directory


def _stage(target: Path, text: str) -> Path:
    """Write ``text`` to a new temporary file beside ``target`` (flushed to disk); return its path."""
    check_output_file(target)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.fchmod(fd, new_file_mode(target))  # mkstemp creates 0600 whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(WRITE_FAILED.format(path=str(target), reason=exc.strerror or exc)) from exc
        raise
    return Path(tmp)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same directory."""
    return write_texts_atomic({path: text})[Path(path)]


def write_texts_atomic(files: Mapping[str | os.PathLike[str], str]) -> dict[Path, Path]:
    """Write several files as one set: every file is staged first, then all are renamed into place.

    A failure while staging (a full disk) replaces nothing; a failure while renaming puts the
    files already renamed back to their earlier content. So a reader never finds a new file next
    to an old one from the same set. Returns ``{path: path}`` in the order given.
    """
    targets = [Path(p) for p in files]
    staged: list[tuple[Path, Path]] = []
    try:
        for target, text in zip(targets, files.values()):
            staged.append((target, _stage(target, text)))
        _commit(staged)
    finally:
        for _target, tmp in staged:
            tmp.unlink(missing_ok=True)
    return {t: t for t in targets}


def _commit(staged: list[tuple[Path, Path]]) -> None:
    done: list[tuple[Path, Path | None, bool]] = []  # (target, backup of its old content, existed before)
    try:
        for target, tmp in staged:
            existed, backup = target.exists(), None
            if existed:
                candidate = tmp.with_name(tmp.name + ".old")
                with contextlib.suppress(OSError):
                    os.link(target, candidate)  # a hard link keeps the old content without copying it
                    backup = candidate
            try:
                os.replace(tmp, target)
            except OSError:
                if backup is not None:
                    backup.unlink(missing_ok=True)
                raise
            done.append((target, backup, existed))
    except OSError as exc:
        failed = staged[len(done)][0]
        for target, backup, existed in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                elif not existed:
                    target.unlink()
        raise OutputError(WRITE_FAILED.format(path=str(failed), reason=exc.strerror or exc)) from exc
    finally:
        for _target, backup, _existed in done:
            if backup is not None:
                backup.unlink(missing_ok=True)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Serialise ``data`` as indented JSON and write it atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
