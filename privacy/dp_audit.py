"""An empirical check of a DP-SGD guarantee from one training run (Steinke, Nasr and Jagielski 2023).

"Privacy auditing with one (1) training run" (NeurIPS 2023): plant ``m`` random canary examples,
each included in the training data independently with probability 1/2; train once; then guess,
from the trained model alone, which canaries were included. A mechanism that is
(epsilon, delta)-DP cannot let anyone guess much better than randomised response with
``e^epsilon / (1 + e^epsilon)`` accuracy, so many correct guesses refute small epsilons. The
number of correct guesses ``v`` out of ``r`` guesses becomes a lower bound on epsilon at 95%
confidence (the paper's Theorem 3.1 and Algorithm 2).

What the bound means: if the training is (epsilon, delta)-DP as the accountant says, the bound
exceeds epsilon with probability at most 5%. A bound above the accountant's epsilon therefore
points to a broken implementation (noise not added, wrong accounting, a leak around the
mechanism). A bound far below epsilon is expected and proves nothing: one run with a black-box
loss-based guesser is a weak attacker, and DP bounds the worst case.

The inclusion bits and the canaries come from operating-system entropy (:mod:`secrets`), never
from the recorded seed, and are written only sealed (AES-GCM under the key of
:func:`audit.records.secret_key`, as the exposure canaries are), so the released model and its
record do not reveal them.

Examples
--------
>>> from privacy.dp_audit import epsilon_lower_bound
>>> round(epsilon_lower_bound(m=1000, r=100, v=100, delta=1e-5), 2)  # 100 of 100 guesses right
3.47
>>> epsilon_lower_bound(m=1000, r=100, v=50, delta=1e-5)  # a coin would do as well
0.0
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.errors import ConfigError, DataError

__all__ = [
    "AUDIT_MEANING",
    "AuditCanaries",
    "AuditOutcome",
    "OneRunAudit",
    "audit_from_scores",
    "epsilon_lower_bound",
    "epsilon_p_value",
]

METHOD = "Steinke, Nasr and Jagielski 2023, Privacy auditing with one (1) training run (Theorem 3.1, Algorithm 2)"
AUDIT_MEANING = (
    "If training is (epsilon, delta)-DP as the accountant says, this bound exceeds epsilon with probability at most "
    "{alpha:.0%}. A bound above the accountant's epsilon means the implementation is broken; a bound far below it is "
    "expected (one run, a black-box loss-based guesser) and is no proof of privacy."
)
BAD_COUNTS = "One-run audit: need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m}); got those. {fix}"
BAD_CONFIDENCE = "One-run audit: confidence must be in (0, 1), got {value!r}. Use e.g. 0.95."
BAD_DELTA = "One-run audit: delta must be in [0, 1), got {value!r}. Use the accountant's delta."
TOO_FEW_CANARIES = ("audit_canaries must be 0 (no audit) or an integer of at least {least}, got {value!r}: fewer "
                    "canaries cannot refute any epsilon. Use e.g. 1000 (the paper uses 1000 or more).")
GUESS_FRACTIONS = (0.05, 0.1, 0.25)
CANARY_TOKENS = 8


# -- the bound ---------------------------------------------------------------------------------
def _check_counts(m: int, r: int, v: int) -> None:
    if not (isinstance(m, (int, np.integer)) and isinstance(r, (int, np.integer)) and isinstance(v, (int, np.integer))
            and 0 <= v <= r <= m):
        raise ConfigError(BAD_COUNTS.format(v=v, r=r, m=m, fix="Count the guesses made and the correct ones."))


def epsilon_p_value(*, m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Largest probability that an (epsilon, delta)-DP training lets ``r`` guesses get ``v`` or more right.

    The paper's Theorem 3.1: with ``f(w) = P[Binomial(r, e^eps / (1 + e^eps)) >= w]``,
    ``P[W >= v] <= f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i``.
    """
    from scipy.stats import binom

    _check_counts(m, r, v)
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    if v == 0 or delta == 0:
        return min(tail, 1.0)
    # f(v - i) - f(v) = P[v - i <= Binomial < v], for i = 1..v: running sums of the pmf below v.
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))
    slack = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * slack, 1.0)


def epsilon_lower_bound(*, m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that ``v`` correct of ``r`` guesses (over ``m`` canaries) refute at ``confidence``.

    Zero when even epsilon = 0 cannot be refuted. Bisection on the p-value of
    :func:`epsilon_p_value`, which grows with epsilon, to within 1e-6.
    """
    if not 0 < confidence < 1:
        raise ConfigError(BAD_CONFIDENCE.format(value=confidence))
    if not 0 <= delta < 1:
        raise ConfigError(BAD_DELTA.format(value=delta))
    alpha = 1.0 - confidence
    _check_counts(m, r, v)
    if epsilon_p_value(m=m, r=r, v=v, epsilon=0.0, delta=delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while epsilon_p_value(m=m, r=r, v=v, epsilon=high, delta=delta) < alpha:
        low, high = high, 2.0 * high
        if high > 1e4:  # cannot happen for v <= r: the tail tends to 1 as epsilon grows
            return low
    while high - low > 1e-6:
        mid = (low + high) / 2
        low, high = (mid, high) if epsilon_p_value(m=m, r=r, v=v, epsilon=mid, delta=delta) < alpha else (low, mid)
    return low


@dataclass(frozen=True)
class AuditOutcome:
    """What the guesser achieved and the bound it gives.

    ``choices`` holds, for each (``k_plus``, ``k_minus``) guess count tried, the guesses ``r``,
    correct ``v`` and bound at the Bonferroni-corrected confidence ``confidence / len(choices)``
    (every choice is paid for, so picking the best is still valid at ``confidence``).
    """

    epsilon_lower_bound: float
    confidence: float
    delta: float
    m: int
    included: int
    guesses: int
    correct: int
    k_plus: int
    k_minus: int
    choices: tuple[dict[str, Any], ...]

    def to_record(self) -> dict[str, Any]:
        return {"epsilon_lower_bound": self.epsilon_lower_bound, "confidence": self.confidence, "delta": self.delta,
                "canaries": self.m, "guesses": self.guesses, "correct": self.correct,
                "guessed_included": self.k_plus, "guessed_excluded": self.k_minus,
                "choices": [dict(c) for c in self.choices],
                "multiple_choices": "Bonferroni: each guess count tested at (1 - confidence) / number of choices"}


def audit_from_scores(scores: Sequence[float], included: Sequence[bool], *, delta: float, confidence: float = 0.95,
                      guess_counts: Sequence[tuple[int, int]] | None = None) -> AuditOutcome:
    """Guess inclusion from scores (higher = more likely trained on) and bound epsilon.

    For each ``(k_plus, k_minus)`` the ``k_plus`` highest-scoring canaries are guessed included,
    the ``k_minus`` lowest excluded, the rest abstained on. Default counts: 5%, 10% and 25% of the
    canaries on each side.
    """
    y = np.asarray(scores, dtype=float)
    bits = np.asarray(included, dtype=bool)
    m = int(y.size)
    if m != bits.size or m < 2 or not np.all(np.isfinite(y)):
        raise DataError(f"One-run audit: need one finite score per canary (at least 2); got {m} scores for "
                        f"{bits.size} canaries. Check the canary losses.")
    if guess_counts is None:
        guess_counts = sorted({(max(1, int(m * f)), max(1, int(m * f))) for f in GUESS_FRACTIONS})
    guess_counts = [(int(a), int(b)) for a, b in guess_counts]
    if not guess_counts or any(a < 0 or b < 0 or a + b == 0 or a + b > m for a, b in guess_counts):
        raise ConfigError(f"One-run audit: guess counts must be pairs (k_plus, k_minus) with 0 < k_plus + k_minus <= "
                          f"{m}; got {guess_counts}.")
    # Ties broken at random (OS entropy): a stable sort would favour the canaries listed first.
    order = np.lexsort((np.random.default_rng(int.from_bytes(os.urandom(8), "little")).random(m), -y))
    per_choice = 1.0 - (1.0 - confidence) / len(guess_counts)
    choices = []
    for k_plus, k_minus in guess_counts:
        top, bottom = order[:k_plus], order[m - k_minus:] if k_minus else order[:0]
        correct = int(bits[top].sum() + (~bits[bottom]).sum())
        bound = epsilon_lower_bound(m=m, r=k_plus + k_minus, v=correct, delta=delta, confidence=per_choice)
        choices.append({"k_plus": k_plus, "k_minus": k_minus, "guesses": k_plus + k_minus, "correct": correct,
                        "epsilon_lower_bound": bound})
    best = max(choices, key=lambda c: c["epsilon_lower_bound"])
    return AuditOutcome(epsilon_lower_bound=float(best["epsilon_lower_bound"]), confidence=confidence, delta=delta,
                        m=m, included=int(bits.sum()), guesses=best["guesses"], correct=best["correct"],
                        k_plus=best["k_plus"], k_minus=best["k_minus"], choices=tuple(choices))


# -- the canaries --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditCanaries:
    """Random examples for the one-run audit, each included with probability 1/2 (OS entropy).

    A canary is ``CANARY_TOKENS`` tokens drawn uniformly from the tokenizer's ordinary vocabulary,
    with a uniformly random class for a classifier (a mislabelled example the model must memorise
    to fit).
    """

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    included: tuple[bool, ...]

    @classmethod
    def generate(cls, n: int, *, tokenizer: Any, n_classes: int) -> AuditCanaries:
        draw = secrets.SystemRandom()
        vocab = _clean_tokens(tokenizer)
        if len(vocab) < 2:
            raise DataError(f"The tokenizer has {len(vocab)} ordinary token(s); audit canaries need a vocabulary.")
        texts: list[str] = []
        seen: set[str] = set()
        while len(texts) < n:
            text = tokenizer.decode([draw.choice(vocab) for _ in range(CANARY_TOKENS)]).strip()
            if text and text not in seen:
                seen.add(text)
                texts.append(text)
        labels = tuple(draw.randrange(n_classes) if n_classes > 1 else 0 for _ in range(n))
        return cls(texts=tuple(texts), labels=labels, included=tuple(bool(secrets.randbits(1)) for _ in range(n)))

    def to_record(self) -> dict[str, Any]:
        """Public counts, everything else sealed: the canaries, their labels and the inclusion bits."""
        from audit.records import secret_key

        key = secret_key(create=True)
        assert key is not None  # create=True either returns a key or raises OutputError
        public = {"planted": len(self.texts), "inclusion": "independent, probability 1/2, OS entropy (secrets module)"}
        payload = {"texts": list(self.texts), "labels": list(self.labels), "included": list(self.included)}
        return {**public, "secrets": "sealed", "sealed": _seal(key, payload, public)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AuditCanaries:
        payload = _unseal(record)
        return cls(texts=tuple(payload["texts"]), labels=tuple(int(v) for v in payload["labels"]),
                   included=tuple(bool(v) for v in payload["included"]))


def _clean_tokens(tokenizer: Any) -> list[int]:
    """Ordinary tokens that decode to printable text on their own (no special token, no broken byte)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i]) if i not in special else ""
        if text.strip() and text.isprintable() and "\ufffd" not in text and not text.startswith("##"):
            out.append(i)
    return out


def _associated(public: Mapping[str, Any]) -> bytes:
    return json.dumps({"audit": "one-run", "planted": public["planted"]}, sort_keys=True).encode()


def _seal(key: bytes, payload: Mapping[str, Any], public: Mapping[str, Any]) -> dict[str, str]:
    from audit.records import key_id
    from privacy.leakage import _aead

    nonce = os.urandom(12)
    cipher = _aead(key).encrypt(nonce, json.dumps(payload).encode("utf-8"), _associated(public))
    return {"scheme": "AES-256-GCM (cryptography), public fields as associated data", "key_id": key_id(key),
            "nonce": nonce.hex(), "ciphertext": cipher.hex()}


def _unseal(record: Mapping[str, Any]) -> dict[str, Any]:
    from cryptography.exceptions import InvalidTag

    from audit.records import KEY_FILE_ENV, key_file_path, key_id, secret_key
    from privacy.leakage import _aead

    sealed = record.get("sealed") if isinstance(record, Mapping) else None
    if not isinstance(sealed, Mapping) or not all(isinstance(sealed.get(k), str) for k in ("key_id", "nonce", "ciphertext")):
        raise DataError("The audit canaries record has no valid 'sealed' entry (key_id, nonce, ciphertext). "
                        "Restore the record written by the trainer.")
    key = secret_key(create=False)
    if key is None or key_id(key) != sealed["key_id"]:
        raise DataError(f"The audit canaries are sealed with secret key {sealed['key_id']}, which is not on this "
                        f"machine. Copy the trainer's key file to {key_file_path()} (or point {KEY_FILE_ENV} at it).")
    try:
        plain = _aead(key).decrypt(bytes.fromhex(sealed["nonce"]), bytes.fromhex(sealed["ciphertext"]),
                                   _associated(record))
    except (ValueError, KeyError, InvalidTag):
        raise DataError(f"The sealed audit canaries do not authenticate under key {sealed['key_id']} (the record "
                        "was altered). Restore the record written by the trainer.") from None
    return dict(json.loads(plain.decode("utf-8")))


# -- the audit around a training run -------------------------------------------------------------
class OneRunAudit:
    """Plant canaries before DP training, score them after, and bound epsilon.

    Parameters
    ----------
    n_canaries : int
        Canaries generated (``m``); about half are trained on.
    confidence : float, default=0.95
    guess_counts : sequence of (int, int), optional
        ``(k_plus, k_minus)`` pairs; default 5%, 10% and 25% of ``m`` on each side.

    The score of a canary is how much training lowered its loss (loss under the model before
    training minus after), so canaries that are easy for the base model are not mistaken for
    trained-on ones.
    """

    def __init__(self, *, n_canaries: int, confidence: float = 0.95,
                 guess_counts: Sequence[tuple[int, int]] | None = None) -> None:
        self.n_canaries = n_canaries
        self.confidence = confidence
        self.guess_counts = guess_counts

    def plant(self, texts: list[str], labels: list[int], *, tokenizer: Any, n_classes: int) -> tuple[list[str], list[int]]:
        """The training texts and labels with the included canaries appended (Poisson sampling ignores order)."""
        self.canaries_ = AuditCanaries.generate(self.n_canaries, tokenizer=tokenizer, n_classes=n_classes)
        kept = [i for i, inc in enumerate(self.canaries_.included) if inc]
        return ([*texts, *(self.canaries_.texts[i] for i in kept)],
                [*labels, *(self.canaries_.labels[i] for i in kept)])

    def score_before(self, losses: Callable[[list[str], list[int]], np.ndarray]) -> None:
        self.before_ = np.asarray(losses(list(self.canaries_.texts), list(self.canaries_.labels)), dtype=float)

    def score_after(self, losses: Callable[[list[str], list[int]], np.ndarray], *, delta: float,
                    epsilon: float) -> AuditOutcome:
        after = np.asarray(losses(list(self.canaries_.texts), list(self.canaries_.labels)), dtype=float)
        self.outcome_ = audit_from_scores(self.before_ - after, self.canaries_.included, delta=delta,
                                          confidence=self.confidence, guess_counts=self.guess_counts)
        self.epsilon_ = epsilon
        return self.outcome_

    @property
    def included_rows(self) -> int:
        return int(sum(self.canaries_.included))

    def to_record(self) -> dict[str, Any]:
        """The ``audit`` entry of the ``dp`` record: the bound, how it was found, the canaries sealed."""
        out = self.outcome_
        return {
            "method": METHOD,
            "epsilon_lower_bound": out.epsilon_lower_bound,
            "accountant_epsilon": self.epsilon_,
            "confidence": out.confidence,
            "delta": out.delta,
            "meaning": AUDIT_MEANING.format(alpha=1 - out.confidence),
            "consistent": out.epsilon_lower_bound <= self.epsilon_,
            "score": "loss before training minus loss after (higher: guessed included)",
            "guesser": out.to_record(),
            "canaries": self.canaries_.to_record(),
        }


def example_losses(model: Any, ids: Any, mask: Any, labels: Any, *, task: str, inputs: Callable[[Any, Any], dict],
                   batch_size: int) -> np.ndarray:
    """Each example's loss in evaluation mode: mean next-token NLL (causal LM) or cross-entropy (classifier)."""
    import torch

    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                part = slice(start, start + batch_size)
                batch = inputs(ids[part], mask[part])
                logits = model(**batch).logits.float()
                if task == "sequence-classification":
                    loss = torch.nn.functional.cross_entropy(logits, labels[part].to(logits.device), reduction="none")
                else:
                    targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
                    token = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets,
                                                              ignore_index=-100, reduction="none")
                    loss = token.sum(1) / (targets != -100).sum(1).clamp(min=1)
                out.append(loss.double().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def check_audit_canaries(value: Any) -> None:
    """``0`` (no audit) or an integer large enough for a bound to be possible."""
    if isinstance(value, bool) or not isinstance(value, int) or (value != 0 and value < 20):
        raise ConfigError(TOO_FEW_CANARIES.format(least=20, value=value))
