"""Gradient attributions of a model's decision to its input tokens, with Captum.

Three methods, each taken with respect to the input (word) embeddings:

* Integrated Gradients (Sundararajan et al. 2017), through Captum's ``LayerIntegratedGradients``.
  Its attributions add up to ``f(x) - f(baseline)`` (completeness); Captum's convergence delta is
  how far they miss, and ``n_steps`` is doubled for the examples whose delta is too large.
* Saliency (Simonyan et al. 2014): the L2 norm of the gradient at each token's embedding.
* Input x Gradient (Shrikumar et al. 2017): embedding times gradient, summed over the hidden size.

For a sequence classifier ``f`` is the probability of the explained class (the predicted one, or
the ``target`` given). For a causal LM ``f`` is the log-probability of the explained continuation
(the model's greedy next token, or the ``target`` text), as in Captum's ``LLMGradientAttribution``,
which computes the Integrated Gradients and Input x Gradient attributions there. For a seq2seq LM
(T5, BART) ``f`` is the log-probability of the explained output given the input, the input going
to the encoder (the greedy output up to its first non-special token, or the ``target`` text), and
the attributions are taken at the *encoder's* input embeddings (its ``embed_tokens``, which the
encoder calls; the model's shared embedding module is not called by it).

The :class:`Explainer` here is shared with the faithfulness probe, which removes the tokens these
attributions rank highest (ERASER) and re-runs them on randomised copies of the model.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, ClassVar, Literal, get_args

import numpy as np
import torch

from audit.context import AuditContext
from audit.errors import ConfigError, DataError, NotApplicableError
from audit.families import text_config
from audit.figures import interval_bar_chart
from audit.heads import classifier_head, scores_from_logits
from audit.masking import TextMasker
from audit.probe import Figure, Metric, Probe, ProbeResult, Table
from audit.seq2seq import IGNORE_INDEX, encoder_of
from audit.stats import bootstrap_ci
from audit.target import AuditTarget
from probes.display import data_masker

__all__ = [
    "EXPLAINABLE_KINDS",
    "GENERATIVE_KINDS",
    "METHODS",
    "TITLES",
    "AttributionProbe",
    "Encoded",
    "Example",
    "Explainer",
    "TokenAttribution",
    "builtin_examples",
    "check_common_params",
    "collect_examples",
    "control_rank_p_value",
    "counterfactual_pairs",
    "demographic_mask",
    "demographic_terms",
    "encode",
    "encode_examples",
    "explains_own_prediction",
    "heat_colors",
    "position_matched_controls",
    "redact_for_display",
    "resolve_targets",
    "target_label",
    "transformer_blocks",
    "word_pool",
    "word_scores",
]

Method = Literal["integrated_gradients", "saliency", "input_x_gradient"]
METHODS: tuple[str, ...] = get_args(Method)
TITLES = {"integrated_gradients": "Integrated Gradients", "saliency": "Saliency", "input_x_gradient": "Input x Gradient"}
#: Whether a method's sign means something (Saliency is a gradient norm, never negative).
SIGNED = {"integrated_gradients": True, "saliency": False, "input_x_gradient": True}
EXPLAINABLE_KINDS = frozenset({"sequence-classification", "causal-lm", "seq2seq"})
#: Kinds whose explained output is a token sequence (``f`` is its log-probability).
GENERATIVE_KINDS = frozenset({"causal-lm", "seq2seq"})
#: Greedy steps a seq2seq prediction may take to reach its first non-special token (BART writes <s> first).
_SEQ2SEQ_LEAD = 4
BASELINE_TOKENS = ("pad", "unk", "mask", "eos", "bos")
#: Tokens (rows x sequence length) per forward pass of the forward-only scoring (no gradients kept).
_TOKENS_PER_PASS = 8192
#: Tokens per forward+backward pass of Integrated Gradients when Captum's internal batch size is not set.
#: Gradient passes keep every activation for the backward pass: past about a thousand tokens they
#: spill the CPU's caches and each token costs more (8,192 made the batched path slower than Captum
#: one example at a time, 50 steps x ~15 tokens); benchmarks/bench_attribution.py sweeps this value.
_IG_TOKENS_PER_PASS = 1024
#: Below this |f(x) - f(baseline)| the convergence tolerance stops shrinking.
_DELTA_FLOOR = 0.01
_WORD_EDGE = re.compile(r"^[^\w]+|[^\w]+$")


def _data_dir() -> Any:
    return resources.files("probes") / "data" / "attribution"


def builtin_examples() -> list[str]:
    """Our short example sentences (``probes/data/attribution/examples.json``)."""
    return list(json.loads((_data_dir() / "examples.json").read_text(encoding="utf-8"))["examples"])


def demographic_terms() -> dict[str, list[str]]:
    """Our demographic term list by axis (``probes/data/attribution/demographic_terms.json``)."""
    return dict(json.loads((_data_dir() / "demographic_terms.json").read_text(encoding="utf-8"))["terms"])


# -- tokens and words -------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    """One text as the model sees it, with the words each token belongs to.

    ``words[i]`` is the index into ``word_texts`` of token ``i``'s word, ``None`` for special
    tokens. ``truncated`` says the text had ``n_tokens_full`` tokens and was cut to fit.
    """

    text: str
    ids: tuple[int, ...]
    tokens: tuple[str, ...]
    special: tuple[bool, ...]
    words: tuple[int | None, ...]
    word_texts: tuple[str, ...]
    truncated: bool
    n_tokens_full: int
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def content(self) -> np.ndarray:
        """Positions of the non-special tokens."""
        return np.flatnonzero(~np.asarray(self.special, dtype=bool))

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer: Any, text: str, *, max_length: int, keep: Literal["start", "end"] = "start") -> Encoded:
    """Tokenize ``text`` with special tokens, cut to ``max_length`` tokens keeping the special ones.

    An encoder keeps the start of a long text (as the tokenizer's own truncation does); a causal
    LM keeps the end, which is what its next token depends on.
    """
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(text, add_special_tokens=True, truncation=False, return_special_tokens_mask=True,
                    return_offsets_mapping=fast)
    ids = list(enc["input_ids"])
    special = [bool(s) for s in enc.get("special_tokens_mask", [0] * len(ids))]
    offsets = list(enc["offset_mapping"]) if fast else None
    try:
        word_ids = list(enc.word_ids()) if fast else None
    except (ValueError, AttributeError):
        word_ids = None
    n_full = len(ids)
    positions = list(range(n_full))
    if n_full > max_length:
        lead = 0
        while lead < n_full and special[lead]:
            lead += 1
        trail = 0
        while trail < n_full - lead and special[n_full - 1 - trail]:
            trail += 1
        room = max(0, max_length - lead - trail)
        body = positions[lead:n_full - trail]
        body = body[:room] if keep == "start" else body[len(body) - room:]
        positions = positions[:lead] + body + positions[n_full - trail:]
    raw = tokenizer.convert_ids_to_tokens([ids[p] for p in positions])
    tokens, words, word_texts = [], [], []
    word_index: dict[Any, int] = {}
    for j, p in enumerate(positions):
        if special[p]:
            tokens.append(str(raw[j]))
            words.append(None)
            continue
        if offsets is not None and offsets[p][1] > offsets[p][0]:
            tokens.append(text[offsets[p][0]:offsets[p][1]].strip() or str(raw[j]))
        else:
            tokens.append(str(raw[j]).replace("Ġ", " ").replace("▁", " ").removeprefix("##").strip() or str(raw[j]))
        key = word_ids[p] if word_ids is not None and word_ids[p] is not None else ("token", p)
        if key not in word_index:
            word_index[key] = len(word_texts)
            word_texts.append(tokens[-1])
        elif offsets is not None:
            first = [q for q in positions if word_ids is not None and word_ids[q] == key]
            word_texts[word_index[key]] = text[offsets[first[0]][0]:offsets[first[-1]][1]].strip()
        else:
            word_texts[word_index[key]] += tokens[-1]
        words.append(word_index[key])
    spans = tuple((int(offsets[p][0]), int(offsets[p][1])) if offsets is not None and not special[p] else (0, 0)
                  for p in positions)
    return Encoded(text=text, ids=tuple(ids[p] for p in positions), tokens=tuple(tokens),
                   special=tuple(special[p] for p in positions), words=tuple(words),
                   word_texts=tuple(word_texts), truncated=len(positions) < n_full, n_tokens_full=n_full,
                   spans=spans)


def redact_for_display(enc: Encoded, masker: TextMasker) -> tuple[str, list[str]]:
    """The text and tokens of ``enc`` as a report may show them when ``enc`` is a row of the data.

    The model still sees the real text; the card shows it through ``masker`` (entity types, and
    ``<WORD>`` for every word that is not in the project's word lists), and every token that
    overlaps a masked word as that word's tag, so the token list keeps one entry per score.
    """
    spans = enc.spans or ((0, 0),) * len(enc.tokens)
    return masker.text(enc.text, limit=None), masker.tokens(enc.text, enc.tokens, spans, enc.special)


def _sig(value: Any, digits: int = 4) -> float:
    """A float rounded to ``digits`` significant digits, for compact JSON."""
    return float(f"{float(value):.{digits}g}")


def _normalise_word(word: str) -> str:
    word = word.lower().replace("\u2019", "'")
    word = word.removesuffix("'s") if len(word) > 2 else word
    return _WORD_EDGE.sub("", word)


def demographic_mask(enc: Encoded, terms: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Boolean per token: whether its word is (part of) a demographic term.

    Words are compared case-insensitively, without surrounding punctuation or a possessive
    ``'s``; a multi-word term marks every word of a consecutive match.
    """
    normalised = [_normalise_word(w) for w in enc.word_texts]
    single = {_normalise_word(t) for group in terms.values() for t in group if len(t.split()) == 1}
    multi = [tuple(_normalise_word(p) for p in t.split()) for group in terms.values() for t in group
             if len(t.split()) > 1]
    hit = np.array([w in single for w in normalised], dtype=bool)
    for phrase in multi:
        n = len(phrase)
        for start in range(len(normalised) - n + 1):
            if tuple(normalised[start:start + n]) == phrase:
                hit[start:start + n] = True
    return np.array([w is not None and bool(hit[w]) for w in enc.words], dtype=bool)


def word_scores(enc: Encoded, scores: np.ndarray) -> np.ndarray:
    """Token scores summed into the words they belong to (special tokens dropped)."""
    out = np.zeros(len(enc.word_texts))
    for i, w in enumerate(enc.words):
        if w is not None:
            out[w] += scores[i]
    return out


def heat_colors(values: Sequence[float], *, signed: bool) -> list[str]:
    """Background colour per token: red for support of the explained output, blue against it.

    Intensity is ``|value| / max |value|`` within the sequence, so each heatmap uses its full
    range; unsigned scores (Saliency) are drawn in one hue.
    """
    arr = np.asarray(values, dtype=float)
    scale = float(np.max(np.abs(arr))) if arr.size else 0.0
    colours = []
    for v in arr:
        t = 0.0 if scale == 0 or not math.isfinite(v) else min(1.0, abs(v) / scale) * 0.8
        base = (230, 145, 56) if not signed else (214, 96, 77) if v >= 0 else (67, 147, 195)
        rgb = (round(255 + (c - 255) * t) for c in base)
        colours.append("#{:02x}{:02x}{:02x}".format(*rgb))
    return colours


# -- the explainer -------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenAttribution:
    """Attributions of one explained output to each token of one encoded text.

    ``scores`` has one value per token (0 on special tokens). For Integrated Gradients,
    ``f_x`` and ``f_baseline`` are the explained output at the input and at the baseline and
    ``delta`` is Captum's convergence delta, ``sum(scores) - (f_x - f_baseline)``.
    """

    method: str
    scores: np.ndarray
    f_x: float | None = None
    f_baseline: float | None = None
    delta: float | None = None
    n_steps: int | None = None

    def converged(self, max_delta: float) -> bool:
        """Whether |delta| is within ``max_delta`` of |f(x) - f(baseline)| (at least 0.01)."""
        if self.delta is None:
            return True
        gap = abs((self.f_x or 0.0) - (self.f_baseline or 0.0))
        return abs(self.delta) <= max_delta * max(gap, _DELTA_FLOOR)


class _LabelTokenizer:
    """The tokenizer as Captum's ``LLMGradientAttribution`` sees it, for its output-token labels only.

    Captum 0.9 turns the target ids into display labels and raises ``IndexError`` when the last one
    is a byte fragment of a multi-byte character (``"\ufffd"`` when decoded alone, as a greedy next
    token often is): its fallback reads the id after it. The labels are not used here, so a fragment
    is labelled ``"<byte>"``; ids, attributions and everything else go to the real tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._tokenizer)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self._tokenizer.decode(*args, **kwargs).replace("\ufffd", "<byte>")


@contextlib.contextmanager
def _quiet_labels() -> Iterator[None]:
    """Captum warns while it builds the output-token labels of a byte fragment; the labels are unused."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(Pretty tokens length|\(i=\d+, idx=\d+\))", category=UserWarning)
        yield


def _token_ids_input(ids: Sequence[int], special: Sequence[bool], tokenizer: Any, baseline_id: int) -> Any:
    """A Captum ``TextTokenInput`` built from token ids we already cut (its constructor takes raw text)."""
    from captum.attr import TextTokenInput

    inp = TextTokenInput.__new__(TextTokenInput)
    inp_tensor = torch.tensor([list(ids)], dtype=torch.long)
    mask = torch.tensor([[not s for s in special]], dtype=torch.bool)
    inp.inp_tensor = inp_tensor
    inp.itp_mask = None if bool(mask.all()) else mask
    inp.itp_tensor = inp_tensor if inp.itp_mask is None else inp_tensor[mask].unsqueeze(0)
    inp.skip_tokens = sorted({int(i) for i, s in zip(ids, special, strict=True) if s}) or None
    inp.values = tokenizer.convert_ids_to_tokens(inp.itp_tensor[0].tolist())
    inp.tokenizer = tokenizer
    inp.n_itp_features = len(inp.values)
    inp.baselines = int(baseline_id)
    return inp


def _resolve_baseline(tokenizer: Any, baselines: str | int) -> tuple[int, str]:
    if isinstance(baselines, int) and not isinstance(baselines, bool):
        return baselines, f"token id {baselines}"
    order = [baselines, *(b for b in BASELINE_TOKENS if b != baselines)]
    for name in order:
        value = getattr(tokenizer, f"{name}_token_id", None)
        if isinstance(value, int):
            token = getattr(tokenizer, f"{name}_token", name)
            return value, f"{token} ({name})"
    return 0, "token id 0"


def transformer_blocks(model: Any) -> Any:
    """The ``ModuleList`` of a transformers model's layers (blocks), or ``None`` when not found."""
    config = text_config(model.config)  # a multimodal model (Gemma 3) keeps its text layers' config there
    n_layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and n_layers and len(module) == n_layers:
            return module
    return None


class Explainer:
    """Attributions of a sequence classifier's class probability, a causal LM's continuation or a
    seq2seq LM's output.

    Parameters
    ----------
    model : transformers model
        A ``*ForSequenceClassification``, causal LM or seq2seq LM, in eval mode. It is only read.
    tokenizer : transformers tokenizer
    kind : {"sequence-classification", "causal-lm", "seq2seq"}
    max_length : int
        Longest token sequence the model takes.
    device : torch.device
    baselines : {"pad", "unk", "mask", "eos", "bos"} or int, default="pad"
        The token every non-special token is replaced by in the Integrated Gradients baseline
        (the next one in that list is used when the tokenizer has none). Captum's name.
    batch_size : int, default=32
        Examples per batched attribution call.
    """

    def __init__(self, model: Any, tokenizer: Any, kind: str, *, max_length: int, device: Any = "cpu",
                 baselines: str | int = "pad", batch_size: int = 32) -> None:
        if kind not in EXPLAINABLE_KINDS:
            raise NotApplicableError(
                f"Gradient attributions need an output to explain: a sequence classifier, a causal LM or a "
                f"seq2seq LM, got a model of kind {kind!r}. Load it with kind='sequence-classification', "
                "'causal-lm' or 'seq2seq'."
            )
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        #: The classifier head whose scores are explained (softmax, sigmoid or the raw score; audit.heads).
        self.head = classifier_head(model.config) if kind == "sequence-classification" else None
        self.max_length = int(max_length)
        self.device = torch.device(device)
        self.batch_size = batch_size
        # A seq2seq encoder calls its own embed_tokens (tied to, but not the same module as, the shared one).
        self.embeddings = (encoder_of(model).get_input_embeddings() if kind == "seq2seq"
                           else model.get_input_embeddings())
        self.baseline_id, self.baseline_name = _resolve_baseline(tokenizer, baselines)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if isinstance(pad, int) else self.baseline_id

    @classmethod
    def for_target(cls, target: AuditTarget, *, model: Any = None, baselines: str | int = "pad") -> Explainer:
        """An explainer of ``target`` (or of ``model``, a copy of its model, e.g. randomised)."""
        return cls(model if model is not None else target.model, target.tokenizer, target.kind,
                   max_length=target.max_length, device=target.device, baselines=baselines,
                   batch_size=target.batch_size)

    @property
    def n_classes(self) -> int:
        return int(getattr(self.model.config, "num_labels", 0) or 0)

    @property
    def generative(self) -> bool:
        """Whether the explained output is a token sequence (causal or seq2seq LM), not a class."""
        return self.kind in GENERATIVE_KINDS

    def encode(self, text: str, *, reserve: int = 0) -> Encoded:
        """Encode ``text``; a causal LM keeps the end and leaves ``reserve`` tokens for the continuation."""
        keep: Literal["start", "end"] = "end" if self.kind == "causal-lm" else "start"
        return encode(self.tokenizer, text, max_length=self.max_length - reserve, keep=keep)

    # -- outputs ---------------------------------------------------------------------------
    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
            mask[row, :len(seq)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _proba_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return scores_from_logits(logits, self.head or "single-label")

    def _proba_from_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits
        return scores_from_logits(logits, self.head or "single-label")

    def _continuation_logprob(self, seqs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> np.ndarray:
        joined = [list(s) + list(t[:-1]) for s, t in zip(seqs, targets, strict=True)]
        ids, mask = self._pad(joined)
        logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        out = np.zeros(len(seqs))
        for row, (s, t) in enumerate(zip(seqs, targets, strict=True)):
            pos = torch.arange(len(s) - 1, len(s) - 1 + len(t), device=ids.device)
            out[row] = float(logp[row, pos, torch.as_tensor(list(t), device=ids.device)].sum())
        return out

    # -- seq2seq: f is log p(output tokens | input), the input going to the encoder ---------------
    def _labels(self, targets: Sequence[Sequence[int]]) -> torch.Tensor:
        labels = torch.full((len(targets), max(len(t) for t in targets)), IGNORE_INDEX, dtype=torch.long)
        for row, t in enumerate(targets):
            labels[row, :len(t)] = torch.as_tensor(list(t), dtype=torch.long)
        return labels.to(self.device)

    def _seq2seq_logprob(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """Summed log p(labels | encoder input) per row; the model shifts the labels into its decoder input."""
        logp = torch.log_softmax(self.model(**inputs, labels=labels).logits.float(), dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * (labels != IGNORE_INDEX)).sum(-1)

    def _seq2seq_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          labels: torch.Tensor) -> torch.Tensor:
        return self._seq2seq_logprob(labels, input_ids=input_ids, attention_mask=attention_mask)

    def _seq2seq_from_embeds(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                             labels: torch.Tensor) -> torch.Tensor:
        return self._seq2seq_logprob(labels, inputs_embeds=inputs_embeds, attention_mask=attention_mask)

    def _predict_seq2seq(self, seqs: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
        """Greedy output up to and including its first non-special token (or EOS), at most a few steps."""
        ids, mask = self._pad(seqs)
        out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=_SEQ2SEQ_LEAD, do_sample=False,
                                  num_beams=1, pad_token_id=self.pad_id)
        special = set(getattr(self.tokenizer, "all_special_ids", []))
        eos = getattr(self.tokenizer, "eos_token_id", None)
        result = []
        for row in out[:, 1:].tolist():  # position 0 is the decoder start token
            kept: list[int] = []
            for token in row:
                kept.append(int(token))
                if token not in special or token == eos:
                    break
            result.append(tuple(kept))
        return result

    def _attribute_seq2seq(self, encs: Sequence[Encoded], outputs: Sequence[Sequence[int]], method: str,
                           n_steps: int, internal_batch_size: int | None) -> list[TokenAttribution]:
        from captum.attr import InputXGradient, LayerIntegratedGradients, Saliency

        ids, mask = self._pad([e.ids for e in encs])
        labels = self._labels(outputs)
        if method == "integrated_gradients":
            base, _ = self._pad([self.baseline_ids(e) for e in encs])
            lig = LayerIntegratedGradients(self._seq2seq_from_ids, self.embeddings)
            attr, delta = lig.attribute(
                ids, baselines=base, additional_forward_args=(mask, labels), n_steps=n_steps,
                internal_batch_size=self._rows_per_pass(len(encs), ids.shape[1] + labels.shape[1], internal_batch_size),
                return_convergence_delta=True,
            )
            scores = attr.float().sum(-1).detach().cpu().numpy()
            with torch.no_grad():
                both = self._seq2seq_from_ids(torch.cat([ids, base]), torch.cat([mask, mask]),
                                              torch.cat([labels, labels])).cpu().numpy()
            delta = delta.detach().cpu().numpy()
            return [TokenAttribution(method, self._clean(scores[i], e), float(both[i]), float(both[i + len(encs)]),
                                     float(delta[i]), n_steps) for i, e in enumerate(encs)]
        embeds = self.embeddings(ids).detach().requires_grad_(True)
        if method == "saliency":
            grads = Saliency(self._seq2seq_from_embeds).attribute(embeds, abs=True, additional_forward_args=(mask, labels))
            scores = grads.float().norm(dim=-1).detach().cpu().numpy()
        else:
            attr = InputXGradient(self._seq2seq_from_embeds).attribute(embeds, additional_forward_args=(mask, labels))
            scores = attr.float().sum(-1).detach().cpu().numpy()
        return [TokenAttribution(method, self._clean(scores[i], e)) for i, e in enumerate(encs)]

    def output(self, seqs: Sequence[Sequence[int]], targets: Sequence[Any]) -> np.ndarray:
        """The explained output ``f``: class probability, or continuation (seq2seq: output) log-probability."""
        out = np.zeros(len(seqs))
        lengths = [len(s) + (len(t) if self.generative else 0) for s, t in zip(seqs, targets, strict=True)]
        with torch.no_grad():
            for chunk in self._chunks(lengths):
                rows, tchunk = [seqs[i] for i in chunk], [targets[i] for i in chunk]
                if self.kind == "seq2seq":
                    ids, mask = self._pad(rows)
                    out[chunk] = self._seq2seq_from_ids(ids, mask, self._labels(tchunk)).cpu().numpy()
                elif self.kind == "causal-lm":
                    out[chunk] = self._continuation_logprob(rows, tchunk)
                else:
                    ids, mask = self._pad(rows)
                    proba = self._proba_from_ids(ids, mask).cpu().numpy()
                    out[chunk] = proba[np.arange(len(rows)), np.asarray(tchunk, dtype=int)]
        return out

    def _chunks(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices, longest first, grouped into forward passes of about 8,192 tokens (at least ``batch_size`` rows)."""
        chunks: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
            width = lengths[chunks[-1][0]] if chunks else 0
            if chunks and len(chunks[-1]) < max(self.batch_size, _TOKENS_PER_PASS // max(width, 1)):
                chunks[-1].append(i)
            else:
                chunks.append([i])
        return chunks

    def score(self, seqs: Sequence[Sequence[int]], targets: Sequence[Any]) -> np.ndarray:
        """Probability of the explained class or continuation, for ERASER's removal curves."""
        values = self.output(seqs, targets)
        return np.exp(values) if self.generative else values

    def predict(self, encs: Sequence[Encoded]) -> list[Any]:
        """The predicted class of each text, a causal LM's greedy next token (as a 1-tuple), or a
        seq2seq LM's greedy output up to its first non-special token."""
        out: list[Any] = []
        with torch.no_grad():
            for start in range(0, len(encs), self.batch_size):
                chunk = [e.ids for e in encs[start:start + self.batch_size]]
                if self.kind == "seq2seq":
                    out += self._predict_seq2seq(chunk)
                    continue
                ids, mask = self._pad(chunk)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                if self.kind == "causal-lm":
                    last = torch.as_tensor([len(s) - 1 for s in chunk], device=ids.device)
                    nxt = logits[torch.arange(len(chunk), device=ids.device), last].argmax(-1)
                    out += [(int(t),) for t in nxt.cpu()]
                else:
                    out += [int(c) for c in logits.argmax(-1).cpu()]
        return out

    def baseline_ids(self, enc: Encoded) -> list[int]:
        """The Integrated Gradients baseline: every non-special token replaced by the baseline token."""
        return [i if s else self.baseline_id for i, s in zip(enc.ids, enc.special, strict=True)]

    # -- attributions ----------------------------------------------------------------------
    def attribute(self, encs: Sequence[Encoded], targets: Sequence[Any], method: str, *, n_steps: int = 50,
                  internal_batch_size: int | None = None) -> list[TokenAttribution]:
        """Attributions of ``method`` for each text, to its target (a class index or continuation ids)."""
        if method not in METHODS:
            raise ConfigError(f"Unknown attribution method {method!r}. Use one of {list(METHODS)}.")
        if len(encs) != len(targets):
            raise ValueError("attribute() needs one target per text")
        if not encs:
            return []
        with torch.enable_grad():
            if self.kind == "causal-lm":
                return [self._attribute_causal(e, t, method, n_steps, internal_batch_size)
                        for e, t in zip(encs, targets, strict=True)]
            batched = self._attribute_seq2seq if self.kind == "seq2seq" else self._attribute_classifier
            results: list[TokenAttribution | None] = [None] * len(encs)
            order = sorted(range(len(encs)), key=lambda i: -len(encs[i]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                outs = batched([encs[i] for i in chunk], [targets[i] for i in chunk],
                               method, n_steps, internal_batch_size)
                for i, out in zip(chunk, outs, strict=True):
                    results[i] = out
        return results  # type: ignore[return-value]

    def integrated_gradients(self, encs: Sequence[Encoded], targets: Sequence[Any], *, n_steps: int = 50,
                             max_delta: float = 0.05, max_n_steps: int = 400,
                             internal_batch_size: int | None = None) -> list[TokenAttribution]:
        """Integrated Gradients, doubling ``n_steps`` (up to ``max_n_steps``) where not converged.

        An example has converged when ``|delta| <= max_delta * max(|f(x) - f(baseline)|, 0.01)``.
        """
        results = self.attribute(encs, targets, "integrated_gradients", n_steps=n_steps,
                                 internal_batch_size=internal_batch_size)
        steps = n_steps
        while True:
            todo = [i for i, r in enumerate(results) if not r.converged(max_delta)]
            if not todo or steps * 2 > max_n_steps:
                return results
            steps *= 2
            redone = self.attribute([encs[i] for i in todo], [targets[i] for i in todo], "integrated_gradients",
                                    n_steps=steps, internal_batch_size=internal_batch_size)
            for i, r in zip(todo, redone, strict=True):
                results[i] = r

    def _rows_per_pass(self, n_examples: int, width: int, internal_batch_size: int | None) -> int:
        # Captum splits the n_steps x n_examples rows into passes of whole steps: at least one step per pass.
        if internal_batch_size is not None:
            return max(internal_batch_size, n_examples)
        return max(n_examples, _IG_TOKENS_PER_PASS // max(width, 1))

    def _integrated_gradients_classifier(self, encs: Sequence[Encoded], classes: Sequence[int], n_steps: int,
                                         internal_batch_size: int | None) -> list[TokenAttribution]:
        """Integrated Gradients per bucket of equal-length texts: no padding, so no attention mask either.

        Within a bucket Captum batches the interpolation steps of all its texts into passes of about
        ``_IG_TOKENS_PER_PASS`` tokens. ``f(x)`` and ``f(baseline)`` come from one forward pass over the
        bucket's texts and its distinct baselines (texts of one length share theirs), and the convergence
        delta is Captum's, ``sum(attributions) - (f(x) - f(baseline))``, from those values instead of
        Captum running both forwards again.
        """
        from captum.attr import LayerIntegratedGradients

        lig = LayerIntegratedGradients(self._proba_from_ids, self.embeddings)
        results: list[TokenAttribution | None] = [None] * len(encs)
        buckets: dict[int, list[int]] = {}
        for i, enc in enumerate(encs):
            buckets.setdefault(len(enc), []).append(i)
        for width, members in buckets.items():
            ids = torch.as_tensor([list(encs[i].ids) for i in members], dtype=torch.long, device=self.device)
            bases = [tuple(self.baseline_ids(encs[i])) for i in members]
            distinct = list(dict.fromkeys(bases))
            base = torch.as_tensor([list(b) for b in bases], dtype=torch.long, device=self.device)
            target = [int(classes[i]) for i in members]
            attr = lig.attribute(ids, baselines=base, target=target, additional_forward_args=(None,), n_steps=n_steps,
                                 internal_batch_size=self._rows_per_pass(len(members), width, internal_batch_size))
            scores = attr.float().sum(-1).detach().cpu().numpy()
            with torch.no_grad():
                rows = torch.cat([ids, torch.as_tensor([list(b) for b in distinct], dtype=torch.long, device=self.device)])
                proba = self._proba_from_ids(rows, None).float().cpu().numpy()
            for k, i in enumerate(members):
                f_x = float(proba[k, target[k]])
                f_b = float(proba[len(members) + distinct.index(bases[k]), target[k]])
                delta = float(scores[k].sum()) - (f_x - f_b)
                results[i] = TokenAttribution("integrated_gradients", self._clean(scores[k], encs[i]), f_x, f_b,
                                              delta, n_steps)
        return results  # type: ignore[return-value]

    def _attribute_classifier(self, encs: Sequence[Encoded], classes: Sequence[int], method: str, n_steps: int,
                              internal_batch_size: int | None) -> list[TokenAttribution]:
        from captum.attr import InputXGradient, Saliency

        if method == "integrated_gradients":
            return self._integrated_gradients_classifier(encs, classes, n_steps, internal_batch_size)
        ids, mask = self._pad([e.ids for e in encs])
        target = [int(c) for c in classes]
        embeds = self.embeddings(ids).detach().requires_grad_(True)
        if method == "saliency":
            grads = Saliency(self._proba_from_embeds).attribute(embeds, target=target, abs=True,
                                                               additional_forward_args=(mask,))
            scores = grads.float().norm(dim=-1).detach().cpu().numpy()
        else:
            attr = InputXGradient(self._proba_from_embeds).attribute(embeds, target=target,
                                                                     additional_forward_args=(mask,))
            scores = attr.float().sum(-1).detach().cpu().numpy()
        return [TokenAttribution(method, self._clean(scores[i], e)) for i, e in enumerate(encs)]

    @staticmethod
    def _clean(row: np.ndarray, enc: Encoded) -> np.ndarray:
        out = np.asarray(row[:len(enc)], dtype=float).copy()
        out[np.asarray(enc.special, dtype=bool)] = 0.0
        return out

    def _attribute_causal(self, enc: Encoded, continuation: Sequence[int], method: str, n_steps: int,
                          internal_batch_size: int | None) -> TokenAttribution:
        from captum.attr import LayerGradientXActivation, LayerIntegratedGradients, LLMGradientAttribution, Saliency

        cont = torch.as_tensor(list(continuation), dtype=torch.long)
        content = enc.content
        scores = np.zeros(len(enc))
        if method == "saliency":
            ids = torch.as_tensor([list(enc.ids) + list(continuation[:-1])], device=self.device)
            embeds = self.embeddings(ids).detach().requires_grad_(True)
            n = len(enc)

            def forward(inputs_embeds: torch.Tensor) -> torch.Tensor:
                logp = torch.log_softmax(self.model(inputs_embeds=inputs_embeds).logits.float(), dim=-1)
                pos = torch.arange(n - 1, n - 1 + len(cont), device=logp.device)
                return logp[:, pos, cont.to(logp.device)].sum(-1)

            grads = Saliency(forward).attribute(embeds, abs=True)
            scores[content] = grads[0, :n].float().norm(dim=-1).detach().cpu().numpy()[content]
            return TokenAttribution(method, scores)
        inp = _token_ids_input(enc.ids, enc.special, self.tokenizer, self.baseline_id)
        if method == "integrated_gradients":
            llm = LLMGradientAttribution(LayerIntegratedGradients(self.model, self.embeddings),
                                         _LabelTokenizer(self.tokenizer))
            with _quiet_labels():
                result = llm.attribute(inp, target=cont, n_steps=n_steps, internal_batch_size=internal_batch_size)
        else:
            llm = LLMGradientAttribution(LayerGradientXActivation(self.model, self.embeddings),
                                         _LabelTokenizer(self.tokenizer))
            with _quiet_labels():
                result = llm.attribute(inp, target=cont)
        scores[content] = result.seq_attr.float().detach().cpu().numpy()
        if method != "integrated_gradients":
            return TokenAttribution(method, scores)
        # LLMGradientAttribution cannot return Captum's delta; completeness is checked here instead.
        f_x, f_b = self.output([list(enc.ids), self.baseline_ids(enc)], [list(continuation)] * 2)
        delta = float(scores.sum() - (f_x - f_b))
        return TokenAttribution(method, scores, float(f_x), float(f_b), delta, n_steps)


# -- where the examples come from ----------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """A text to explain, where it came from, and (for a counterfactual pair) its partner."""

    text: str
    source: str
    target: Any = None
    pair: int | None = None
    side: str | None = None
    private: bool = False  # a row of the user's data (or made from one): shown only masked


_PAIR_KEYS = (
    ("text_a", "text_b"), ("original", "counterfactual"), ("text", "counterfactual"),
    ("sentence", "counterfactual"), ("text", "counterfactual_text"), ("input", "counterfactual_input"),
    ("sent_more", "sent_less"), ("text_1", "text_2"), ("left", "right"), ("a", "b"),
)
_TEXTY = ("text", "sentence", "input", "counterfactual", "original", "swapped", "prompt")


def counterfactual_pairs(result: Any, limit: int) -> list[tuple[str, str, str]]:
    """The worst pairs in a counterfactual probe's result, as ``(text_a, text_b, label)``.

    The result is read defensively: pairs are found under common key names (``text_a``/``text_b``,
    ``original``/``counterfactual``, ...) or as the first two text-like string fields; anything
    else is ignored.
    """
    return [(a, b, label) for a, b, label, _ in _pair_entries(result, limit)]


def _pair_entries(result: Any, limit: int) -> list[tuple[str, str, str, Mapping[str, Any]]]:
    """:func:`counterfactual_pairs`, each with the example it was read from."""
    if result is None or getattr(result, "status", None) not in ("passed", "warned", "failed"):
        return []
    pairs: list[tuple[str, str, str, Mapping[str, Any]]] = []
    for example in getattr(result, "examples", None) or []:
        if not isinstance(example, Mapping):
            continue
        found = None
        for ka, kb in _PAIR_KEYS:
            a, b = example.get(ka), example.get(kb)
            if isinstance(a, str) and isinstance(b, str):
                found = (a, b)
                break
        if found is None:
            texts = [v for k, v in example.items()
                     if isinstance(v, str) and any(t in str(k).lower() for t in _TEXTY) and len(v.split()) > 1]
            found = (texts[0], texts[1]) if len(texts) >= 2 else None
        if found is None or not found[0].strip() or not found[1].strip() or found[0] == found[1]:
            continue
        groups = [str(example[k]) for k in ("group_a", "group_b") if isinstance(example.get(k), (str, int, float))]
        label = " vs ".join(groups) if len(groups) == 2 else str(example.get("axis", example.get("group", "")))
        pairs.append((found[0], found[1], label, example))
        if len(pairs) >= limit:
            break
    return pairs


def collect_examples(*, probe: str, examples: Sequence[Any] | None, context: AuditContext | None,
                     max_examples: int, pairs: int = 0) -> tuple[list[Example], list[str]]:
    """Texts to explain: the configured list, else a seeded sample of the data, else our own list;
    plus up to ``pairs`` of the counterfactual probe's worst pairs. Returns them and notes for the card.
    """
    notes: list[str] = []
    chosen: list[Example] = []
    if examples:
        for i, item in enumerate(examples):
            text, tgt = (item.get("text"), item.get("target")) if isinstance(item, Mapping) else (item, None)
            if not isinstance(text, str):
                raise ConfigError(
                    f"Probe {probe!r}: example {i} must be a string or a mapping with a 'text' string, "
                    f"got {type(text).__name__}. Fix examples[{i}] in the config."
                )
            if not text.strip():
                raise DataError(
                    f"Probe {probe!r}: example {i} is empty (received {text!r}). "
                    "Remove it from examples or give a text with at least one word."
                )
            chosen.append(Example(text=text, source="config", target=tgt))
        if len(chosen) > max_examples:
            notes.append(f"Only the first {max_examples} of {len(chosen)} configured examples were used (max_examples).")
            chosen = chosen[:max_examples]
    elif context is not None and context.data is not None:
        texts = context.data.texts
        usable = [i for i, t in enumerate(texts) if t.strip()]
        if len(usable) < len(texts):
            notes.append(f"{len(texts) - len(usable)} empty text(s) in the data were skipped.")
        if len(usable) > max_examples:
            usable = sorted(int(i) for i in context.rng.choice(usable, size=max_examples, replace=False))
        chosen = [Example(text=texts[i], source=f"data row {i}", private=True) for i in usable]
    if not chosen and not examples:
        chosen = [Example(text=t, source="built-in") for t in builtin_examples()[:max_examples]]
    if pairs and context is not None:
        for n, (a, b, label, private) in enumerate(_pairs_with_rows(context, pairs)):
            tag = f"counterfactual pair {n + 1}" + (f" ({label})" if label else "")
            chosen.append(Example(text=a, source=tag + ", side a", pair=n, side="a", private=private))
            chosen.append(Example(text=b, source=tag + ", side b", pair=n, side="b", private=private))
    return chosen, notes


def _pairs_with_rows(context: AuditContext, limit: int) -> list[tuple[str, str, str, bool]]:
    """The counterfactual probe's worst pairs, with whether each was made from a row of the data.

    A pair swapped from a data row is stored masked in that probe's result, with its ``row`` and
    ``swap_axis``; the two texts are rebuilt here from the data, so the real texts are explained.
    """
    out = []
    for a, b, label, example in _pair_entries(context.results.get("counterfactual"), limit):
        private = example.get("origin") == "data"
        row, axis = example.get("row"), example.get("swap_axis")
        if private and isinstance(row, int) and isinstance(axis, str) and context.data is not None \
                and 0 <= row < len(context.data):
            from probes.counterfactual import counterfactual_copies

            groups, copies = counterfactual_copies([context.data.texts[row]], axis)
            if copies:
                _, side, original, swapped = copies[0]
                by_group = {groups[side]: original, groups[1 - side]: swapped}
                a, b = by_group.get(example.get("group_a"), a), by_group.get(example.get("group_b"), b)
        out.append((a, b, label, private))
    return out


def resolve_targets(explainer: Explainer, encs: Sequence[Encoded], examples: Sequence[Example], default: Any,
                    *, probe: str, labels: Sequence[str] = ()) -> list[Any]:
    """The output to explain for each text: a class index (classifier) or continuation ids (causal or seq2seq LM).

    A counterfactual pair's side b is explained for side a's target, so the two are comparable.
    """
    predicted = explainer.predict(encs)
    out: list[Any] = []
    side_a: dict[int, Any] = {}
    for i, ex in enumerate(examples):
        if ex.pair is not None and ex.side == "b" and ex.pair in side_a:
            out.append(side_a[ex.pair])
            continue
        wanted = ex.target if ex.target is not None else default
        if explainer.generative:
            if wanted is None:
                value: Any = predicted[i]
            elif isinstance(wanted, str) and wanted.strip():
                value = tuple(explainer.tokenizer.encode(wanted, add_special_tokens=False))
                if not value:
                    raise ConfigError(f"Probe {probe!r}: target {wanted!r} has no tokens. Give a non-empty continuation.")
            else:
                raise ConfigError(
                    f"Probe {probe!r}: for a {explainer.kind} model, target must be the continuation text to "
                    f"explain (seq2seq: the output text), got {wanted!r}. Give a non-empty string such as ' doctor', "
                    "or leave it unset for the model's own next token."
                )
        elif wanted is None:
            value = predicted[i]
        else:
            value = _class_index(wanted, explainer.n_classes, labels, probe)
        if ex.pair is not None and ex.side == "a":
            side_a[ex.pair] = value
        out.append(value)
    return out


def _class_index(wanted: Any, n_classes: int, labels: Sequence[str], probe: str) -> int:
    if isinstance(wanted, bool):
        wanted = str(wanted)
    if isinstance(wanted, int) and 0 <= wanted < n_classes:
        return wanted
    if isinstance(wanted, str) and wanted in labels:
        return list(labels).index(wanted)
    if isinstance(wanted, str) and wanted.isdigit() and int(wanted) < n_classes:
        return int(wanted)
    raise ConfigError(
        f"Probe {probe!r}: target class {wanted!r} does not exist; this model has {n_classes} classes "
        f"{list(labels)} (indices 0 to {n_classes - 1}). Set target to one of them, or leave it unset to "
        "explain the predicted class."
    )


def explains_own_prediction(examples: Sequence[Example], default: Any) -> list[bool]:
    """Per example, whether :func:`resolve_targets` explains the model's own prediction for that text.

    True where no target was given (neither ``default`` nor the example's own) and the example is
    not a counterfactual pair's side b that takes side a's target. A control text made from such an
    example must explain *its* own prediction too, or the two are not compared like for like.
    """
    sides_a = set()
    out = []
    for ex in examples:
        inherits = ex.pair is not None and ex.side == "b" and ex.pair in sides_a
        if ex.pair is not None and ex.side == "a":
            sides_a.add(ex.pair)
        out.append(not inherits and ex.target is None and default is None)
    return out


def target_label(explainer: Explainer, value: Any, labels: Sequence[str]) -> str:
    """A readable name of an explained output."""
    if explainer.generative:
        return explainer.tokenizer.decode(list(value))
    return labels[value] if value < len(labels) else str(value)


def position_matched_controls(enc: Encoded, mask: np.ndarray, *, rng: np.random.Generator,
                              n_controls: int, pool: Sequence[int] | None = None) -> list[Encoded]:
    """Copies of ``enc`` with every demographic-term token replaced by another token, one for one.

    Each replacement is drawn (with ``rng``) from ``pool`` less every token id that already occurs
    in ``enc`` (the probe passes the non-term content tokens of all its examples), so a control
    keeps the length and the positions of the original and, like the term it replaces, its
    replacement is a token the text does not otherwise contain: a repeated token shares its
    attribution with its twin (with tied embeddings, a causal LM's next token is often a copy of
    one), which would make the controls' share low for a reason other than the words. Without
    ``pool`` it is the text's own non-term content tokens (repeats, then, cannot be avoided).
    Empty when there is nothing to draw from.
    """
    mask = np.asarray(mask, dtype=bool)
    if pool is None:
        candidates = [enc.ids[j] for j in enc.content if not mask[j]]
    else:
        present = set(enc.ids)
        candidates = [int(t) for t in dict.fromkeys(pool) if int(t) not in present]
    positions = np.flatnonzero(mask)
    if not candidates or not positions.size:
        return []
    out = []
    for _ in range(n_controls):
        ids = list(enc.ids)
        for j in positions:
            ids[int(j)] = int(candidates[int(rng.integers(len(candidates)))])
        out.append(replace(enc, ids=tuple(ids)))
    return out


def word_pool(tokenizer: Any, terms: Mapping[str, Sequence[str]]) -> list[int]:
    """Token ids of whole words in the tokenizer's vocabulary (not demographic terms), to draw controls from.

    A word token is alphabetic after its word-start marker (``Ġ`` of byte-level BPE, ``▁`` of
    SentencePiece; WordPiece's whole words have no ``##``), and starts a word the way the terms
    inside a sentence do. Drawing each control's replacement from the whole vocabulary, not from
    the examples' own words, keeps the controls of different examples independent: a small
    shared pool gives every example the same few replacement words, whose common quirk then
    shows up in every example's excess at once.
    """
    vocab = tokenizer.get_vocab()
    marker = next((m for m in ("Ġ", "▁") if sum(t.startswith(m) for t in vocab) > len(vocab) // 10), "")
    banned = {_normalise_word(w) for group in terms.values() for t in group for w in t.split()}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for token, idx in vocab.items():
        word = token[len(marker):] if marker and token.startswith(marker) else None if marker else token
        if word and word.isalpha() and word.isascii() and idx not in special and word.lower() not in banned:
            out.append(int(idx))
    return sorted(out)


def _control_targets(explainer: Explainer, controls: list[Encoded], fixed: list[Any], own: list[bool]) -> list[Any]:
    """Each control's output to explain: its own prediction where ``own``, else its example's target."""
    mine = [c for c, o in zip(controls, own, strict=True) if o]
    predicted = iter(explainer.predict(mine) if mine else [])
    return [next(predicted) if o else t for t, o in zip(fixed, own, strict=True)]


def control_rank_p_value(originals: Sequence[float], controls: Sequence[Sequence[float]]) -> float:
    """Exact one-sided p that the originals outrank their own controls more often than chance.

    Per example, ``C_i`` counts the controls whose share is strictly below the original's (a tie
    counts against the finding). Were the term one more word drawn like its controls, ``C_i``
    would be uniform on ``0..m_i`` (``m_i`` controls) and independent across examples; the p-value
    is ``P(sum C_i >= observed)`` under that law, enumerated exactly. Unlike a sign-flip test of
    the mean excess, it does not assume that excess is symmetric about 0, which it is not: an
    original is one draw and is compared with the mean of several, so under the null its excess
    is skewed (many small gains, a few large losses), and a sign-flip test then alarms far too
    often on few examples.
    """
    observed = sum(int(np.sum(np.asarray(c, dtype=float) < o)) for o, c in zip(originals, controls, strict=True))
    law = np.ones(1)
    for c in controls:
        law = np.convolve(law, np.full(len(c) + 1, 1.0 / (len(c) + 1)))
    return float(min(1.0, law[observed:].sum()))


def _term_share(scores: np.ndarray, mask: np.ndarray) -> float | None:
    mass = np.abs(np.asarray(scores, dtype=float))
    total = mass.sum()
    return float(mass[mask].sum() / total) if total > 0 else None


# -- the probe ----------------------------------------------------------------------------
class AttributionProbe(Probe):
    """Which input tokens drive the model's decision, by three gradient attribution methods.

    Integrated Gradients (Sundararajan et al. 2017) through Captum's ``LayerIntegratedGradients``
    over the input embeddings, with its convergence delta checked: where the attributions miss
    ``f(x) - f(baseline)`` by more than ``max_delta`` of that gap, ``n_steps`` is doubled, up to
    ``max_n_steps``. Saliency (Simonyan et al. 2014) and Input x Gradient (Shrikumar et al. 2017)
    come from the same gradients. For a classifier ``f`` is the explained class's probability; for
    a causal LM it is the log-probability of the explained continuation (Captum's
    ``LLMGradientAttribution``); for a seq2seq LM the log-probability of the explained output given
    the input, with the attributions at the encoder's input embeddings.

    Examples come from ``examples``, else a seeded sample of the audit's data, else a short
    built-in list; when the counterfactual probe ran, its worst pairs are added and both sides are
    explained for side a's output, so the per-word difference of the attributions decomposes the
    gap between them. The card shows per-token heatmaps, the words with the most attribution mass
    and the share of attribution on demographic terms.

    Parameters
    ----------
    methods : sequence of {"integrated_gradients", "saliency", "input_x_gradient"}, default=all three
    examples : sequence of str or mapping, optional
        Texts to explain; a mapping ``{"text": ..., "target": ...}`` sets that text's target.
    max_examples : int, default=8
        Most texts explained (not counting counterfactual pairs).
    target : int or str, optional
        Classifier: class index or label to explain (default: the predicted class). Causal LM: the
        continuation text (default: the greedy next token). Seq2seq LM: the output text (default: the
        greedy output up to its first non-special token).
    use_counterfactual : bool, default=True
        Also explain the counterfactual probe's worst pairs when it ran.
    max_pairs : int, default=5
    n_steps : int, default=50
        Integrated Gradients steps to start with (Captum's name).
    max_n_steps : int, default=400
        Upper limit when ``n_steps`` is raised for examples that did not converge.
    max_delta : float, default=0.05
        Largest acceptable |convergence delta| as a fraction of |f(x) - f(baseline)| (at least 0.01).
    internal_batch_size : int, optional
        Rows per forward pass inside Captum (its name); by default about 8,192 tokens per pass.
    baselines : {"pad", "unk", "mask", "eos", "bos"} or int, default="pad"
        Token replacing every non-special token in the Integrated Gradients baseline.
    demographic_terms : mapping of str to sequence of str, optional
        Axis name to terms; defaults to ``probes/data/attribution/demographic_terms.json``.
    max_demographic_share : float, optional
        The probe warns when the mean share of |attribution| on demographic terms exceeds this
        *and* that share is a finding (below).
    top_k : int, default=15
        Words listed in the "most attribution mass" table.
    position_controls : int, default=3
        Position-matched control texts per example with a demographic term (0: no control, and
        then no share is called a finding).
    alpha : float, default=0.05
        Level of the one-sided test that the terms get more attribution than position explains.

    Notes
    -----
    Where a token sits decides much of its attribution (a causal LM's last prompt token takes
    most of it even with random weights), so a demographic-term share is compared with
    position-matched controls: the same text with each term token replaced by a
    whole word of the tokenizer's vocabulary that the text does not contain
    (:func:`position_matched_controls`, :func:`word_pool`), one token for one. Each
    control explains what its example explains, relative to itself: with the default target its
    *own* prediction (greedy next token or predicted class), since the original's prediction is
    largely decided by the very token a control replaces; with a fixed ``target`` (or a pair's
    side b, explained for side a's output) the same output as its example. The
    statistic is the per-example excess, share on the terms minus the mean share on the same
    positions in the controls; the share is a *finding* only when the exact rank test of
    :func:`control_rank_p_value` (the term's share outranks its own controls' more often than
    chance) has p <= ``alpha``, which needs at least ``ceil(log2(1 / alpha))`` examples
    with a term (5 at 0.05). Computed for the lead method (Integrated Gradients when selected).
    """

    name: ClassVar[str] = "attribution"
    category: ClassVar[str] = "transparency"
    kinds: ClassVar[frozenset[str]] = EXPLAINABLE_KINDS
    description: ClassVar[str] = "Token attributions (Integrated Gradients, Saliency, Input x Gradient) with Captum"
    version: ClassVar[str] = "3"
    after: ClassVar[tuple[str, ...]] = ("counterfactual",)

    def __init__(
        self,
        *,
        methods: Sequence[str] = METHODS,
        examples: Sequence[Any] | None = None,
        max_examples: int = 8,
        target: int | str | None = None,
        use_counterfactual: bool = True,
        max_pairs: int = 5,
        n_steps: int = 50,
        max_n_steps: int = 400,
        max_delta: float = 0.05,
        internal_batch_size: int | None = None,
        baselines: str | int = "pad",
        demographic_terms: Mapping[str, Sequence[str]] | None = None,
        max_demographic_share: float | None = None,
        top_k: int = 15,
        position_controls: int = 3,
        alpha: float = 0.05,
    ) -> None:
        self.methods = methods
        self.examples = examples
        self.max_examples = max_examples
        self.target = target
        self.use_counterfactual = use_counterfactual
        self.max_pairs = max_pairs
        self.n_steps = n_steps
        self.max_n_steps = max_n_steps
        self.max_delta = max_delta
        self.internal_batch_size = internal_batch_size
        self.baselines = baselines
        self.demographic_terms = demographic_terms
        self.max_demographic_share = max_demographic_share
        self.top_k = top_k
        self.position_controls = position_controls
        self.alpha = alpha
        if position_controls < 0 or not 0 < alpha < 1:
            raise ConfigError(f"Probe 'attribution': position_controls must be >= 0 and alpha in (0, 1), got "
                              f"{position_controls!r}, {alpha!r}.")
        check_common_params(self.name, methods=methods, examples=examples, max_examples=max_examples,
                            n_steps=n_steps, baselines=baselines)
        if max_n_steps < n_steps:
            raise ConfigError(f"Probe 'attribution': max_n_steps ({max_n_steps}) must be at least n_steps ({n_steps}).")
        if not max_delta > 0:
            raise ConfigError(f"Probe 'attribution': max_delta must be positive, got {max_delta!r}.")
        if max_pairs < 0 or top_k < 1:
            raise ConfigError(f"Probe 'attribution': max_pairs must be >= 0 and top_k >= 1, got {max_pairs}, {top_k}.")
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ConfigError(f"Probe 'attribution': internal_batch_size must be positive, got {internal_batch_size!r}.")
        if demographic_terms is not None and (not isinstance(demographic_terms, Mapping) or not all(
                isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v) for v in demographic_terms.values())):
            raise ConfigError(
                "Probe 'attribution': demographic_terms must map an axis name to a list of terms, "
                f"e.g. {{gender: [he, she]}}; got {type(demographic_terms).__name__}."
            )

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        explainer = Explainer.for_target(target, baselines=self.baselines)
        examples, notes = collect_examples(probe=self.name, examples=self.examples, context=context,
                                           max_examples=self.max_examples,
                                           pairs=self.max_pairs if self.use_counterfactual else 0)
        wanted = [self.target, *(ex.target for ex in examples)]
        reserve = max([1, *(len(explainer.tokenizer.encode(w, add_special_tokens=False))
                            for w in wanted if isinstance(w, str))]) if explainer.kind == "causal-lm" else 0
        encs = encode_examples(explainer, target, examples, probe=self.name, reserve=reserve)
        labels = target.labels if explainer.kind == "sequence-classification" else []
        targets = resolve_targets(explainer, encs, examples, self.target, probe=self.name, labels=labels)
        attributions: dict[str, list[TokenAttribution]] = {}
        for method in self.methods:
            if method == "integrated_gradients":
                attributions[method] = explainer.integrated_gradients(
                    encs, targets, n_steps=self.n_steps, max_delta=self.max_delta, max_n_steps=self.max_n_steps,
                    internal_batch_size=self.internal_batch_size)
            else:
                attributions[method] = explainer.attribute(encs, targets, method,
                                                           internal_batch_size=self.internal_batch_size)
        terms = self.demographic_terms if self.demographic_terms is not None else demographic_terms()
        masker = data_masker(context, extra=[t for group in terms.values() for t in group])
        return self._report(explainer, encs, examples, targets, attributions, terms, labels, notes, context.rng,
                            masker=masker)

    # -- reporting ----------------------------------------------------------------------------
    def _report(self, explainer: Explainer, encs: list[Encoded], examples: list[Example], targets: list[Any],
                attributions: dict[str, list[TokenAttribution]], terms: Mapping[str, Sequence[str]],
                labels: Sequence[str], notes: list[str], rng: np.random.Generator, *,
                masker: TextMasker | None) -> ProbeResult:
        methods = list(attributions)
        lead = "integrated_gradients" if "integrated_gradients" in methods else methods[0]
        f_name = ("log p(output | input)" if explainer.kind == "seq2seq" else
                  "log p(continuation)" if explainer.kind == "causal-lm" else "p(class)")
        f_values = explainer.output([e.ids for e in encs], targets)
        probs = np.exp(f_values) if explainer.generative else f_values
        dem = [demographic_mask(e, terms) for e in encs]
        metrics: dict[str, Metric] = {}

        with_terms = [i for i, m in enumerate(dem) if m.any()]
        for method in methods:
            shares = []
            for i in with_terms:
                mass = np.abs(attributions[method][i].scores)
                total = mass.sum()
                if total > 0:
                    shares.append(float(mass[dem[i]].sum() / total))
            key = f"demographic_share[{method}]"
            if shares:
                ci = bootstrap_ci(np.asarray(shares), rng=rng)
                metrics[key] = Metric(
                    value=ci.estimate, ci=ci.as_tuple(), ci_level=ci.level, threshold=self.max_demographic_share,
                    direction="lower_is_better",
                    description=f"Share of |{TITLES[method]}| attribution on demographic terms, mean over the "
                                f"{len(shares)} examples that contain one",
                )
            else:
                metrics[key] = Metric(value=None, note="no example contains a demographic term",
                                      description=f"Share of |{TITLES[method]}| attribution on demographic terms")
        if with_terms:
            fractions = [float(dem[i][encs[i].content].mean()) for i in with_terms]
            metrics["demographic_token_fraction"] = Metric(
                value=float(np.mean(fractions)),
                description="Share of tokens that are demographic terms in those examples: the attribution "
                            "share expected if attribution were spread evenly (position is not controlled here; "
                            "see demographic_share_excess)",
            )
        own = explains_own_prediction(examples, self.target)
        finding = self._position_control(explainer, encs, targets, own, terms, dem, attributions[lead], lead, metrics, rng)

        unconverged = 0
        ig_rows = attributions.get("integrated_gradients")
        if ig_rows is not None:
            deltas = np.array([abs(r.delta or 0.0) for r in ig_rows])
            unconverged = sum(not r.converged(self.max_delta) for r in ig_rows)
            metrics["ig_max_abs_delta"] = Metric(
                value=float(deltas.max()), direction="lower_is_better",
                description=f"Largest |convergence delta| of Integrated Gradients: |sum of attributions - "
                            f"({f_name} at the input - at the baseline)|",
            )
            metrics["ig_unconverged"] = Metric(
                value=float(unconverged), threshold=0.0, direction="lower_is_better",
                description=f"Examples whose delta still exceeds {self.max_delta:g} x |f(x) - f(baseline)| "
                            f"at n_steps={self.max_n_steps}",
            )
            metrics["ig_max_n_steps"] = Metric(
                value=float(max(r.n_steps or 0 for r in ig_rows)),
                description=f"Most Integrated Gradients steps any example needed (started at {self.n_steps})",
            )

        private = [masker is not None and ex.private for ex in examples]
        if masker is not None:
            masker.prepare([e.text for e, p in zip(encs, private, strict=True) if p])
        shown = [redact_for_display(e, masker) if p and masker is not None else (e.text, list(e.tokens))
                 for e, p in zip(encs, private, strict=True)]
        # A causal (or seq2seq) LM's predicted output may copy a word of the private row it continues.
        explained = [masker.text(label, limit=None) if p and masker is not None and explainer.generative
                     else label for label, p in zip((target_label(explainer, t, labels) for t in targets), private,
                                                    strict=True)]
        pair_table, pair_shares = self._pairs(explainer, encs, examples, attributions[lead], f_values, lead, shown,
                                              masker)
        if pair_shares:
            ci = bootstrap_ci(np.asarray(pair_shares), rng=rng)
            metrics["counterfactual_term_share"] = Metric(
                value=ci.estimate, ci=ci.as_tuple(), ci_level=ci.level,
                description=f"Share of the |change in {TITLES[lead]} attribution| between the two sides of a "
                            "counterfactual pair that falls on the swapped words (the rest moves to the context)",
            )

        truncated = [i for i, e in enumerate(encs) if e.truncated]
        if truncated:
            notes.append(f"{len(truncated)} example(s) were longer than the model's {explainer.max_length} tokens "
                         f"and were truncated before attribution (marked in the table).")

        tables = [self._examples_table(explainer, encs, examples, targets, attributions, probs, dem, labels, lead,
                                       shown, explained)]
        top_table, top_words, top_mass = self._top_words(encs, attributions, dem, methods, lead, private, masker)
        tables.append(top_table)
        if pair_table is not None:
            tables.append(pair_table)
        figures = []
        if top_words:
            figures.append(Figure(
                title=f"Words with the most {TITLES[lead]} attribution mass",
                svg=interval_bar_chart(top_words, top_mass, reference=None,
                                       xlabel="share of |attribution| summed over examples (each example sums to 1)"),
                caption="Each example's |attribution| is normalised to sum to 1, then summed per word over the examples.",
            ))

        heat = []
        for i, (enc, ex) in enumerate(zip(encs, examples, strict=True)):
            entry: dict[str, Any] = {
                "example": i + 1, "source": ex.source, "text": shown[i][0],
                "explained": explained[i], "output": f_name,
                "probability": float(probs[i]), "truncated": enc.truncated, "tokens": shown[i][1],
                "demographic": [bool(x) for x in dem[i]], "methods": methods,
            }
            for method in methods:
                r = attributions[method][i]
                entry[method] = [_sig(v) for v in r.scores]
                entry[f"{method}_colors"] = heat_colors(r.scores, signed=SIGNED[method])
                if r.delta is not None:
                    entry["ig_delta"] = float(r.delta)
                    entry["ig_n_steps"] = int(r.n_steps or 0)
            heat.append(entry)

        share = metrics[f"demographic_share[{lead}]"]
        if (not finding and self.max_demographic_share is not None and share.value is not None
                and share.value > self.max_demographic_share):
            share = metrics[f"demographic_share[{lead}]"] = share.model_copy(update={"note": (
                f"above max_demographic_share ({self.max_demographic_share:g}) but not beyond what position-matched "
                "controls get, so not a finding and no warning")})
        parts = [f"Explained {len(encs)} text(s) with {', '.join(TITLES[m] for m in methods)}"]
        if ig_rows is not None:
            parts.append(
                f"Integrated Gradients converged on {len(ig_rows) - unconverged} of {len(ig_rows)} "
                f"(max |delta| {metrics['ig_max_abs_delta'].value:.2g}, up to n_steps={int(metrics['ig_max_n_steps'].value or 0)})"
            )
        if share.value is not None:
            parts.append(f"{share.value:.0%} of {TITLES[lead]} attribution falls on demographic terms, which are "
                         f"{metrics['demographic_token_fraction'].value:.0%} of those texts' tokens; "
                         + self._excess_sentence(metrics.get(f"demographic_share_excess[{lead}]"), finding))
        if truncated:
            parts.append(f"{len(truncated)} truncated")
        summary = "; ".join(parts) + "."
        status = "passed"
        if unconverged or (finding and self.max_demographic_share is not None and share.value is not None
                           and share.value > self.max_demographic_share):
            status = "warned"
        if notes:
            summary += " " + " ".join(notes)
        return self.result(status=status, summary=summary, metrics=metrics, headline=f"demographic_share[{lead}]",
                           tables=tables, figures=figures, examples=heat)

    def _position_control(self, explainer: Explainer, encs: list[Encoded], targets: list[Any], own: list[bool],
                          terms: Mapping[str, Sequence[str]], dem: list[np.ndarray], lead_attr: list[TokenAttribution], lead: str,
                          metrics: dict[str, Metric], rng: np.random.Generator) -> bool:
        """Adds ``demographic_share_excess[lead]``; returns whether the term share is a finding.

        A control explains what its example explains, relative to itself: its own prediction where
        the example explains the model's own prediction (``own``), else the same fixed target.
        """
        n_min = max(1, math.ceil(math.log2(1 / self.alpha) - 1e-12))
        key = f"demographic_share_excess[{lead}]"
        description = (f"Share of |{TITLES[lead]}| on demographic terms minus the share the same positions get when "
                       "the terms are replaced by other words of the vocabulary (position-matched controls, each explaining "
                       "its own prediction unless a target is fixed), mean over "
                       "examples; p: exact one-sided test that the term's share outranks its own controls' more "
                       f"often than chance (a finding needs p <= {self.alpha:g} "
                       f"and at least {n_min} examples)")
        if not self.position_controls:
            metrics[key] = Metric(value=None, note="position_controls is 0: the share was not controlled for position",
                                  description=description)
            return False
        owners, controls = [], []
        pool = word_pool(explainer.tokenizer, terms)
        for i, enc in enumerate(encs):
            if dem[i].any() and _term_share(lead_attr[i].scores, dem[i]) is not None:
                made = position_matched_controls(enc, dem[i], rng=rng, n_controls=self.position_controls, pool=pool)
                owners += [i] * len(made)
                controls += made
        if not controls:
            metrics[key] = Metric(value=None, description=description,
                                  note="no example has both a demographic term and another word to compare it with")
            return False
        control_targets = _control_targets(explainer, controls, [targets[i] for i in owners], [own[i] for i in owners])
        if lead == "integrated_gradients":
            rows = explainer.integrated_gradients(controls, control_targets, n_steps=self.n_steps,
                                                  max_delta=self.max_delta, max_n_steps=self.max_n_steps,
                                                  internal_batch_size=self.internal_batch_size)
        else:
            rows = explainer.attribute(controls, control_targets, lead, internal_batch_size=self.internal_batch_size)
        by_example: dict[int, list[float]] = defaultdict(list)
        for i, r in zip(owners, rows, strict=True):
            control_share = _term_share(r.scores, dem[i])
            if control_share is not None:
                by_example[i].append(control_share)
        originals = {i: float(_term_share(lead_attr[i].scores, dem[i])) for i in by_example}
        excess = np.array([originals[i] - float(np.mean(v)) for i, v in sorted(by_example.items())])
        if not excess.size:
            metrics[key] = Metric(value=None, description=description,
                                  note="every control text had zero attribution")
            return False
        ci = bootstrap_ci(excess, rng=rng)
        p_value = control_rank_p_value([originals[i] for i in sorted(by_example)],
                                       [by_example[i] for i in sorted(by_example)])
        note = None if excess.size >= n_min else (
            f"only {excess.size} example(s) with a demographic term: at least {n_min} are needed for a finding")
        metrics[key] = Metric(value=ci.estimate, ci=ci.as_tuple(), ci_level=ci.level, p_value=p_value,
                              direction="lower_is_better", description=description, note=note)
        return bool(excess.size >= n_min and p_value <= self.alpha)

    @staticmethod
    def _excess_sentence(metric: Metric | None, finding: bool) -> str:
        if metric is None or metric.value is None:
            return "not controlled for position, so not a finding" + (f" ({metric.note})" if metric and metric.note else "")
        stats = f"{metric.value:+.2f} [{metric.ci[0]:+.2f}, {metric.ci[1]:+.2f}], p={metric.p_value:.2g}" \
            if metric.ci is not None and metric.p_value is not None else f"{metric.value:+.2f}"
        if finding:
            return f"more than other words of the same texts get at the same positions ({stats}): a finding"
        if metric.note:
            return f"compared with other words at the same positions {stats}: not a finding ({metric.note})"
        return f"no more than position explains (excess over other words at the same positions {stats}): not a finding"

    def _examples_table(self, explainer: Explainer, encs: list[Encoded], examples: list[Example], targets: list[Any],
                        attributions: dict[str, list[TokenAttribution]], probs: np.ndarray, dem: list[np.ndarray],
                        labels: Sequence[str], lead: str, shown: list[tuple[str, list[str]]],
                        explained: list[str]) -> Table:
        ig = attributions.get("integrated_gradients")
        rows = []
        for i, (enc, ex) in enumerate(zip(encs, examples, strict=True)):
            scores = attributions[lead][i].scores
            top = int(np.argmax(np.abs(scores))) if len(scores) else 0
            mass = np.abs(scores).sum()
            text = shown[i][0]
            row = [i + 1, ex.source, text if len(text) <= 160 else text[:157] + "...",
                   explained[i], _sig(probs[i]), shown[i][1][top],
                   _sig(np.abs(scores)[dem[i]].sum() / mass) if dem[i].any() and mass > 0 else None]
            if ig is not None:
                r = ig[i]
                row += [_sig((r.f_x or 0) - (r.f_baseline or 0)), _sig(r.scores.sum()), _sig(r.delta or 0.0),
                        r.n_steps, bool(r.converged(self.max_delta))]
            row.append(f"yes ({enc.n_tokens_full} tokens)" if enc.truncated else "no")
            rows.append(row)
        columns = ["#", "source", "text", "explained", "probability", f"top token ({TITLES[lead]})",
                   "demographic share"]
        if ig is not None:
            columns += ["f(x) - f(baseline)", "sum of IG", "IG delta", "IG n_steps", "converged"]
        columns.append("truncated")
        f_name = ("log-probability of the output given the input (seq2seq)" if explainer.kind == "seq2seq" else
                  "log-probability of the continuation" if explainer.kind == "causal-lm" else "class probability")
        return Table(title="Explained examples", columns=columns, rows=rows, caption=(
            f"f is the {f_name}; Integrated Gradients' baseline replaces every non-special token with "
            f"{explainer.baseline_name}. Completeness: sum of IG = f(x) - f(baseline) + delta."))

    def _top_words(self, encs: list[Encoded], attributions: dict[str, list[TokenAttribution]],
                   dem: list[np.ndarray], methods: list[str], lead: str,
                   private: list[bool], masker: TextMasker | None) -> tuple[Table, list[str], list[float]]:
        mass: dict[str, dict[str, float]] = {m: defaultdict(float) for m in methods}
        signed: dict[str, list[float]] = defaultdict(list)
        count: dict[str, int] = defaultdict(int)
        is_term: dict[str, bool] = {}
        for i, enc in enumerate(encs):
            word_dem = np.zeros(len(enc.word_texts), dtype=bool)
            for t, w in enumerate(enc.words):
                if w is not None and dem[i][t]:
                    word_dem[w] = True
            for method in methods:
                ws = word_scores(enc, attributions[method][i].scores)
                total = np.abs(ws).sum()
                for w, word in enumerate(enc.word_texts):
                    key = _normalise_word(word) or word
                    if private[i] and masker is not None:
                        key = masker.word(key)
                    if total > 0:
                        mass[method][key] += float(abs(ws[w]) / total)
                    if method == lead:
                        signed[key].append(float(ws[w]))
                        count[key] += 1
                        is_term[key] = is_term.get(key, False) or bool(word_dem[w])
        ranked = sorted(mass[lead], key=lambda k: -mass[lead][k])[: self.top_k]
        rows = [[word, count[word], *[_sig(mass[m].get(word, 0.0)) for m in methods],
                 _sig(np.mean(signed[word])), is_term[word]] for word in ranked]
        table = Table(title="Words with the most attribution mass", columns=[
            "word", "occurrences", *[f"mass ({TITLES[m]})" for m in methods], f"mean signed {TITLES[lead]}",
            "demographic term"], rows=rows,
            caption="Mass: each example's |attribution| per word, normalised to sum to 1, summed over examples.")
        return table, ranked, [mass[lead][w] for w in ranked]

    def _pairs(self, explainer: Explainer, encs: list[Encoded], examples: list[Example],
               lead_attr: list[TokenAttribution], f_values: np.ndarray, lead: str, shown: list[tuple[str, list[str]]],
               masker: TextMasker | None) -> tuple[Table | None, list[float]]:
        sides: dict[int, dict[str, int]] = defaultdict(dict)
        for i, ex in enumerate(examples):
            if ex.pair is not None and ex.side is not None:
                sides[ex.pair][ex.side] = i
        rows, shares = [], []
        for pair, idx in sorted(sides.items()):
            if set(idx) != {"a", "b"}:
                continue
            a, b = idx["a"], idx["b"]
            wa, wb = word_scores(encs[a], lead_attr[a].scores), word_scores(encs[b], lead_attr[b].scores)
            share = None
            moved = None
            if len(wa) == len(wb):
                change = np.abs(wa - wb)
                swapped = np.array([_normalise_word(x) != _normalise_word(y)
                                    for x, y in zip(encs[a].word_texts, encs[b].word_texts, strict=True)])
                if change.sum() > 0 and swapped.any():
                    share = float(change[swapped].sum() / change.sum())
                    shares.append(share)
                context = np.where(swapped, -1.0, change)
                if context.size and context.max() > 0:
                    moved = encs[a].word_texts[int(np.argmax(context))]
                    moved = masker.word(moved) if masker is not None and examples[a].private else moved
            rows.append([pair + 1, examples[a].source.split(", side")[0], shown[a][0], shown[b][0],
                         _sig(f_values[a]), _sig(f_values[b]), _sig(f_values[a] - f_values[b]),
                         _sig(lead_attr[a].scores.sum() - lead_attr[b].scores.sum()),
                         None if share is None else _sig(share), moved])
        if not rows:
            return None, []
        f_name = "log-probability of side a's continuation" if explainer.generative else \
            "probability of side a's class"
        return Table(
            title="Counterfactual pairs: where the attribution moves",
            columns=["pair", "from", "side a", "side b", "f(a)", "f(b)", "f(a) - f(b)",
                     f"sum of {TITLES[lead]}, a - b", "share of change on swapped words",
                     "context word that moved most"],
            rows=rows,
            caption=f"f is the {f_name}; both sides are explained for it. With Integrated Gradients and the same "
                    "baseline, the per-word difference of the attributions decomposes f(a) - f(b) (up to the "
                    "convergence deltas). Shares need both sides to have the same number of words.",
        ), shares


def check_common_params(probe: str, *, methods: Sequence[str], examples: Sequence[Any] | None, max_examples: int,
                        n_steps: int, baselines: str | int) -> None:
    """Run-time checks of the parameters the transparency probes share."""
    if isinstance(methods, str) or not methods:
        raise ConfigError(f"Probe {probe!r}: methods must be a non-empty list, e.g. [integrated_gradients], got {methods!r}.")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"Probe {probe!r}: unknown method(s) {unknown}. Use some of {list(METHODS)}.")
    if isinstance(examples, str):
        raise ConfigError(f"Probe {probe!r}: examples must be a list of texts, got one string. Write examples: [\"...\"].")
    if max_examples < 1:
        raise ConfigError(f"Probe {probe!r}: max_examples must be at least 1, got {max_examples!r}.")
    if n_steps < 1:
        raise ConfigError(f"Probe {probe!r}: n_steps must be at least 1, got {n_steps!r}.")
    if not (isinstance(baselines, int) or baselines in BASELINE_TOKENS):
        raise ConfigError(f"Probe {probe!r}: baselines must be one of {list(BASELINE_TOKENS)} or a token id, "
                          f"got {baselines!r}.")


def encode_examples(explainer: Explainer, target: AuditTarget, examples: Sequence[Example], *, probe: str,
                    reserve: int = 1) -> list[Encoded]:
    """Encode every example, with a clear error for one that has no tokens to attribute."""
    target.tokenize([ex.text for ex in examples])  # counts truncated texts for the card's manifest
    encs = []
    for i, ex in enumerate(examples):
        enc = explainer.encode(ex.text, reserve=reserve if explainer.kind == "causal-lm" else 0)
        if not len(enc.content):
            received = "its text is not shown" if ex.private else f"received {ex.text[:60]!r}"
            raise DataError(
                f"Probe {probe!r}: example {i} ({ex.source}) has no tokens to attribute ({received}). "
                "Remove it or give a text with at least one word."
            )
        encs.append(enc)
    return encs
