"""How much a model leaks about its training data: membership inference and canary exposure.

**Membership inference** (Yeom et al. 2018, "Privacy Risk in Machine Learning: Analyzing the
Connection to Overfitting"): an attacker who sees a sample's loss guesses "member" when the loss
is low. Over known members and non-members, the attack's ROC AUC says how well that works: 0.5
means members are indistinguishable, 1.0 that every member has a lower loss than every
non-member. :func:`loss_threshold_attack` reports the AUC with a bootstrap interval, the
membership advantage (max TPR - FPR, Yeom et al.'s measure) and the TPR at low FPR.

**Canary exposure** (Carlini et al. 2019, "The Secret Sharer"): random secrets ("canaries")
are put in the training data a known number of times; afterwards each canary's log-perplexity is
ranked among all other values its secret could have taken (the randomness space R).
``exposure = log2 |R| - log2 rank``: about 1 bit for a canary the model did not learn, up to
``log2 |R|`` for one it ranks first. A DP or federated trainer inserts canaries with
:class:`CanarySet` and records them beside the model, and the ``canary_exposure`` probe measures
them, so the card shows what the privacy mechanism bought::

    secret_rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))  # never from a recorded seed
    canaries = CanarySet.generate(repetitions=(1, 10, 100), rng=secret_rng)
    train_texts = canaries.insert(train_texts, rng=np.random.default_rng(seed))
    ...  # train, then in the record written beside the model (secrets sealed, see CanarySet.to_record):
    record["dp"]["canaries"] = canaries.to_record()
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from audit.errors import ConfigError, DataError, NotApplicableError
from audit.records import KEY_FILE_ENV, key_file_path, key_id, secret_key
from audit.stats import Interval, bootstrap_ci

__all__ = [
    "DEFAULT_CANARY_TEMPLATE",
    "AttackResult",
    "CanaryExposure",
    "CanarySet",
    "canary_exposure",
    "loss_threshold_attack",
    "sample_losses",
    "sequence_log_perplexity",
]

DEFAULT_CANARY_TEMPLATE = "My secret code is {secret}."
RECORD_KEY = "canaries"


# -- membership inference -------------------------------------------------------------------
def _class_indices(target: Any, labels: Sequence[Any]) -> np.ndarray:
    names = [str(n) for n in target.labels]
    out = []
    for value in labels:
        if isinstance(value, (bool, np.bool_, np.integer)) or (isinstance(value, float) and value.is_integer()):
            value = int(value)
        if isinstance(value, int) and 0 <= value < len(names):
            out.append(value)
        elif str(value) in names:
            out.append(names.index(str(value)))
        else:
            raise DataError(
                f"Label {value!r} is neither a class index (0 to {len(names) - 1}) nor a class name of "
                f"{target.model_id!r} ({names}). Give labels the classifier knows."
            )
    return np.asarray(out, dtype=int)


def sample_losses(target: Any, texts: Sequence[str], labels: Sequence[Any] | None = None) -> np.ndarray:
    """Each sample's loss, the quantity the loss-threshold attack thresholds.

    Causal LMs: mean negative log-likelihood per predicted token. Masked LMs: mean negative
    pseudo-log-likelihood per token (Salazar et al. 2020). Sequence classifiers: cross-entropy
    ``-log p(label | text)``, which needs ``labels`` (class indices or names).
    """
    texts = [str(t) for t in texts]
    if target.kind == "sequence-classification":
        if labels is None:
            raise ConfigError(f"Membership inference on the classifier {target.model_id!r} needs labels: set "
                              "label_column to the column holding each sample's true class.")
        if len(labels) != len(texts):
            raise DataError(f"Got {len(texts)} texts but {len(labels)} labels. Give one label per text.")
        probs = target.predict_proba(texts)
        picked = probs[np.arange(len(texts)), _class_indices(target, labels)]
        return -np.log(np.clip(picked.astype(np.float64), np.finfo(np.float64).tiny, 1.0))
    if target.kind == "causal-lm":
        per_token = target.token_log_likelihoods(texts)
    elif target.kind == "masked-lm":
        per_token = target.masked_token_log_probs(texts)
    else:
        raise NotApplicableError(f"Membership inference needs a loss; {target.model_id!r} is a plain {target.kind} "
                                 "with no language-model or classifier head.")
    losses = []
    for text, item in zip(texts, per_token, strict=True):
        scored = item.log_probs[np.isfinite(item.log_probs)]
        if scored.size == 0:
            raise DataError(f"A text of {len(text)} characters has no scorable token for {target.model_id!r}. "
                            "Drop empty or one-token texts from the member and non-member samples.")
        losses.append(-float(scored.mean()))
    return np.asarray(losses)


def _rank_auc(member_scores: np.ndarray, non_member_scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """ROC AUC as the Mann-Whitney U statistic over ``n1 * n2`` (ties count 1/2), vectorised over the
    leading axes so the bootstrap can resample thousands of times; equal to scikit-learn's
    ``roc_auc_score`` on the same scores."""
    from scipy.stats import rankdata

    x = np.moveaxis(np.asarray(member_scores, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(non_member_scores, dtype=float), axis, -1)
    batch = np.broadcast_shapes(x.shape[:-1], y.shape[:-1])
    both = np.concatenate([np.broadcast_to(x, batch + x.shape[-1:]), np.broadcast_to(y, batch + y.shape[-1:])], axis=-1)
    n1, n2 = x.shape[-1], y.shape[-1]
    rank_sum = rankdata(both, axis=-1)[..., :n1].sum(axis=-1)
    return (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n2)


@dataclass(frozen=True)
class AttackResult:
    """Outcome of the loss-threshold membership inference attack.

    ``auc`` carries a bootstrap interval (members and non-members resampled separately);
    ``p_value`` is the one-sided Mann-Whitney test of "members have lower loss" (AUC > 0.5).
    ``advantage`` is max(TPR - FPR) over all thresholds; ``yeom_advantage`` is TPR - FPR at
    Yeom et al.'s threshold, the members' mean loss. ``tpr_at_fpr`` maps FPR levels to the
    best TPR reachable at or below them. ``roc`` holds (fpr, tpr) points for plotting.
    """

    auc: Interval
    p_value: float
    advantage: float
    yeom_threshold: float
    yeom_advantage: float
    tpr_at_fpr: dict[float, float]
    n_members: int
    n_non_members: int
    member_loss_mean: float
    non_member_loss_mean: float
    roc: tuple[tuple[float, ...], tuple[float, ...]]


def loss_threshold_attack(
    member_losses: Sequence[float],
    non_member_losses: Sequence[float],
    *,
    rng: np.random.Generator,
    n_boot: int = 2000,
    confidence_level: float = 0.95,
    fpr_levels: Sequence[float] = (0.01, 0.1),
) -> AttackResult:
    """The loss-threshold attack of Yeom et al. (2018) on given per-sample losses.

    Examples
    --------
    >>> import numpy as np
    >>> from privacy.leakage import loss_threshold_attack
    >>> r = loss_threshold_attack([0.1, 0.2, 0.3], [0.25, 0.5, 0.9], rng=np.random.default_rng(0), n_boot=200)
    >>> round(r.auc.estimate, 4), round(r.advantage, 4)
    (0.8889, 0.6667)
    """
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import roc_auc_score, roc_curve

    members = np.asarray(member_losses, dtype=float)
    others = np.asarray(non_member_losses, dtype=float)
    for name, values in (("member", members), ("non-member", others)):
        if values.size < 2:
            raise DataError(f"Membership inference needs at least 2 {name} samples, got {values.size}. Give more.")
        if not np.all(np.isfinite(values)):
            raise DataError(f"Some {name} losses are not finite. Check the samples (empty texts, bad labels).")
    # A lower loss means "member", so the attack's score is the negated loss.
    truth = np.r_[np.ones(members.size), np.zeros(others.size)]
    boot = bootstrap_ci((-members, -others), _rank_auc, rng=rng, n_resamples=n_boot, confidence_level=confidence_level)
    interval = Interval(float(roc_auc_score(truth, np.r_[-members, -others])), boot.low, boot.high, boot.level)
    fpr, tpr, _ = roc_curve(truth, np.r_[-members, -others])
    threshold = float(members.mean())
    yeom = float(np.mean(members <= threshold) - np.mean(others <= threshold))
    return AttackResult(
        auc=interval,
        p_value=float(mannwhitneyu(-members, -others, alternative="greater").pvalue),
        advantage=float(np.max(tpr - fpr)),
        yeom_threshold=threshold,
        yeom_advantage=yeom,
        tpr_at_fpr={float(level): float(tpr[fpr <= level].max()) for level in fpr_levels},
        n_members=int(members.size),
        n_non_members=int(others.size),
        member_loss_mean=float(members.mean()),
        non_member_loss_mean=float(others.mean()),
        roc=(tuple(float(v) for v in fpr), tuple(float(v) for v in tpr)),
    )


# -- canaries -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CanarySet:
    """Random secrets planted in training data, as in Carlini et al. (2019).

    Each canary is ``template`` with ``{secret}`` filled by a random string of ``len(secret)``
    characters from ``alphabet``; it is inserted ``repetitions[i]`` times. The randomness space
    R is every such string: ``|R| = len(alphabet) ** length``.

    Examples
    --------
    >>> import numpy as np
    >>> from privacy.leakage import CanarySet
    >>> c = CanarySet.generate(repetitions=(1, 5), length=4, rng=np.random.default_rng(0))
    >>> c.space_size, len(c.insert(["a", "b"], rng=np.random.default_rng(1)))
    (10000, 8)
    >>> CanarySet.from_record(c.to_record()) == c
    True
    """

    secrets: tuple[str, ...]
    repetitions: tuple[int, ...]
    template: str = DEFAULT_CANARY_TEMPLATE
    alphabet: str = "0123456789"

    def __post_init__(self) -> None:
        if "{secret}" not in self.template:
            raise ConfigError(f"Canary template must contain '{{secret}}', got {self.template!r}.")
        if len(self.alphabet) < 2 or len(set(self.alphabet)) != len(self.alphabet):
            raise ConfigError(f"Canary alphabet must hold at least 2 distinct characters, got {self.alphabet!r}.")
        if not self.secrets or len(self.secrets) != len(self.repetitions):
            raise ConfigError(f"A canary set needs one repetition count per secret; got {len(self.secrets)} "
                              f"secret(s) and {len(self.repetitions)} count(s).")
        lengths = {len(s) for s in self.secrets}
        if len(lengths) != 1 or not all(set(s) <= set(self.alphabet) for s in self.secrets):
            raise ConfigError("Canary secrets must all have the same length and use only the alphabet's characters.")
        if not all(isinstance(r, int) and r >= 1 for r in self.repetitions):
            raise ConfigError(f"Canary repetitions must be positive integers, got {list(self.repetitions)}.")

    @classmethod
    def generate(
        cls,
        *,
        repetitions: Sequence[int] = (1, 10, 100),
        length: int = 6,
        template: str = DEFAULT_CANARY_TEMPLATE,
        alphabet: str = "0123456789",
        rng: np.random.Generator,
    ) -> CanarySet:
        """One canary per entry of ``repetitions``, with distinct uniformly random secrets."""
        if length < 1:
            raise ConfigError(f"Canary length must be a positive integer, got {length}.")
        if len(alphabet) ** length < 2 * len(repetitions):
            raise ConfigError(f"A randomness space of {len(alphabet) ** length} is too small for "
                              f"{len(repetitions)} canaries. Use a longer secret.")
        secrets: list[str] = []
        while len(secrets) < len(repetitions):
            secret = "".join(alphabet[i] for i in rng.integers(len(alphabet), size=length))
            if secret not in secrets:
                secrets.append(secret)
        return cls(secrets=tuple(secrets), repetitions=tuple(int(r) for r in repetitions), template=template,
                   alphabet=alphabet)

    @property
    def length(self) -> int:
        return len(self.secrets[0])

    @property
    def space_size(self) -> int:
        """|R|: how many values a secret can take."""
        return len(self.alphabet) ** self.length

    def fill(self, secret: str) -> str:
        return self.template.replace("{secret}", secret)

    def texts(self) -> list[str]:
        """The canary sentences, one per secret."""
        return [self.fill(s) for s in self.secrets]

    def insert(self, texts: Sequence[str], *, rng: np.random.Generator) -> list[str]:
        """A copy of ``texts`` with each canary inserted ``repetitions`` times at random positions."""
        out = list(texts)
        for text, count in zip(self.texts(), self.repetitions, strict=True):
            for _ in range(count):
                out.insert(int(rng.integers(len(out) + 1)), text)
        return out

    def to_record(self) -> dict[str, Any]:
        """The ``canaries`` entry of a training record (``rai_audit_record.json``), secrets sealed.

        The secrets are encrypted and authenticated under the secret key of
        :func:`audit.records.secret_key` (created on first use, kept outside every model and
        report directory): the record, the card and ``results.json`` reveal the template, the
        alphabet, the length and the repetitions, never a secret. :meth:`from_record` opens them
        where the key is.
        """
        key = secret_key(create=True)
        assert key is not None  # create=True either returns a key or raises OutputError
        public = {"method": "Carlini et al. 2019 (The Secret Sharer)", "template": self.template,
                  "alphabet": self.alphabet, "length": self.length, "space_size": self.space_size,
                  "repetitions": list(self.repetitions)}
        return {**public, "secrets": "sealed", "sealed": _seal(key, list(self.secrets), public)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CanarySet:
        """Read the ``canaries`` entry of a training record (sealed), or a mapping with plain ``secrets``."""
        if not isinstance(record, Mapping) or not {"secrets", "repetitions"} <= set(record):
            raise DataError("A canaries record must be a mapping with 'secrets' and 'repetitions' (and optionally "
                            f"'template', 'alphabet'); got {sorted(record) if isinstance(record, Mapping) else type(record).__name__}.")
        secrets = record["secrets"]
        if secrets == "sealed":
            secrets = _unseal(record)
        if isinstance(secrets, (str, bytes)) or not isinstance(secrets, Sequence):
            raise DataError(f"A canaries record's 'secrets' must be a list or 'sealed', got {type(secrets).__name__}.")
        return cls(secrets=tuple(str(s) for s in secrets),
                   repetitions=tuple(int(r) for r in record["repetitions"]),
                   template=str(record.get("template", DEFAULT_CANARY_TEMPLATE)),
                   alphabet=str(record.get("alphabet", "0123456789")))


CANARY_KEY_MISSING = ("The canary secrets in this training record are sealed with secret key {key_id}, and {reason}. "
                      "Copy the key file of the machine that trained the model to {path} (or point {env} at it), "
                      "or give the canaries to the probe with its 'canaries' parameter.")
CANARY_SEAL_BROKEN = ("The sealed canary secrets in this training record do not authenticate under key {key_id} (the "
                      "record was altered). Restore the record written by the trainer.")


def _aead(key: bytes) -> Any:
    """AES-256-GCM (the ``cryptography`` package) under a key derived from the secret key for this use only."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(hmac.new(key, b"rai-audit canary sealing", hashlib.sha256).digest())


def _bound(public: Mapping[str, Any]) -> bytes:
    """What the tag authenticates besides the ciphertext: the public fields, canonically."""
    return json.dumps({k: public[k] for k in ("template", "alphabet", "repetitions")}, sort_keys=True).encode()


def _seal(key: bytes, secrets: list[str], public: Mapping[str, Any]) -> dict[str, str]:
    """Encrypt and authenticate the secrets (AES-GCM), binding the public fields as associated data."""
    nonce = os.urandom(12)
    cipher = _aead(key).encrypt(nonce, json.dumps(secrets).encode("utf-8"), _bound(public))
    return {"scheme": "AES-256-GCM (cryptography), public fields as associated data", "key_id": key_id(key),
            "nonce": nonce.hex(), "ciphertext": cipher.hex()}


def _unseal(record: Mapping[str, Any]) -> list[str]:
    from cryptography.exceptions import InvalidTag

    sealed = record.get("sealed")
    if not isinstance(sealed, Mapping) or not all(isinstance(sealed.get(k), str)
                                                  for k in ("key_id", "nonce", "ciphertext")):
        raise DataError("A canaries record says its secrets are 'sealed' but has no valid 'sealed' entry "
                        "(key_id, nonce, ciphertext). Restore the record written by the trainer.")
    key = secret_key(create=False)
    if key is None or key_id(key) != sealed["key_id"]:
        reason = "there is no key on this machine" if key is None else f"this machine's key is {key_id(key)}"
        raise DataError(CANARY_KEY_MISSING.format(key_id=sealed["key_id"], reason=reason, path=str(key_file_path()),
                                                  env=KEY_FILE_ENV))
    try:
        nonce, cipher = bytes.fromhex(sealed["nonce"]), bytes.fromhex(sealed["ciphertext"])
        public = {k: record[k] for k in ("template", "alphabet", "repetitions")}
        plain = _aead(key).decrypt(nonce, cipher, _bound(public))
    except (ValueError, KeyError, InvalidTag):
        raise DataError(CANARY_SEAL_BROKEN.format(key_id=sealed["key_id"])) from None
    return [str(s) for s in json.loads(plain.decode("utf-8"))]


@dataclass(frozen=True)
class CanaryExposure:
    """Exposure of one canary.

    ``better`` counts candidates (never a planted canary) with a strictly lower log-perplexity
    than the canary. When ``exact``, the candidates are all of R but the canaries and
    ``rank = better + 1``; otherwise they are a uniform sample of those and the rank fraction is
    estimated as ``(better + 1) / (n_candidates + 1)``, so exposure cannot exceed
    ``max_exposure = log2(n_candidates + 1)`` (the cap set by the sample size).
    """

    index: int
    repetitions: int
    exposure: float
    max_exposure: float
    better: int
    n_candidates: int
    space_size: int
    exact: bool
    log_perplexity: float

    @property
    def rank(self) -> int | None:
        return self.better + 1 if self.exact else None


def sequence_log_perplexity(target: Any, texts: Sequence[str]) -> np.ndarray:
    """-log2 Pr(text) under the model (pseudo-likelihood for masked LMs), Carlini et al.'s ranking score."""
    if target.kind == "causal-lm":
        natural = -target.log_likelihood(list(texts))
    elif target.kind == "masked-lm":
        natural = -target.pseudo_log_likelihood(list(texts))
    else:
        raise NotApplicableError(f"Canary exposure needs a language model; {target.model_id!r} is {target.kind}.")
    return natural / math.log(2)


def canary_exposure(target: Any, canaries: CanarySet, *, n_candidates: int = 10_000,
                    rng: np.random.Generator) -> list[CanaryExposure]:
    """Exposure of each canary (Carlini et al. 2019): ``log2 |R| - log2 rank``.

    Each canary is ranked against candidates that are not planted canaries, in both paths: the
    other canaries were trained on too, so counting them as competitors would understate how
    far the model prefers this canary over a secret it never saw. When ``|R| - (number of
    canaries) + 1 <= n_candidates`` every such secret is scored and the rank is exact;
    otherwise ``n_candidates`` of them are drawn uniformly and the rank is estimated, which caps
    the exposure at ``log2(n_candidates + 1)``. Candidates share the canaries' template.
    """
    if n_candidates < 1:
        raise ConfigError(f"n_candidates must be a positive integer, got {n_candidates}.")
    own = set(canaries.secrets)
    exact = canaries.space_size - len(own) <= n_candidates
    if exact:
        candidates = ["".join(p) for p in itertools.product(canaries.alphabet, repeat=canaries.length)]
        candidates = [c for c in candidates if c not in own]
    else:
        candidates = []
        while len(candidates) < n_candidates:
            codes = rng.integers(len(canaries.alphabet), size=(n_candidates - len(candidates), canaries.length))
            candidates += [s for s in ("".join(canaries.alphabet[i] for i in row) for row in codes) if s not in own]
    scores = sequence_log_perplexity(target, [canaries.fill(c) for c in candidates])
    own_scores = sequence_log_perplexity(target, canaries.texts())
    n = len(candidates)
    results = []
    for i, (score, reps) in enumerate(zip(own_scores, canaries.repetitions, strict=True)):
        better = int(np.sum(scores < score))
        if exact:
            value, ceiling = math.log2(canaries.space_size) - math.log2(better + 1), math.log2(canaries.space_size)
        else:
            value, ceiling = -math.log2((better + 1) / (n + 1)), math.log2(n + 1)
        results.append(CanaryExposure(index=i, repetitions=int(reps), exposure=float(value), max_exposure=float(ceiling),
                                      better=better, n_candidates=n, space_size=canaries.space_size, exact=exact,
                                      log_perplexity=float(score)))
    return results
