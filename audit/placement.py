"""Loading a model larger than one device: ``device_map``, ``dtype`` and low-memory loading through ``accelerate``.

With ``device_map="auto"`` transformers (through accelerate) places each layer on a GPU, the CPU or
disk, within ``max_memory``, and loads the checkpoint shard by shard instead of building a full
copy in memory first. Hooks move activations between devices, so the target's operations only
need to put inputs where the input embeddings are (:func:`input_device`).
"""

from __future__ import annotations

import collections
import os
import tempfile
from typing import Any

import torch

from audit.errors import ConfigError, ModelLoadError

__all__ = ["ACCELERATE_MISSING", "BAD_DTYPE", "DTYPES", "describe", "input_device", "placement_kwargs"]

DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
BAD_DTYPE = "dtype must be one of {choices}, got {dtype!r}. Pass --dtype bfloat16, for example, or omit it for float32."
BAD_DEVICE_MAP = ("device_map must be 'auto', 'balanced', 'balanced_low_0', 'sequential' or a mapping of module "
                  "names to devices, got {value!r}. Pass --device-map auto.")
ACCELERATE_MISSING = ("device_map={value!r} places layers with the 'accelerate' package, which is not installed. "
                      "Run: pip install accelerate")
_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def placement_kwargs(*, device_map: Any = None, dtype: str | None = None, max_memory: Any = None,
                     offload_folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments for these placement settings (checked first)."""
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        if dtype not in DTYPES:
            raise ConfigError(BAD_DTYPE.format(choices=list(DTYPES), dtype=dtype))
        kwargs["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ConfigError("max_memory and offload_folder only apply with device_map. Pass --device-map auto too.")
        return kwargs
    if not (isinstance(device_map, dict) or device_map in _STRATEGIES):
        raise ConfigError(BAD_DEVICE_MAP.format(value=device_map))
    try:
        import accelerate  # noqa: F401
    except ImportError:
        raise ModelLoadError(ACCELERATE_MISSING.format(value=device_map)) from None
    kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = dict(max_memory)
    # Layers that fit on no device go to disk; without a folder accelerate refuses such a map.
    kwargs["offload_folder"] = os.fspath(offload_folder) if offload_folder is not None else tempfile.mkdtemp(
        prefix="rai-audit-offload-")
    return kwargs


def input_device(model: Any, fallback: torch.device) -> torch.device:
    """Where inputs must go: the input embeddings' device (the CPU when they were offloaded to disk)."""
    if not getattr(model, "hf_device_map", None):
        return fallback
    weight = model.get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def describe(model: Any) -> dict[str, Any] | None:
    """How many modules each device holds, for the manifest; None when the model is on one device."""
    mapping = getattr(model, "hf_device_map", None)
    if not mapping or len(set(map(str, mapping.values()))) < 1:
        return None
    counts = collections.Counter(str(v) for v in mapping.values())
    return {"modules_per_device": dict(sorted(counts.items())), "devices": sorted(counts)}
