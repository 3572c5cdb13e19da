"""Tiny random models of many Hugging Face families, built offline (hidden size 32, 2 layers), for the
architecture matrix test. Each case is saved with ``save_pretrained`` beside a tokenizer from
:mod:`tests.tiny` (WordPiece for encoders, byte-level BPE for decoders), so nothing is downloaded."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.tiny import save_bert_tokenizer, save_gpt2_tokenizer

#: A chat template in the shape instruction models ship (Jinja over ``messages``).
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")

_SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "max_position_embeddings": 128}
_DECODER = {**_SMALL, "num_key_value_heads": 2, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": None}


@dataclass(frozen=True)
class Case:
    """One family: the transformers config and model class names, their settings, and the tokenizer."""

    name: str
    config: str
    model: str
    kind: str
    tokenizer: str = "wordpiece"
    settings: dict[str, Any] = field(default_factory=dict)


def _enc(name: str, prefix: str, config: str | None = None, **settings: Any) -> Case:
    return Case(name, config or f"{prefix}Config", f"{prefix}ForMaskedLM", "masked-lm", "wordpiece",
                {**_SMALL, **settings})


def _dec(name: str, prefix: str, model: str | None = None, config: str | None = None, **settings: Any) -> Case:
    return Case(name, config or f"{prefix}Config", model or f"{prefix}ForCausalLM", "causal-lm", "bpe",
                {**_DECODER, **settings})


CASES: dict[str, Case] = {c.name: c for c in [
    _enc("bert", "Bert"),
    _enc("roberta", "Roberta", pad_token_id=0, bos_token_id=2, eos_token_id=3, max_position_embeddings=130),
    Case("distilbert", "DistilBertConfig", "DistilBertForMaskedLM", "masked-lm", "wordpiece",
         {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 128}),
    _enc("albert", "Albert", embedding_size=16, num_hidden_groups=1),
    _enc("electra", "Electra", embedding_size=16),
    _enc("deberta-v2", "DebertaV2", relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"]),
    _enc("xlm-roberta", "XLMRoberta", pad_token_id=0, bos_token_id=2, eos_token_id=3, max_position_embeddings=130),
    _enc("modernbert", "ModernBert", pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2,
         sep_token_id=3, global_attn_every_n_layers=1, local_attention=16),
    Case("gpt2", "GPT2Config", "GPT2LMHeadModel", "causal-lm", "bpe",
         {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0}),
    _dec("gpt-neo", "GPTNeo", num_layers=2, attention_types=[[["global", "local"], 1]], window_size=16,
         num_heads=2),
    _dec("gpt-neox", "GPTNeoX"),
    _dec("opt", "OPT", ffn_dim=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=0, eos_token_id=0),
    _dec("llama", "Llama"),
    _dec("mistral", "Mistral"),
    _dec("qwen2", "Qwen2"),
    _dec("phi3", "Phi3", pad_token_id=0),
    _dec("gemma", "Gemma", head_dim=16),
    Case("bloom", "BloomConfig", "BloomForCausalLM", "causal-lm", "bpe",
         {"hidden_size": 32, "n_layer": 2, "n_head": 2, "bos_token_id": 0, "eos_token_id": 0}),
    _dec("falcon", "Falcon", new_decoder_architecture=False, multi_query=True, num_kv_heads=1, alibi=False),
    # beyond the plain heads
    Case("bert-encoder", "BertConfig", "BertModel", "encoder", "wordpiece", dict(_SMALL)),
    Case("electra-discriminator", "ElectraConfig", "ElectraForPreTraining", "encoder", "wordpiece",
         {**_SMALL, "embedding_size": 16}),
    Case("bert-classifier", "BertConfig", "BertForSequenceClassification", "sequence-classification", "wordpiece",
         {**_SMALL, "num_labels": 2}),
    Case("roberta-multilabel", "RobertaConfig", "RobertaForSequenceClassification", "sequence-classification",
         "wordpiece", {**_SMALL, "num_labels": 3, "problem_type": "multi_label_classification", "pad_token_id": 0,
                       "bos_token_id": 2, "eos_token_id": 3, "max_position_embeddings": 130,
                       "id2label": {0: "toxic", 1: "insult", 2: "threat"}}),
    Case("bert-single-logit", "BertConfig", "BertForSequenceClassification", "sequence-classification",
         "wordpiece", {**_SMALL, "num_labels": 1}),
    Case("gpt2-classifier", "GPT2Config", "GPT2ForSequenceClassification", "sequence-classification", "bpe",
         {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0,
          "num_labels": 2}),
    Case("llama-chat", "LlamaConfig", "LlamaForCausalLM", "causal-lm", "bpe-chat", dict(_DECODER)),
    Case("llama-classifier", "LlamaConfig", "LlamaForSequenceClassification", "sequence-classification", "bpe",
         {**_DECODER, "num_labels": 2}),
    Case("albert-classifier", "AlbertConfig", "AlbertForSequenceClassification", "sequence-classification",
         "wordpiece", {**_SMALL, "embedding_size": 16, "num_hidden_groups": 1, "num_labels": 2}),
    Case("gemma3", "Gemma3Config", "Gemma3ForConditionalGeneration", "causal-lm", "bpe", {
        "text_config": {**_DECODER, "head_dim": 16, "sliding_window": 16, "layer_types": ["sliding_attention",
                                                                                          "full_attention"]},
        "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "image_size": 28, "patch_size": 14},
        "mm_tokens_per_image": 4, "image_token_index": 5, "boi_token_index": 6, "eoi_token_index": 7}),
]}

#: Models that are not text models, refused by load_target with one line (config -> what is named).
NON_TEXT: dict[str, tuple[str, dict[str, Any]]] = {
    "wav2vec2": ("Wav2Vec2Config", {"architectures": ["Wav2Vec2ForCTC"]}),
    "vit": ("ViTConfig", {"architectures": ["ViTForImageClassification"]}),
    "clip": ("CLIPConfig", {"architectures": ["CLIPModel"]}),
}


def save_tokenizer(kind: str, directory: Path) -> int:
    """Save the tokenizer of ``kind`` to ``directory``; returns its vocabulary size."""
    from transformers import AutoTokenizer

    if kind == "wordpiece":
        save_bert_tokenizer(directory)
    else:
        save_gpt2_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if kind == "bpe-chat":
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(directory)
    return len(tokenizer)


def build(name: str, directory: Path, *, seed: int = 0) -> Path:
    """Save the tiny random model of case ``name`` with its tokenizer to ``directory``."""
    import transformers

    case = CASES[name]
    directory = Path(directory)
    vocab = save_tokenizer(case.tokenizer, directory)
    settings = dict(case.settings)
    if "text_config" in settings:
        settings["text_config"] = {**settings["text_config"], "vocab_size": vocab}
    else:
        settings["vocab_size"] = vocab
    config = getattr(transformers, case.config)(**settings)
    torch.manual_seed(seed)
    model = getattr(transformers, case.model)(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def build_lora_adapter(base: Path, directory: Path, *, seed: int = 0) -> Path:
    """Save a LoRA adapter (``adapter_config.json``, no ``config.json``) trained on nothing, over ``base``,
    with non-zero B matrices so it changes the base model's outputs."""
    import peft
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False)
    wrapped = peft.get_peft_model(model, config)
    wrapped.save_pretrained(directory)
    transformers.AutoTokenizer.from_pretrained(base).save_pretrained(directory)
    meta = json.loads((Path(directory) / "adapter_config.json").read_text(encoding="utf-8"))
    meta["base_model_name_or_path"] = str(base)
    (Path(directory) / "adapter_config.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return Path(directory)
