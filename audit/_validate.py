"""Checks of values handed to the public API, each failing with one line: what, what was received, what to do.

The CLI validates through :class:`~audit.config.AuditConfig`; these checks give the Python API
the same messages instead of a ``TypeError`` from deep inside torch, numpy or a renderer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from audit.errors import ConfigError, ModelLoadError

__all__ = ["check_device", "check_max_length", "check_positive_int", "check_records", "check_seed", "check_texts", "device_arg",
           "position_limit", "seed_arg"]

NO_DEVICE = ("Device {device!r} was asked for, but {reason}. Use --device cpu (device='cpu'), or 'auto' to pick "
             "the best device present.")
UNKNOWN_DEVICE = "Unknown device {device!r}. Use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
BAD_SEED = "seed must be a whole number from 0 to 2**32 - 1, got {value!r}. Pass e.g. --seed 0 (seed=0)."
MAX_LENGTH_ABOVE_POSITIONS = ("max_length {max_length} is above what {model!r} can read: it has {positions} position "
                              "embeddings. Pass --max-length {positions} or less (max_length={positions}), or omit it.")
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")
NOT_POSITIVE_INT = "{name} must be a positive integer, got {value!r}. {fix}"
TEXTS_IS_STR = ("{op}() takes a sequence of texts, got one str ({preview!r}); a str would be read as one text "
                "per character. Wrap it in a list: {op}([text]).")
TEXTS_NOT_SEQUENCE = "{op}() takes a sequence of texts (a list of str), got {kind}. Pass a list of str."
TEXT_NOT_STR = "{op}() takes texts as str; item {index} is {kind} ({preview!r}). Convert every item to str first."
RECORD_SECTION = ("Training record {source!r}: section {section!r} must be an object of fields, got {kind}. "
                  "Restore the record its training step wrote, or remove the file to audit without it.")
RECORD_FIELD = ("Training record {source!r}: field {field!r} must be {expected}, got {value!r}. "
                "Restore the record its training step wrote, or remove the file to audit without it.")

#: Fields a report reads as numbers: (section, field) -> (description, lowest, highest).
_NUMBERS: dict[tuple[str, str], tuple[str, float, float]] = {
    ("dp", "epsilon"): ("a finite number >= 0", 0.0, math.inf),
    ("dp", "delta"): ("a number in [0, 1)", 0.0, 1.0),
    ("dp", "target_epsilon"): ("a finite number >= 0", 0.0, math.inf),
    ("dp", "target_delta"): ("a number in [0, 1)", 0.0, 1.0),
    ("dp", "noise_multiplier"): ("a finite number >= 0", 0.0, math.inf),
    ("dp", "sample_rate"): ("a number in [0, 1]", 0.0, 1.0 + 1e-12),
    ("dp", "max_grad_norm"): ("a finite number >= 0", 0.0, math.inf),
    ("dp", "steps"): ("a whole number >= 0", 0.0, math.inf),
    ("dp", "epochs"): ("a finite number >= 0", 0.0, math.inf),
    ("federated", "num_rounds"): ("a whole number >= 0", 0.0, math.inf),
    ("federated", "num_clients"): ("a whole number >= 0", 0.0, math.inf),
    ("federated", "rounds_aggregated"): ("a whole number >= 0", 0.0, math.inf),
    ("federated", "proximal_mu"): ("a finite number >= 0", 0.0, math.inf),
}
#: Fields a report reads as objects or lists.
_SHAPES: dict[tuple[str, str], type] = {
    ("dp", "dataset"): Mapping, ("dp", "base_model"): Mapping, ("dp", "utility"): Mapping, ("dp", "curve"): list,
    ("federated", "rounds"): list, ("federated", "clients"): list, ("federated", "dataset"): Mapping,
    ("federated", "final"): Mapping, ("federated", "failures"): list,
}
_KNOWN_SECTIONS = ("dp", "federated", "debiasing")


def check_device(device: Any) -> None:
    """Refuse, before any model is loaded, a device that is malformed or not present on this machine."""
    import torch

    if isinstance(device, torch.device) or device == "auto":
        return
    if not isinstance(device, str):
        raise ConfigError(f"device must be a str such as 'cpu', 'cuda' or 'auto', got {device!r}. Pass one of those.")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(UNKNOWN_DEVICE.format(device=device)) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            built = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ConfigError(NO_DEVICE.format(device=device, reason=built))
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(NO_DEVICE.format(device=device, reason=f"only {count} CUDA device(s) are visible "
                                               f"(cuda:0 to cuda:{count - 1})"))
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(NO_DEVICE.format(device=device, reason="MPS (Apple GPU) is not available here"))
    elif parsed.type != "cpu":
        raise ConfigError(UNKNOWN_DEVICE.format(device=device))


def check_seed(seed: Any) -> int:
    """A seed numpy, torch and scikit-learn all accept: an int in [0, 2**32)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(BAD_SEED.format(value=seed))
    return seed


def seed_arg(text: str) -> int:
    """``argparse`` type for ``--seed``: a bad value is argparse's one-line usage error."""
    try:
        return check_seed(int(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(BAD_SEED.format(value=text)) from None


def device_arg(text: str) -> str:
    """``argparse`` type for ``--device``: an absent GPU is refused before any work."""
    try:
        check_device(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def position_limit(config: Any) -> int | None:
    """The longest input a model's position embeddings allow, from its config (object or dict)."""
    for key in _POSITION_KEYS:
        value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_max_length(model_dir: str | os.PathLike[str], max_length: Any) -> None:
    """Refuse, before any work, a ``max_length`` that is not positive or above the model's positions.

    Reads only ``config.json``; a missing or broken one is left for model loading to report.
    """
    if max_length is None:
        return
    check_positive_int("max_length", max_length, fix="Pass a token count such as --max-length 128, or omit it.")
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    positions = position_limit(config) if isinstance(config, Mapping) else None
    if positions is not None and max_length > positions:
        raise ConfigError(MAX_LENGTH_ABOVE_POSITIONS.format(max_length=max_length, model=os.fspath(model_dir),
                                                            positions=positions))


def check_positive_int(name: str, value: Any, *, optional: bool = False, fix: str = "") -> None:
    """Refuse anything but a positive ``int`` (``bool`` and ``"8"`` included); ``None`` when ``optional``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(NOT_POSITIVE_INT.format(name=name, value=value, fix=fix or f"Pass {name}=1 or more."))


def check_texts(texts: Any, *, op: str) -> list[str]:
    """``texts`` as a list of str, or a :class:`ConfigError` naming the first thing that is not one.

    Examples
    --------
    >>> from audit._validate import check_texts
    >>> check_texts(("a", "b"), op="embed")
    ['a', 'b']
    >>> try:
    ...     check_texts("abc", op="embed")
    ... except ValueError as exc:
    ...     print(str(exc).split(";")[0])
    embed() takes a sequence of texts, got one str ('abc')
    """
    if isinstance(texts, str):
        raise ConfigError(TEXTS_IS_STR.format(op=op, preview=texts[:40]))
    if isinstance(texts, (bytes, Mapping)) or not hasattr(texts, "__iter__"):
        raise ConfigError(TEXTS_NOT_SEQUENCE.format(op=op, kind=type(texts).__name__))
    items = list(texts)
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(TEXT_NOT_STR.format(op=op, index=index, kind=type(item).__name__,
                                                  preview=str(item)[:40]))
    return items


def check_records(records: Any, *, source: str) -> None:
    """Check the fields of training records that reports state as facts (epsilon, delta, rounds, ...).

    A record whose DP epsilon is ``"abc"`` must stop the audit before any probe runs, naming the
    field, rather than crash the card after every probe finished.
    """
    if not isinstance(records, Mapping):
        raise ModelLoadError(RECORD_SECTION.format(source=source, section="(top level)", kind=type(records).__name__))
    for section in _KNOWN_SECTIONS:
        if section in records and not isinstance(records[section], Mapping):
            raise ModelLoadError(RECORD_SECTION.format(source=source, section=section,
                                                       kind=type(records[section]).__name__))
    for (section, name), (expected, low, high) in _NUMBERS.items():
        record = records.get(section)
        if not isinstance(record, Mapping) or record.get(name) is None:
            continue
        value = record[name]
        whole = expected.startswith("a whole")
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
              and low <= value < high and (not whole or float(value).is_integer()))
        if not ok:
            raise ModelLoadError(RECORD_FIELD.format(source=source, field=f"{section}.{name}", expected=expected,
                                                     value=value))
    for (section, name), kind in _SHAPES.items():
        record = records.get(section)
        if isinstance(record, Mapping) and record.get(name) is not None and not isinstance(record[name], kind):
            expected = "an object" if kind is Mapping else "a list"
            raise ModelLoadError(RECORD_FIELD.format(source=source, field=f"{section}.{name}", expected=expected,
                                                     value=record[name]))
