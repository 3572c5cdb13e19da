"""Tiny Hugging Face models and tokenizers built offline, for tests (hidden size 32, 2 layers)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CORPUS = """
this is that there here it was we talked about the a an and or of to in on for with is are be
he she him her his hers they them their man woman boy girl brother sister father mother son daughter
uncle aunt grandfather grandmother male female john paul mike kevin steve greg jeff bill amy joan lisa
sarah diana kate ann donna executive management professional corporation salary office business career
home parents children family cousins marriage wedding relatives math algebra geometry calculus equations
computation numbers addition poetry art dance literature novels symphony drama sculpture science
technology physics chemistry einstein nasa experiment astronomy shakespeare person name good bad
great terrible love hate happy sad nurse doctor engineer teacher said works as people person's
christian muslim jewish black white asian young old rich poor movie film food was very not really
""".split()  # noqa: SIM905 - a word list reads better as prose


def word_vocab() -> list[str]:
    words = list(dict.fromkeys(w.strip(".,'") for w in CORPUS if w.strip(".,'")))
    return [*SPECIAL, ".", ",", "'", "s", "!", "?", *words]


def save_bert_tokenizer(directory: Path) -> None:
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(word_vocab()) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(vocab), do_lower_case=True).save_pretrained(directory)


def save_gpt2_tokenizer(directory: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    text = " ".join(CORPUS)
    bpe.train_from_iterator([text, text.capitalize(), text.upper()], vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(directory)


def save_t5_tokenizer(directory: Path) -> None:
    """A word-level tokenizer in T5's shape: ``<pad>`` 0, ``</s>`` 1 appended to every text, no BOS."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *word_vocab()[len(SPECIAL):]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(directory)


def save_bart_tokenizer(directory: Path) -> None:
    """A byte-level BPE tokenizer in BART's shape: ``<s> ... </s>``, ``<pad>`` 1, ``<mask>``."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    text = " ".join(CORPUS)
    bpe.train_from_iterator([text, text.capitalize(), text.upper()], vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", mask_token="<mask>").save_pretrained(directory)


def make_tiny_seq2seq(family: str, directory: Path, *, seed: int = 0) -> Path:
    """Save a random tiny encoder-decoder (``"t5"``, ``"bart"``, ``"mbart"`` or ``"pegasus"``) with its
    tokenizer to ``directory``."""
    from transformers import (
        AutoTokenizer,
        BartConfig,
        BartForConditionalGeneration,
        MBartConfig,
        MBartForConditionalGeneration,
        PegasusConfig,
        PegasusForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(seed)
    directory = Path(directory)
    if family == "t5":
        save_t5_tokenizer(directory)
        config = T5Config(vocab_size=len(AutoTokenizer.from_pretrained(directory)), d_model=32, d_kv=16, d_ff=64,
                          num_layers=2, num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        model = T5ForConditionalGeneration(config)
    elif family == "bart":
        save_bart_tokenizer(directory)
        config = BartConfig(vocab_size=len(AutoTokenizer.from_pretrained(directory)), d_model=32, encoder_layers=2,
                            decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=1,
                            bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None,
                            # untied: a random tied BART copies its decoder start token (EOS) and writes nothing
                            tie_word_embeddings=False)
        model = BartForConditionalGeneration(config)
    elif family in ("mbart", "pegasus"):
        small = {"d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
                 "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
                 "max_position_embeddings": 256, "tie_word_embeddings": False}
        if family == "mbart":  # BART's special tokens; its decoder starts from the labels' last token
            save_bart_tokenizer(directory)
            config = MBartConfig(vocab_size=len(AutoTokenizer.from_pretrained(directory)), pad_token_id=1,
                                 bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, **small)
            model = MBartForConditionalGeneration(config)
        else:  # Pegasus has T5's special tokens: <pad> 0 starts the decoder, </s> 1, no BOS
            save_t5_tokenizer(directory)
            config = PegasusConfig(vocab_size=len(AutoTokenizer.from_pretrained(directory)), pad_token_id=0,
                                   eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1, **small)
            model = PegasusForConditionalGeneration(config)
    else:
        raise ValueError(f"unknown seq2seq family {family!r}; use 't5', 'bart', 'mbart' or 'pegasus'")
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def make_tiny_model(kind: str, directory: Path, *, num_labels: int = 2, seed: int = 0) -> Path:
    """Save a random tiny model of ``kind`` with its tokenizer to ``directory`` (safetensors); ``"seq2seq"`` is a T5."""
    if kind == "seq2seq":
        return make_tiny_seq2seq("t5", directory, seed=seed)
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        BertForSequenceClassification,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
    )

    torch.manual_seed(seed)
    directory = Path(directory)
    if kind == "causal-lm":
        save_gpt2_tokenizer(directory)
        from transformers import AutoTokenizer

        vocab_size = len(AutoTokenizer.from_pretrained(directory))
        config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                            bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(config)
    else:
        save_bert_tokenizer(directory)
        config = BertConfig(vocab_size=len(word_vocab()), hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                            num_labels=num_labels)
        model = {"encoder": BertModel, "masked-lm": BertForMaskedLM,
                 "sequence-classification": BertForSequenceClassification}[kind](config)
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def write_seat_test(path: Path, targ1: list[str], targ2: list[str], attr1: list[str], attr2: list[str]) -> Path:
    """Write a SEAT test in the sent-bias JSON format."""
    spec = {role: {"category": role, "examples": items}
            for role, items in (("targ1", targ1), ("targ2", targ2), ("attr1", attr1), ("attr2", attr2))}
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path
