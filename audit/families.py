"""Which Hugging Face models rai-audit can audit, told apart from their config before any weight loads.

rai-audit audits text models: a tokenizer turns text into ``input_ids`` and the model reads them.
Speech (wav2vec2, Whisper), vision (ViT) and joint image-text models (CLIP) are refused with one
line naming what was found. Some families need a word of their own: a multimodal
``*ForConditionalGeneration`` decoder (Gemma 3) is audited through its text use as a causal LM,
and ALBERT shares one set of weights across its layers.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from audit.errors import ModelLoadError

__all__ = ["NOT_A_TEXT_MODEL", "check_text_model", "check_text_model_dir", "generates_text", "shared_layers", "text_config"]

NOT_A_TEXT_MODEL = (
    "Model {model!r} is not a text model rai-audit can audit: found {found}. rai-audit audits text models "
    "that read token ids (encoders, masked LMs, causal LMs, seq2seq models and text classifiers of "
    "transformers' text task mappings). Give a text model, e.g. a BERT, GPT-2, Llama or T5 checkpoint."
)
_TEXT_MAPPINGS = (
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
)


def _text_model_types() -> set[str]:
    from transformers.models.auto import modeling_auto

    return {name for mapping in _TEXT_MAPPINGS for name in getattr(modeling_auto, mapping, {})}


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def _main_inputs(config: Any) -> dict[str, str]:
    """Each architecture named in the config with the input its class reads first (``input_ids`` for text)."""
    import transformers

    found = {}
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            found[arch] = str(getattr(cls, "main_input_name", "input_ids"))
    return found


def check_text_model(config: Any, *, model_id: str) -> None:
    """Refuse a model that does not read text: its architecture reads ``pixel_values``,
    ``input_values`` or ``input_features``, or its model type has no text task in transformers.

    Examples
    --------
    >>> from transformers import ViTConfig
    >>> from audit.families import check_text_model
    >>> check_text_model(ViTConfig(architectures=["ViTForImageClassification"]), model_id="vit")
    Traceback (most recent call last):
    ...
    audit.errors.ModelLoadError: Model 'vit' is not a text model rai-audit can audit: found model type 'vit', \
architecture ViTForImageClassification reading pixel_values (images). rai-audit audits text models ...
    """
    model_type = str(getattr(config, "model_type", "") or "")
    readers = _main_inputs(config)
    non_text = {arch: name for arch, name in readers.items() if name != "input_ids"}
    # A model type transformers does not know (custom code, auto_map) is left to the loader and --trust-remote-code.
    if not non_text and (model_type not in _known_model_types() or model_type in _text_model_types()):
        return
    what = {"pixel_values": "images", "input_values": "audio waveforms", "input_features": "audio features"}
    if non_text:
        detail = ", ".join(f"architecture {arch} reading {name} ({what.get(name, 'not text')})"
                           for arch, name in non_text.items())
    else:
        archs = ", ".join(readers) or "none named"
        detail = f"architecture(s) {archs}, a model type with no text task in transformers"
        if getattr(config, "vision_config", None) is not None:
            detail += " (a joint image-text model)"
    raise ModelLoadError(NOT_A_TEXT_MODEL.format(model=model_id, found=f"model type {model_type!r}, {detail}"))


def check_text_model_dir(path: Path, *, model_id: str) -> None:
    """:func:`check_text_model` on a directory's ``config.json``, before its weights or tokenizer are looked at
    (a ViT directory has no tokenizer, and saying so would hide what it is). An unreadable config
    is left to the loader's own message."""
    try:
        raw = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    if isinstance(raw, dict):
        check_text_model(SimpleNamespace(**{k: raw.get(k) for k in ("model_type", "architectures", "vision_config")}),
                         model_id=model_id)


def generates_text(config: Any) -> bool:
    """True for a decoder-only ``*ForConditionalGeneration`` (Gemma 3): transformers loads it as a causal LM.

    Examples
    --------
    >>> from transformers import Gemma3Config
    >>> from audit.families import generates_text
    >>> generates_text(Gemma3Config(architectures=["Gemma3ForConditionalGeneration"]))
    True
    """
    from transformers.models.auto import modeling_auto

    archs = getattr(config, "architectures", None) or []
    return (not getattr(config, "is_encoder_decoder", False)
            and any(a.endswith("ForConditionalGeneration") for a in archs)
            and getattr(config, "model_type", None) in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def text_config(config: Any) -> Any:
    """The config that describes the text layers (a multimodal config keeps them in ``text_config``)."""
    inner = getattr(config, "text_config", None)
    return inner if inner is not None and getattr(config, "num_hidden_layers", None) is None else config


def shared_layers(config: Any) -> int | None:
    """How many distinct layer weight sets serve all the layers, when fewer than the layers (ALBERT), else None.

    Examples
    --------
    >>> from transformers import AlbertConfig, BertConfig
    >>> from audit.families import shared_layers
    >>> shared_layers(AlbertConfig(num_hidden_layers=4)), shared_layers(BertConfig())
    (1, None)
    """
    groups = getattr(config, "num_hidden_groups", None)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(groups, int) and isinstance(layers, int) and groups < layers:
        return groups
    return None
