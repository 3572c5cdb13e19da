"""What exactly is being audited: the model fingerprint, checkpoint validation and symlink checks.

The fingerprint covers everything in a model directory that changes what the audit measures:
the tensors (by content, so re-sharding identical weights keeps it), ``config.json`` and
``generation_config.json`` (as canonical JSON), the tokenizer files, rai-audit's own artefacts
(projection, group thresholds, training record) and any Python code shipped with the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import ModelLoadError

__all__ = [
    "ModelFingerprint",
    "canonical_json_digest",
    "check_links",
    "file_digest",
    "fingerprint_model",
    "tensor_fingerprint",
    "tensors_digest",
    "weight_files",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAME = "pytorch_model.bin"
PICKLE_INDEX_NAME = "pytorch_model.bin.index.json"
#: rai-audit's own files beside a model (see ``audit.target``); never loaded as weights.
ARTEFACTS = {"projection": "rai_audit_projection.safetensors", "thresholds": "rai_audit_thresholds.json",
             "record": "rai_audit_record.json"}
_TOKENIZER_PREFIXES = ("tokenizer", "special_tokens_map", "added_tokens", "vocab", "merges", "chat_template")
_TOKENIZER_SUFFIXES = (".model", ".tiktoken")
#: Bytes per element of each safetensors dtype (sub-byte float formats are not size-checked).
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
             "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_MAX_HEADER = 100 * 1024 * 1024
_CHUNK = 1 << 20
_DIGESTS: dict[tuple[Any, ...], str] = {}  # file_digest's memo of unchanged files
_SETTLED_NS = 3_000_000_000  # a file changed less than 3 s ago is hashed every time

BAD_SAFETENSORS = ("Weight file {file!r} is not a valid safetensors file ({why}). Re-save the model with "
                   "model.save_pretrained(dir) or restore the file from its source.")
BAD_INDEX = ("Shard index {file!r} cannot be used ({why}). Re-save the model with model.save_pretrained(dir).")
OUTSIDE_LINK = ("{file!r} in model directory {root!r} is a symlink to {target!r}, outside the model directory; "
                "its content would reach the reports unchecked. Copy the file into the directory or remove the link.")


@dataclass(frozen=True)
class ModelFingerprint:
    """The fingerprint of a model directory and the digests it is made of.

    ``fingerprint`` is ``sha256:`` over the sorted ``parts`` (component name -> digest);
    ``files`` maps every file that went into it to the sha256 of its bytes.
    """

    fingerprint: str
    parts: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)

    def with_part(self, name: str, digest: str) -> ModelFingerprint:
        """A copy with one more component (e.g. the newly initialised tensors)."""
        parts = {**self.parts, name: digest}
        return ModelFingerprint(fingerprint=_combine(parts), parts=parts, files=dict(self.files))


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _combine(parts: Mapping[str, str]) -> str:
    return _sha256("".join(f"{name}={parts[name]}\n" for name in sorted(parts)).encode("utf-8"))


def file_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:`` of a file's bytes.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.provenance import file_digest
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = f.write_bytes(b"")
    >>> file_digest(f)[:15]
    'sha256:e3b0c442'
    """
    stat = os.stat(path)
    # The same unchanged file is hashed once per process (a run digests a NER model directory for its
    # cache key and again for its record). "Unchanged": same inode, size, modification and change
    # times, and last changed well before this look, so a write within the file system's timestamp
    # resolution cannot hide behind an equal timestamp (git's "racy" rule).
    key = (os.path.realpath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    value = "sha256:" + digest.hexdigest()
    if time.time_ns() - stat.st_ctime_ns > _SETTLED_NS:
        if len(_DIGESTS) >= 4096:
            _DIGESTS.clear()
        _DIGESTS[key] = value
    return value


def directory_digest(root: str | os.PathLike[str]) -> str:
    """``sha256:`` over every regular file under ``root``: relative path and content digest.

    For directories a probe reads besides the audited model (a NER model, a recognizer folder):
    any edited, added, removed or renamed file changes the digest. Symbolic links are refused
    by :func:`check_links` when they leave ``root``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.provenance import directory_digest
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("x")
    >>> before = directory_digest(d); _ = (d / "a.txt").write_text("y")
    >>> before == directory_digest(d)
    False
    """
    base = Path(root)
    files = sorted(p for p in base.rglob("*") if p.is_file())
    check_links(base, [str(p.relative_to(base)) for p in files])
    lines = [f"{p.relative_to(base).as_posix()}\0{file_digest(p)}\n" for p in files]
    return _sha256("".join(lines).encode("utf-8"))


def canonical_json_digest(path: str | os.PathLike[str]) -> str:
    """``sha256:`` of a JSON file re-serialised with sorted keys and no whitespace.

    Formatting and key order do not change it; any value does. A file that is not JSON is
    hashed as bytes (loading it will then fail with its own message).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.provenance import canonical_json_digest
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a.json").write_text('{"b": 1, "a": 2}'); _ = (d / "b.json").write_text('{"a":2,\\n "b":1}')
    >>> canonical_json_digest(d / "a.json") == canonical_json_digest(d / "b.json")
    True
    """
    raw = Path(path).read_bytes()
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _sha256(raw)
    return _sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


# -- symlinks -------------------------------------------------------------------------------
def _hub_blob_store(root: Path) -> Path | None:
    """``.../models--org--name/blobs`` when ``root`` is a snapshot of the Hugging Face cache."""
    if root.parent.name == "snapshots" and root.parent.parent.name.startswith(("models--", "datasets--")):
        return (root.parent.parent / "blobs").resolve()
    return None


def check_links(root: str | os.PathLike[str], names: Iterable[str] | None = None) -> None:
    """Refuse a file in ``root`` read through a symlink that leaves it.

    A link may point anywhere inside ``root``, or, when ``root`` is a snapshot of the Hugging
    Face cache (``models--org--name/snapshots/<rev>``), into that repository's own blob store
    (``models--org--name/blobs``): the Hub cache is made of such links. ``names`` defaults to
    every entry of ``root``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.provenance import check_links
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "record.json").symlink_to("/etc/hostname")
    >>> check_links(d)
    Traceback (most recent call last):
    ...
    audit.errors.ModelLoadError: 'record.json' in model directory ... is a symlink to '/etc/hostname', ...
    """
    base = Path(root).resolve()
    blobs = _hub_blob_store(base)
    entries = [base / n for n in names] if names is not None else sorted(base.iterdir())
    for entry in entries:
        if not entry.is_symlink():
            continue
        target = entry.resolve()
        inside = target == base or base in target.parents
        if inside or (blobs is not None and target.parent == blobs):
            continue
        raise ModelLoadError(OUTSIDE_LINK.format(file=entry.name, root=str(base), target=str(target)))


# -- weights --------------------------------------------------------------------------------
def _shards(root: Path, index_name: str) -> list[Path]:
    index = root / index_name
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(BAD_INDEX.format(file=str(index), why=f"{type(exc).__name__}: {exc}")) from None
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise ModelLoadError(BAD_INDEX.format(file=str(index), why=f"shard name {name!r} is not a file name"))
        if not (root / name).is_file():
            raise ModelLoadError(BAD_INDEX.format(file=str(index), why=f"shard {name!r} is missing"))
    return [root / n for n in names]


def weight_files(root: str | os.PathLike[str], *, use_safetensors: bool,
                 explicit: str | None = None) -> tuple[list[Path], list[Path]]:
    """The weight files transformers will load from ``root``, and the index files naming them.

    Follows ``from_pretrained``'s own order: the file named by the config's
    ``transformers_weights``, then ``model.safetensors``, then the sharded index (or their
    ``pytorch_model.bin`` counterparts without safetensors).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.provenance import weight_files
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "model.safetensors").write_bytes(b"")
    >>> [p.name for p in weight_files(d, use_safetensors=True)[0]]
    ['model.safetensors']
    """
    base = Path(root)
    single, index = (SAFE_WEIGHTS_NAME, SAFE_INDEX_NAME) if use_safetensors else (PICKLE_WEIGHTS_NAME, PICKLE_INDEX_NAME)
    if explicit is not None:
        if Path(explicit).name != explicit or not (base / explicit).is_file():
            raise ModelLoadError(f"config.json names the weight file {explicit!r} (transformers_weights), which is not "
                                 f"a file in {str(base)!r}. Fix transformers_weights or re-save the model.")
        if explicit.endswith(".index.json"):
            return _shards(base, explicit), [base / explicit]
        return [base / explicit], []
    if (base / single).is_file():
        return [base / single], []
    if (base / index).is_file():
        return _shards(base, index), [base / index]
    present = sorted(p.name for p in base.iterdir() if p.is_file() and p.name.endswith((".safetensors", ".bin"))
                     and p.name not in ARTEFACTS.values())
    raise ModelLoadError(f"Model directory {str(base)!r} has no {single} or {index} (weight files found: "
                         f"{present or 'none'}). Save the model with model.save_pretrained(dir).")


def _read_header(path: Path) -> tuple[dict[str, Any], int, int]:
    """The safetensors header of ``path`` (tensor entries only), its length and the file size, validated."""
    size = path.stat().st_size
    file = str(path)
    if size < 8:
        why = "the file is empty" if size == 0 else f"only {size} bytes"
        raise ModelLoadError(BAD_SAFETENSORS.format(file=file, why=why))
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(size - 8, _MAX_HEADER):
            raise ModelLoadError(BAD_SAFETENSORS.format(
                file=file, why=f"header of {length} bytes in a file of {size} bytes: truncated or not safetensors"))
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise ModelLoadError(BAD_SAFETENSORS.format(file=file, why=f"unreadable header: {exc}")) from None
    header.pop("__metadata__", None)
    data_size = size - 8 - length
    spans = []
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
            if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
                raise ValueError("bad data_offsets")
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(BAD_SAFETENSORS.format(file=file, why=f"tensor {name!r} is malformed ({exc})")) from None
        itemsize = _ITEMSIZE.get(str(dtype))
        if itemsize is not None and (end - begin) != math.prod(shape) * itemsize:
            raise ModelLoadError(BAD_SAFETENSORS.format(
                file=file, why=f"tensor {name!r} has {end - begin} bytes for shape {shape} of {dtype}"))
        spans.append((begin, end))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            break
        position = end
    if position != data_size:
        raise ModelLoadError(BAD_SAFETENSORS.format(
            file=file, why=f"tensor data covers {position} of {data_size} bytes: truncated, padded or overlapping"))
    return header, length, size


def _hash_safetensors(path: Path, tensors: dict[str, str]) -> str:
    """Hash one safetensors file in a single pass: its bytes, and each tensor's name, dtype, shape and bytes."""
    header, length, _ = _read_header(path)
    whole = hashlib.sha256()
    with open(path, "rb") as handle:
        whole.update(handle.read(8 + length))
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if name in tensors:
                raise ModelLoadError(BAD_SAFETENSORS.format(file=str(path), why=f"tensor {name!r} appears in two shards"))
            begin, end = entry["data_offsets"]
            one = hashlib.sha256(f"{name}\0{entry['dtype']}\0{list(map(int, entry['shape']))}\0".encode())
            remaining = end - begin
            while remaining:
                chunk = handle.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ModelLoadError(BAD_SAFETENSORS.format(file=str(path), why="the file ends inside a tensor"))
                whole.update(chunk)
                one.update(chunk)
                remaining -= len(chunk)
            tensors[name] = one.hexdigest()
    return "sha256:" + whole.hexdigest()


def tensor_fingerprint(paths: Sequence[str | os.PathLike[str]]) -> tuple[str, dict[str, str]]:
    """Fingerprint of the tensors in safetensors files, independent of how they are sharded.

    Each tensor contributes ``sha256(name \\0 dtype \\0 shape \\0 bytes)``; the fingerprint is
    ``sha256`` over ``name \\0 digest \\n`` lines in name order. Returns it with each file's
    byte digest. A truncated, empty or malformed file raises :class:`ModelLoadError`.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> from safetensors.torch import save_file
    >>> from audit.provenance import tensor_fingerprint
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> save_file({"a": torch.ones(2), "b": torch.zeros(3)}, str(d / "one.safetensors"))
    >>> save_file({"a": torch.ones(2)}, str(d / "x.safetensors")); save_file({"b": torch.zeros(3)}, str(d / "y.safetensors"))
    >>> tensor_fingerprint([d / "one.safetensors"])[0] == tensor_fingerprint([d / "x.safetensors", d / "y.safetensors"])[0]
    True
    """
    tensors: dict[str, str] = {}
    files = {Path(p).name: _hash_safetensors(Path(p), tensors) for p in paths}
    outer = hashlib.sha256()
    for name in sorted(tensors):
        outer.update(f"{name}\0{tensors[name]}\n".encode())
    return "sha256:" + outer.hexdigest(), files


def _tokenizer_file(name: str) -> bool:
    return name.startswith(_TOKENIZER_PREFIXES) or name.endswith(_TOKENIZER_SUFFIXES)


def _files_digest(paths: Iterable[Path], files: dict[str, str]) -> str:
    lines = []
    for path in sorted(paths, key=lambda p: p.name):
        files[path.name] = file_digest(path)
        lines.append(f"{path.name}\0{files[path.name]}\n")
    return _sha256("".join(lines).encode("utf-8"))


def fingerprint_model(root: str | os.PathLike[str], weights: Sequence[Path], *, safetensors: bool,
                      indexes: Sequence[Path] = ()) -> ModelFingerprint:
    """Fingerprint everything in ``root`` that changes the audited model's behaviour.

    Components (``parts``): ``weights`` (tensor contents for safetensors, file digests for
    pickle weights), ``config`` and ``generation_config`` (canonical JSON), ``tokenizer``
    (every tokenizer file's bytes), ``projection`` (bytes), ``thresholds`` and ``record``
    (canonical JSON) and ``code`` (``*.py`` files), each only when present. The shard index
    only maps names to files, so it is kept in ``files`` but not in the fingerprint.

    Examples
    --------
    >>> from audit.provenance import fingerprint_model, weight_files
    >>> from audit.target import default_model_path
    >>> weights, _ = weight_files(default_model_path(), use_safetensors=True)
    >>> fp = fingerprint_model(default_model_path(), weights, safetensors=True)
    >>> sorted(fp.parts), "model.safetensors" in fp.files
    (['config', 'tokenizer', 'weights'], True)
    """
    base = Path(root)
    files: dict[str, str] = {}
    parts: dict[str, str] = {}
    if safetensors:
        digest, by_file = tensor_fingerprint(weights)
        parts["weights"] = "tensors:" + digest
        files.update(by_file)
    else:
        parts["weights"] = "files:" + _files_digest(weights, files)
    for index in indexes:
        files[index.name] = file_digest(index)
    for part, name in (("config", "config.json"), ("generation_config", "generation_config.json"),
                       ("thresholds", ARTEFACTS["thresholds"]), ("record", ARTEFACTS["record"])):
        if (base / name).is_file():
            files[name] = file_digest(base / name)
            parts[part] = canonical_json_digest(base / name)
    if (base / ARTEFACTS["projection"]).is_file():
        parts["projection"] = files[ARTEFACTS["projection"]] = file_digest(base / ARTEFACTS["projection"])
    regular = [p for p in base.iterdir() if p.is_file()]
    tokenizer = [p for p in regular if _tokenizer_file(p.name)]
    if tokenizer:
        parts["tokenizer"] = _files_digest(tokenizer, files)
    code = [p for p in regular if p.suffix == ".py"]
    if code:
        parts["code"] = _files_digest(code, files)
    return ModelFingerprint(fingerprint=_combine(parts), parts=parts, files=dict(sorted(files.items())))


def tensors_digest(named: Iterable[tuple[str, Any]]) -> str:
    """``sha256`` over torch tensors' names, dtypes, shapes and bytes, in name order (for new weights)."""
    import torch

    outer = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        one = hashlib.sha256(f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode())
        one.update(data)
        outer.update(f"{name}\0{one.hexdigest()}\n".encode())
    return "sha256:" + outer.hexdigest()
