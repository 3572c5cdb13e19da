"""The chain of training steps behind a model, and whether a DP guarantee still holds after it.

Every trainer (``train-dp``, ``federate``, each ``debias`` technique) appends one entry to the
ordered list ``records["chain"]`` of ``rai_audit_record.json``: the step, its technique, a keyed
fingerprint of the user data it read (``None`` when it read none or could not tell), whether it
was differentially private, and when it ran. :func:`assess_guarantees` reads the whole chain when
a target loads and sets, on every DP section, ``guarantee_holds`` and ``voided_by``.

Post-processing keeps a DP guarantee: a step that reads only the model and public data (a
projection fitted on built-in sentences) changes nothing. A step that reads the private rows
without DP, before or after the private one, voids the guarantee for those rows: the model then
carries a non-private function of them. When it cannot be told whether a step read them (a
record written before the chain existed, a step on another machine, an unknown section), the
answer is the conservative one: the guarantee is void.

Data fingerprints of private data are keyed (HMAC-SHA256 under a secret key kept outside every
model and report directory, see :func:`secret_key`): a plain hash of the training file would let
a reader who knows all rows but one test each candidate for the last row, which is exactly the
attacker differential privacy is meant to stop.
"""

from __future__ import annotations

import base64
import copy
import datetime
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "ASSESSED_FIELDS",
    "CHAIN_KEY",
    "KEY_FILE_ENV",
    "append_step",
    "assess_guarantees",
    "chain_entry",
    "data_digest",
    "key_file_path",
    "key_id",
    "secret_key",
]

CHAIN_KEY = "chain"
KEY_FILE_ENV = "RAI_AUDIT_KEY_FILE"
ASSESSED_FIELDS = ("guarantee_holds", "voided_by", "void_reasons", "guarantee_caveats", "guarantee_assessment")
_KEYED = "hmac-sha256"
_ROW_BYTES = 8
_PROJECTIONS = ("sentence-debias", "inlp")

KEY_WRITE_ERROR = ("The secret key file {path!r} cannot be created ({reason}). Set {env} to a writable path outside "
                   "every model and report directory.")
KEY_READ_ERROR = ("The secret key file {path!r} does not hold 64 hexadecimal digits. Restore it from a copy, or point "
                  "{env} at the right file (a new key cannot open what the old one sealed).")
SEEDED_NOISE = ("the DP noise and Poisson sampling were derived from the recorded seed (a record written before "
                "rai-audit drew them from operating-system entropy), so anyone holding the record and a neighbouring "
                "dataset can replay the training exactly")
SAME_DATA = "{label} read the DP training data without DP ({how})"
UNKNOWN_DATA = "{label} read user data that cannot be compared with the DP training data ({why})"
DIFFERENT_DATA = ("{label} read other user data without DP; the guarantee holds only if that data holds no row of the "
                  "DP training data under another form the fingerprints cannot match")
CLIENT_LOSSES = ("the per-round train_loss values in this record are the clients' training losses on their private "
                 "rows, sent to the server without DP: they are not covered by the client-side guarantee, which "
                 "covers the model only")
COMPOSED = ("{label} was a further private training on the same (or possibly the same) data: the total privacy loss "
            "is the composition of both guarantees, larger than this section's epsilon")


# -- the secret key ---------------------------------------------------------------------------
def key_file_path() -> Path:
    """Where the secret key lives: ``$RAI_AUDIT_KEY_FILE``, else ``$XDG_CONFIG_HOME/rai-audit/secret.key``.

    The key is the one file that must stay apart from models and reports: with it, keyed data
    fingerprints can be tested against candidate data and sealed canary secrets can be read.
    """
    explicit = os.environ.get(KEY_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(config_home).expanduser() / "rai-audit" / "secret.key"


def secret_key(*, create: bool = False) -> bytes | None:
    """The 32-byte secret key, created from ``os.urandom`` (file mode 0600) when ``create``.

    Returns ``None`` when there is no key and ``create`` is false, so readers never write files.
    """
    from audit.errors import OutputError

    path = key_file_path()
    if path.is_file():
        return _read_key(path)
    if not create:
        return None
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.is_file():  # another process created it first
            return _read_key(path)
        raise OutputError(KEY_WRITE_ERROR.format(path=str(path), reason="a file is in the way", env=KEY_FILE_ENV)) from None
    except OSError as exc:
        raise OutputError(KEY_WRITE_ERROR.format(path=str(path), reason=exc.strerror or exc, env=KEY_FILE_ENV)) from None
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(os.urandom(32).hex() + "\n")
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    from audit.errors import ConfigError

    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(KEY_READ_ERROR.format(path=str(path), env=KEY_FILE_ENV))
    return key


def key_id(key: bytes) -> str:
    return hmac.new(key, b"rai-audit key id", hashlib.sha256).hexdigest()[:16]


def data_digest(texts: Iterable[str], *, create_key: bool = True) -> dict[str, Any] | None:
    """A keyed, order- and format-independent digest of the rows ``texts``, or ``None`` without a key.

    ``fingerprint`` identifies the set of rows; ``rows`` holds an 8-byte keyed digest of each
    distinct row (base64), so a later step can count how many rows it shares with an earlier one
    even when the file was renamed, re-ordered, converted or cut. Without the key both are
    pseudo-random strings: they reveal nothing about the rows. ``create_key`` creates the key
    when there is none (a trainer); a reader passes ``False`` and gets ``None`` instead.
    """
    key = secret_key(create=create_key)
    if key is None:
        return None
    digests = sorted({hmac.new(key, str(t).encode("utf-8"), hashlib.sha256).digest()[:_ROW_BYTES] for t in texts})
    joined = b"".join(digests)
    return {"fingerprint": f"{_KEYED}:{key_id(key)}:" + hmac.new(key, joined, hashlib.sha256).hexdigest(),
            "n_rows": len(digests), "rows": base64.b64encode(joined).decode("ascii")}


# -- writing the chain ------------------------------------------------------------------------
def chain_entry(*, step: str, technique: str, digest: Mapping[str, Any] | None, uses_user_data: bool,
                private: bool, section: str | None = None) -> dict[str, Any]:
    """One entry of ``records["chain"]``.

    Parameters
    ----------
    step : str
        The record section the step wrote (``"dp"``, ``"federated"``, ``"debiasing"``).
    technique : str
        ``"dp-sgd"``, ``"fedavg"``, ``"cda"``, ``"sentence-debias"``, ...
    digest : mapping, optional
        :func:`data_digest` of the user rows the step read; ``None`` when it read none, or when
        no key was available (then a later comparison cannot tell, and assumes the worst).
    uses_user_data : bool
        Whether the step read any user data at all.
    private : bool
        Whether that reading was covered by a DP guarantee.
    """
    return {
        "step": step, "section": section or step, "technique": technique,
        "uses_user_data": bool(uses_user_data),
        "data_fingerprint": digest.get("fingerprint") if digest else None,
        "data_rows": dict(digest) if digest else None,
        "private": bool(private),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def append_step(records: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``records`` with ``entry`` appended to the chain and load-time assessments removed."""
    out = copy.deepcopy(dict(records))
    for section in out.values():
        if isinstance(section, dict):
            for name in ASSESSED_FIELDS:
                section.pop(name, None)
    chain = out.get(CHAIN_KEY)
    out[CHAIN_KEY] = [*(chain if isinstance(chain, list) else []), dict(entry)]
    return out


# -- reading the chain ------------------------------------------------------------------------
def _label(entry: Mapping[str, Any]) -> str:
    return f"{entry.get('step', '?')} ({entry.get('technique', '?')})"


def _nested(section: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    """``[oldest, ..., section]``, following ``earlier`` / ``earlier_dp`` links or a ``previous`` list."""
    if key == "previous":
        earlier = section.get("previous")
        older = [dict(e) for e in earlier if isinstance(e, dict)] if isinstance(earlier, list) else []
        return [*older, dict(section)]
    inner = section.get(key)
    return [*(_nested(inner, key) if isinstance(inner, dict) else []), dict(section)]


def _plain_fingerprint(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _clean(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A chain entry read from disk, with every field the assessment uses in its expected type."""
    out = dict(entry)
    out["step"] = str(out.get("step", "?"))
    out["section"] = str(out.get("section") or out["step"])
    out["technique"] = str(out.get("technique", "?"))
    out["data_fingerprint"] = _plain_fingerprint(out.get("data_fingerprint"))
    out["uses_user_data"] = out.get("uses_user_data") is not False  # unknown counts as "read user data"
    out["private"] = out.get("private") is True
    return out


def _infer(name: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """A conservative chain entry for a step recorded without one."""
    entry = {"step": name, "section": name, "inferred": True, "data_rows": None}
    if name == "dp":
        data = section.get("dataset") if isinstance(section.get("dataset"), Mapping) else {}
        return {**entry, "technique": "dp-sgd", "private": True, "uses_user_data": True,
                "data_fingerprint": _plain_fingerprint(data.get("fingerprint"))}
    if name == "federated":
        data = section.get("dataset") if isinstance(section.get("dataset"), Mapping) else {}
        return {**entry, "technique": str(section.get("strategy", "federated")), "uses_user_data": True,
                "private": isinstance(section.get("client_dp"), Mapping),
                "data_fingerprint": _plain_fingerprint(data.get("fingerprint"))}
    if name == "debiasing":
        data = section.get("data") if isinstance(section.get("data"), Mapping) else {}
        technique = str(section.get("technique", "?"))
        builtin = technique in _PROJECTIONS and data.get("path") == "built-in templates" and not data.get("fingerprint")
        return {**entry, "technique": technique, "private": False, "uses_user_data": not builtin,
                "data_fingerprint": _plain_fingerprint(data.get("fingerprint"))}
    return {**entry, "technique": "unknown", "private": False, "uses_user_data": True, "data_fingerprint": None}


def _entries(records: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chain, plus an inferred entry for every recorded step the chain does not list."""
    chain = [_clean(e) for e in records[CHAIN_KEY] if isinstance(e, Mapping)] \
        if isinstance(records.get(CHAIN_KEY), list) else []
    inferred: list[dict[str, Any]] = []
    links = {"dp": "earlier_dp", "federated": "earlier", "debiasing": "previous"}
    for name, section in records.items():
        if name == CHAIN_KEY or not isinstance(section, Mapping):
            continue
        steps = _nested(section, links[name]) if name in links else [dict(section)]
        listed = sum(1 for e in chain if e.get("section", e.get("step")) == name)
        inferred += [_infer(name, s) for s in steps[: max(0, len(steps) - listed)]]
    return inferred + chain


def _normalise(fingerprint: str | None, key: bytes | None) -> str | None:
    """Keyed fingerprints stay; a plain one (older records) is keyed with the local key when there is one."""
    if fingerprint is None or fingerprint.startswith(_KEYED + ":") or key is None:
        return fingerprint
    return f"{_KEYED}-plain:{key_id(key)}:" + hmac.new(key, fingerprint.encode(), hashlib.sha256).hexdigest()


def _rows(entry: Mapping[str, Any]) -> set[bytes] | None:
    rows = entry.get("data_rows")
    if not isinstance(rows, Mapping) or not isinstance(rows.get("rows"), str):
        return None
    try:
        raw = base64.b64decode(rows["rows"], validate=True)
    except ValueError:
        return None
    return {raw[i:i + _ROW_BYTES] for i in range(0, len(raw), _ROW_BYTES)}


def _same_data(guarded: Mapping[str, Any], other: Mapping[str, Any], key: bytes | None) -> tuple[str, str]:
    """("same" | "different" | "unknown", why) for the data of two chain entries."""
    a, b = _normalise(guarded.get("data_fingerprint"), key), _normalise(other.get("data_fingerprint"), key)
    if a is None or b is None:
        return "unknown", "no data fingerprint was recorded for " + ("the DP step" if a is None else "this step")
    if a.split(":")[:2] != b.split(":")[:2]:
        return "unknown", "its fingerprint was made with another key or scheme, or the key is not on this machine"
    if a == b:
        return "same", "same data fingerprint"
    rows_a, rows_b = _rows(guarded), _rows(other)
    if rows_a is not None and rows_b is not None:
        shared = len(rows_a & rows_b)
        return ("same", f"{shared} of its rows are rows of the DP training data") if shared else ("different", "")
    return "different", ""


def _assess(guarded: Mapping[str, Any], others: list[dict[str, Any]], section: Mapping[str, Any],
            key: bytes | None) -> dict[str, Any]:
    reasons, caveats, voided_by = [], [], None
    if guarded.get("step") == "dp" and "noise_rng" not in section and section.get("secure_rng") is not True:
        reasons.append(SEEDED_NOISE)
        voided_by = "dp:seeded-noise"
    for other in others:
        if not other.get("uses_user_data"):
            continue
        verdict, why = _same_data(guarded, other, key)
        label = _label(other) + (" (inferred from a record written without a chain)" if other.get("inferred") else "")
        if other.get("private"):
            if verdict != "different":
                caveats.append(COMPOSED.format(label=label))
        elif verdict == "same":
            reasons.append(SAME_DATA.format(label=label, how=why))
        elif verdict == "unknown":
            reasons.append(UNKNOWN_DATA.format(label=label, why=why))
        else:
            caveats.append(DIFFERENT_DATA.format(label=label))
        if reasons and voided_by is None:
            voided_by = f"{other.get('step')}:{other.get('technique')}"
    return {"guarantee_holds": not reasons, "voided_by": voided_by, "void_reasons": reasons,
            "guarantee_caveats": caveats, "guarantee_assessment": "from the chain of training records"}


def assess_guarantees(records: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``records`` in which every DP guarantee says whether it still holds.

    Sets ``guarantee_holds`` (bool), ``voided_by`` (``"step:technique"`` of the first step that
    voids it, or ``None``), ``void_reasons`` and ``guarantee_caveats`` (sentences) on the ``dp``
    section and on ``federated.client_dp``, ``federated.central_dp`` and ``federated.local_dp``. Nothing is read or written on disk except the secret
    key, when it exists.

    Examples
    --------
    >>> from audit.records import assess_guarantees
    >>> old = {"dp": {"epsilon": 1.0, "delta": 1e-5, "noise_rng": "os-entropy",
    ...               "dataset": {"fingerprint": "sha256:ab"}},
    ...        "debiasing": {"technique": "cda", "data": {"path": "train.csv", "fingerprint": "sha256:ab"}}}
    >>> out = assess_guarantees(old)["dp"]
    >>> out["guarantee_holds"], out["voided_by"]
    (False, 'debiasing:cda')
    """
    out = copy.deepcopy(dict(records))
    entries = _entries(out)
    key = secret_key(create=False)
    for position, entry in enumerate(entries):
        name = entry.get("section", entry.get("step"))
        section = out.get(name)
        if not isinstance(section, dict) or not entry.get("private"):
            continue
        if name == "dp" and entry is _last(entries, "dp"):
            section.update(_assess(entry, entries[:position] + entries[position + 1:], section, key))
        elif name == "federated" and entry is _last(entries, "federated"):
            rounds = section.get("rounds") if isinstance(section.get("rounds"), list) else []
            for kind in FEDERATED_GUARANTEES:
                if isinstance(section.get(kind), dict):
                    assessed = _assess(entry, entries[:position] + entries[position + 1:], section, key)
                    if any(isinstance(r, Mapping) and r.get("train_loss") is not None for r in rounds):
                        assessed["guarantee_caveats"].append(CLIENT_LOSSES)
                    section[kind].update(assessed)
    return out


#: The federated record's guarantee sections: per-example DP-SGD on each client, Flower's central
#: DP (client-level, server- or client-side clipping) and Flower's LocalDpMod.
FEDERATED_GUARANTEES = ("client_dp", "central_dp", "local_dp")


def _last(entries: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    matching = [e for e in entries if e.get("section", e.get("step")) == name]
    return matching[-1] if matching else None
