"""Encoder-decoder (seq2seq) models such as T5, Flan-T5, BART, mBART and Pegasus.

The operations :class:`audit.target.AuditTarget` runs on them: the conditional log-likelihood of a
target text given a source text, and generation. Both follow EleutherAI's lm-evaluation-harness
(``HFLM`` with the seq2seq backend, ``TemplateLM._encode_pair`` and ``loglikelihood``), so scores
are comparable with what it reports for the same model:

* the source (the harness's *context*) goes to the encoder, tokenized with the tokenizer's
  special tokens (T5: ``... </s>``; BART: ``<s> ... </s>``); trailing whitespace of the source
  is moved to the start of the target first;
* the target (the harness's *continuation*) is tokenized without special tokens, and the model
  scores it as decoder labels: ``log p(y_t | y_<t, source)`` summed over its tokens, the decoder
  input being the labels shifted right behind the model's ``decoder_start_token_id``;
* an empty source becomes the single prefix token (BOS, or EOS when the tokenizer has none, as
  T5's), and the target is then tokenized *with* special tokens, so its closing EOS (and BART's
  leading BOS) is scored too: that is the harness's scoring of a sentence on its own, which its
  CrowS-Pairs task uses.

This module imports nothing from the rest of ``audit`` at import time, so :mod:`audit.target`
can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

#: What ``token_log_probs`` builds (the target's ``TokenLogProbs``; not imported: audit.target imports this module).
Result = TypeVar("Result")

__all__ = ["encode_pair", "encoder_of", "generate_batch", "is_encoder_decoder", "token_log_probs"]

#: The decoder label value the loss (and our gather) ignores; transformers shifts it to padding.
IGNORE_INDEX = -100


def is_encoder_decoder(model_or_config: Any) -> bool:
    """Whether a transformers model (or its config) is an encoder-decoder with an encoder to read."""
    config = getattr(model_or_config, "config", model_or_config)
    return bool(getattr(config, "is_encoder_decoder", False))


def encoder_of(model: Any) -> Any:
    """The encoder stack of an encoder-decoder model (``model.get_encoder()``).

    Embeddings, hidden states and attention of a seq2seq model are read from it: the decoder's
    states depend on a decoder input, not on the text alone.
    """
    return model.get_encoder()


def _prefix_token(tokenizer: Any) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if isinstance(bos, int) else int(tokenizer.eos_token_id)


def encode_pair(tokenizer: Any, source: str, target: str) -> tuple[list[int], list[int]]:
    """Encoder ids of ``source`` and decoder label ids of ``target``, as lm-evaluation-harness splits them.

    Trailing whitespace of the source moves to the target, which is tokenized without special
    tokens; an empty source becomes the prefix token and the target then keeps its special tokens.
    """
    spaces = len(source) - len(source.rstrip())
    if spaces:
        source, target = source[:-spaces], source[-spaces:] + target
    if source == "":
        return [_prefix_token(tokenizer)], list(tokenizer(target, add_special_tokens=True)["input_ids"])
    return (list(tokenizer(source, add_special_tokens=True)["input_ids"]),
            list(tokenizer(target, add_special_tokens=False)["input_ids"]))


def _score_batch(target: Any, pairs: Sequence[tuple[list[int], list[int]]]) -> list[np.ndarray]:
    """``log p(label_t | labels before t, source)`` of every label token, one array per pair."""
    batch = target._pad([src for src, _ in pairs])
    width = max(len(lab) for _, lab in pairs)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (_, lab) in enumerate(pairs):
        labels[row, : len(lab)] = torch.as_tensor(lab, dtype=torch.long)
    labels = labels.to(target.device)
    logits = target.model(**batch, labels=labels, return_dict=True).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).cpu().numpy()
    return [picked[row, : len(lab)].astype(np.float64) for row, (_, lab) in enumerate(pairs)]


def token_log_probs(target: Any, sources: Sequence[str], targets: Sequence[str], *,
                    make: Callable[[np.ndarray, np.ndarray], Result]) -> list[Result]:
    """Per-token conditional log-probabilities of each target given its source (cached, batched).

    A pair whose source or target has more than ``target.max_length`` tokens, or whose target has
    no token, is not scored: its ``log_probs`` are all ``nan`` (and its ``input_ids`` the target's).
    ``make(input_ids, log_probs)`` builds each result (the target passes its ``TokenLogProbs``, so
    this module needs nothing from :mod:`audit.target`, which imports it).
    """
    TokenLogProbs = make  # reads as the type it builds

    op = "seq2seq_ll"
    todo = [p for p in dict.fromkeys(zip(sources, targets, strict=True)) if (op, p) not in target._cache]
    if todo:
        encoded = [encode_pair(target.tokenizer, s, t) for s, t in todo]
        fits = [bool(lab) and len(src) <= target.max_length and len(lab) <= target.max_length
                for src, lab in encoded]
        for pair, (_, lab), ok in zip(todo, encoded, fits, strict=True):
            if not ok:
                target._cache[(op, pair)] = TokenLogProbs(np.asarray(lab, dtype=np.int64), np.full(len(lab), np.nan))
        order = sorted((i for i, ok in enumerate(fits) if ok), key=lambda i: -len(encoded[i][0]) - len(encoded[i][1]))
        size = target.batch_size
        with torch.inference_mode(), target._progress(-(-len(order) // size), "conditional log-likelihood") as bar:
            for start in range(0, len(order), size):
                chunk = order[start : start + size]
                for i, values in zip(chunk, _score_batch(target, [encoded[i] for i in chunk]), strict=True):
                    target._cache[(op, todo[i])] = TokenLogProbs(np.asarray(encoded[i][1], dtype=np.int64), values)
                bar.update(1)
    return [target._cache[(op, p)] for p in zip(sources, targets, strict=True)]


def generate_batch(target: Any, seqs: Sequence[Sequence[int]], settings: dict[str, Any],
                   seed: int) -> list[str]:
    """Decoded outputs of ``model.generate`` for one batch of encoder inputs (special tokens skipped).

    An encoder-decoder's output is the decoder sequence alone (it starts at the decoder start
    token), so nothing of the prompt needs cutting off, unlike a causal LM's.
    """
    batch = target._pad(seqs)
    torch.manual_seed(seed)
    out = target.model.generate(**batch, pad_token_id=target._pad_id,
                                **{k: v for k, v in settings.items() if v is not None})
    return target.tokenizer.batch_decode(out, skip_special_tokens=True)
