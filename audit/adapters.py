"""PEFT adapters (LoRA and the other ``peft`` methods): a directory with ``adapter_config.json`` and no
``config.json`` is loaded onto its base model and audited as the adapted model.

The base comes from ``base_model_name_or_path`` in ``adapter_config.json``, or from ``base_model``
(``--base-model PATH``) when that name cannot be reached offline. The adapter is merged into the base
weights in memory (``merge_and_unload``), so every probe runs the adapted model through the same code
as any other model; the files on disk are not changed. The fingerprint covers the base model's
fingerprint and the adapter's tensors, config and tokenizer, and both are recorded in the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.errors import ModelLoadError

__all__ = ["ADAPTER_CONFIG", "NO_BASE_MODEL", "PEFT_MISSING", "adapter_kind", "apply_adapter", "read_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
NO_BASE_MODEL = ("Adapter {adapter!r} names no base model (base_model_name_or_path is {base!r}) and none was given. "
                 "Pass --base-model PATH (base_model=...) with the model the adapter was trained on.")
BASE_MISSING = ("Adapter {adapter!r} was trained on base model {base!r}, which is not a local directory and cannot be "
                "fetched offline ({why}). Pass --base-model PATH with a local copy of that model.")
PEFT_MISSING = ("Directory {adapter!r} holds a PEFT adapter ({config}), and loading it needs the 'peft' package, "
                "which is not installed. Run: pip install peft")
BAD_ADAPTER = ("Adapter {adapter!r} cannot be applied to base model {base!r} ({why}). Check that --base-model is the "
               "model the adapter was trained on.")
_TASK_KINDS = {"CAUSAL_LM": "causal-lm", "SEQ_CLS": "sequence-classification", "SEQ_2_SEQ_LM": "seq2seq",
               "FEATURE_EXTRACTION": "encoder"}


def read_adapter(path: Path) -> dict[str, Any] | None:
    """The adapter config of ``path`` when it is an adapter directory (no ``config.json``), else None."""
    file = Path(path) / ADAPTER_CONFIG
    if (Path(path) / "config.json").is_file() or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"Adapter config {str(file)!r} is not valid JSON ({exc}). Re-save the adapter with "
                             "model.save_pretrained(dir).") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"Adapter config {str(file)!r} holds {type(data).__name__}, not an object. Re-save the "
                             "adapter with model.save_pretrained(dir).")
    return data


def adapter_kind(adapter: dict[str, Any]) -> str | None:
    """The model kind the adapter's ``task_type`` implies, if any."""
    return _TASK_KINDS.get(str(adapter.get("task_type") or ""))


def base_model_source(adapter: dict[str, Any], *, path: Path, base_model: str | None) -> str:
    """Where the base model is loaded from: ``base_model`` if given, else the adapter's own record."""
    if base_model is not None:
        return str(base_model)
    named = adapter.get("base_model_name_or_path")
    if not isinstance(named, str) or not named.strip():
        raise ModelLoadError(NO_BASE_MODEL.format(adapter=str(path), base=named))
    return named


def _check_peft(path: Path) -> Any:
    try:
        import peft
    except ImportError:
        raise ModelLoadError(PEFT_MISSING.format(adapter=str(path), config=ADAPTER_CONFIG)) from None
    return peft


def _adapter_fingerprint(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    from audit.provenance import canonical_json_digest, file_digest, tensor_fingerprint

    parts: dict[str, str] = {"adapter_config": canonical_json_digest(path / ADAPTER_CONFIG)}
    files = {f"adapter/{ADAPTER_CONFIG}": file_digest(path / ADAPTER_CONFIG)}
    tensors = sorted(path.glob("*.safetensors"))
    pickled = sorted(path.glob("adapter_model.bin"))
    if tensors:
        digest, by_file = tensor_fingerprint(tensors)
        parts["adapter_weights"] = "tensors:" + digest
        files.update({f"adapter/{name}": d for name, d in by_file.items()})
    elif pickled:
        raise ModelLoadError(f"Adapter {str(path)!r} holds only pickle weights (adapter_model.bin); unpickling can "
                             "run arbitrary code. Re-save it with safe_serialization=True.")
    else:
        raise ModelLoadError(f"Adapter {str(path)!r} has {ADAPTER_CONFIG} but no adapter weights "
                             "(adapter_model.safetensors). Save the adapter with model.save_pretrained(dir).")
    tokenizer = [p for p in path.iterdir() if p.is_file() and p.name.startswith(("tokenizer", "vocab", "merges",
                                                                                  "special_tokens", "chat_template"))]
    if tokenizer:
        lines = []
        for p in sorted(tokenizer, key=lambda q: q.name):
            files[f"adapter/{p.name}"] = file_digest(p)
            lines.append(f"{p.name}\0{files[f'adapter/{p.name}']}\n")
        import hashlib

        parts["adapter_tokenizer"] = "sha256:" + hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()
    return parts, files


def apply_adapter(base: Any, path: Path, adapter: dict[str, Any], *, model_id: str) -> Any:
    """Merge the adapter in ``path`` into the loaded base target ``base`` and return the adapted target.

    The target keeps the base's kind, device and settings; its fingerprint combines the base
    fingerprint with the adapter's files, ``model_id``/``path`` name the adapter, and
    ``target.adapter`` records both models.
    """
    import transformers

    from audit.provenance import ModelFingerprint

    peft = _check_peft(path)
    parts, files = _adapter_fingerprint(path)
    try:
        wrapped = peft.PeftModel.from_pretrained(base.model, str(path), is_trainable=False)
        model = wrapped.merge_and_unload()
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise ModelLoadError(BAD_ADAPTER.format(adapter=str(path), base=base.model_id,
                                                why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")) from None
    model.eval()
    combined = {"base": base.fingerprint, **parts}
    fingerprint = ModelFingerprint(fingerprint="", parts=combined).with_part("base", base.fingerprint)
    base.model = model
    if "adapter_tokenizer" in parts:
        base.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    base.adapter = {
        "path": str(path), "peft_type": str(adapter.get("peft_type")), "task_type": adapter.get("task_type"),
        "fingerprint": "sha256:" + _digest(parts), "base_model_id": base.model_id, "base_path": str(base.path),
        "base_fingerprint": base.fingerprint,
    }
    base.files = {**{f"base/{k}": v for k, v in base.files.items()}, **files}
    base.fingerprint_parts = {**{f"base.{k}": v for k, v in base.fingerprint_parts.items()}, **combined}
    base.fingerprint = fingerprint.fingerprint
    base.model_id, base.path = model_id, Path(path)
    base.notes.append(f"PEFT {base.adapter['peft_type']} adapter {model_id!r} merged in memory into base model "
                      f"{base.adapter['base_model_id']!r} ({base.adapter['base_fingerprint'][:19]}...); every probe "
                      "audits the adapted model.")
    base.clear_cache()
    base._token_cache.clear()
    base._pad_id = base._pad_token_id()
    return base


def _digest(parts: dict[str, str]) -> str:
    import hashlib

    return hashlib.sha256("".join(f"{k}={parts[k]}\n" for k in sorted(parts)).encode("utf-8")).hexdigest()
