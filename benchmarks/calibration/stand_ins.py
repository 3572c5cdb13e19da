"""Models whose truth is known by construction, as duck-typed stand-ins for :class:`audit.AuditTarget`.

Each implements only the operations the probe it serves calls (``predict_proba``, ``embed``,
``token_log_likelihoods``, ``log_likelihood``, ``generate``), as a known function of the input,
so the size of any planted effect is known exactly rather than estimated.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from audit.target import TokenLogProbs

__all__ = ["EmbeddingTable", "LikelihoodTable", "ScriptedGenerator", "TermClassifier", "word_value"]

_WORD = re.compile(r"[a-z0-9'-]+")


def word_value(seed: int, word: str, scale: float) -> float:
    """A fixed N(0, scale^2) value per (seed, word): the 'known linear function of per-word values'."""
    rng = np.random.default_rng([seed, zlib.crc32(word.lower().encode("utf-8"))])
    return float(scale * rng.standard_normal())


class _Stand:
    """What every probe reads from a target besides its operations."""

    def __init__(self, *, kind: str, model_id: str, labels: Sequence[str] = ()) -> None:
        self.kind = kind
        self.model_id = model_id
        self._labels = list(labels)
        self.fingerprint = f"calibration:{model_id}"
        self.records: dict[str, Any] = {}
        self.thresholds = None
        self.path = None
        self.device = "cpu"

    @property
    def labels(self) -> list[str]:
        return list(self._labels)


class TermClassifier(_Stand):
    """Binary classifier: ``logit = intercept + sum of per-word values + value of the group term``.

    ``terms`` maps each counterpart term (a phrase, matched case-insensitively as whole words,
    longest first) to its logit value; every other word ``w`` adds ``word_value(seed, w, scale)``.
    ``row_logits`` short-circuits texts of the form ``row:<i>`` to a given logit (data-set rows).
    """

    def __init__(self, *, seed: int, terms: Mapping[str, float] | None = None, zero_words: Sequence[str] = (),
                 scale: float = 0.5, intercept: float = 0.0, row_logits: Mapping[str, float] | None = None) -> None:
        super().__init__(kind="sequence-classification", model_id=f"term-classifier-{seed}", labels=["negative", "positive"])
        self.seed = seed
        self.terms = {k.lower(): float(v) for k, v in (terms or {}).items()}
        self.zero_words = {w.lower() for w in zero_words}
        self.scale = scale
        self.intercept = intercept
        self.row_logits = dict(row_logits or {})
        words = sorted(self.terms, key=len, reverse=True)
        self._pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b") if words else None
        self._cache: dict[str, float] = {}

    def logit(self, text: str) -> float:
        if text in self.row_logits:
            return self.row_logits[text]
        if text not in self._cache:
            lower = text.lower()
            value = self.intercept
            if self._pattern is not None:
                for match in self._pattern.finditer(lower):
                    value += self.terms[match.group(0)]
                lower = self._pattern.sub(" ", lower)
            value += sum(word_value(self.seed, w, self.scale) for w in _WORD.findall(lower) if w not in self.zero_words)
            self._cache[text] = value
        return self._cache[text]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-np.array([self.logit(t) for t in texts], dtype=float)))
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, texts: Sequence[str], *, sensitive_features: Sequence[Any] | None = None) -> np.ndarray:
        return self.predict_proba(texts).argmax(axis=1)


class EmbeddingTable(_Stand):
    """Encoder whose sentence embeddings are given vectors (a known generative model)."""

    def __init__(self, vectors: Mapping[str, np.ndarray], *, model_id: str) -> None:
        super().__init__(kind="encoder", model_id=model_id)
        self.vectors = vectors

    def embed(self, texts: Sequence[str], *, pooling: str = "mean", layer: int = -1) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts]).astype(np.float32)


class LikelihoodTable(_Stand):
    """Causal LM whose per-token log-probabilities are a known function of the text."""

    def __init__(self, score: Callable[[str], float], *, model_id: str, n_tokens: Callable[[str], int] | None = None) -> None:
        super().__init__(kind="causal-lm", model_id=model_id)
        self.score = score
        self.n_tokens = n_tokens or (lambda text: max(1, len(text.split())))

    def token_log_likelihoods(self, texts: Sequence[str]) -> list[TokenLogProbs]:
        out = []
        for text in texts:
            n = self.n_tokens(text)
            per_token = np.full(n + 1, self.score(text) / n)
            per_token[0] = np.nan  # the first token has no context, as for a causal LM without BOS
            out.append(TokenLogProbs(input_ids=np.arange(n + 1), log_probs=per_token))
        return out

    def log_likelihood(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.score(t) for t in texts], dtype=float)


class ScriptedGenerator(_Stand):
    """Causal LM whose continuation of each prompt is drawn from a known pool, seeded per prompt."""

    def __init__(self, continue_: Callable[[str], str], *, model_id: str) -> None:
        super().__init__(kind="causal-lm", model_id=model_id)
        self.continue_ = continue_

    def generate(self, prompts: Sequence[str], **decoding: Any) -> list[str]:
        return [self.continue_(p) for p in prompts]
