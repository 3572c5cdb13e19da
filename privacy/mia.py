"""Membership inference measured as the field measures it: TPR at low FPR, reference-model attacks.

Carlini et al. 2022 ("Membership Inference Attacks From First Principles") showed that an attack's
AUC hides what matters: whether it identifies *some* members with near certainty. So every attack
here reports the TPR at FPR 0.1% and 1% (percentile-bootstrap intervals, members and non-members
resampled separately: the threshold is re-chosen in every resample, so the interval covers the
threshold's own uncertainty), the AUC (scikit-learn) and the ROC for log-log axes.

Attacks (every score is "higher means member"):

- **loss** (Yeom et al. 2018): minus the model's loss.
- **min_k** (Min-K% Prob, Shi et al. 2024, "Detecting Pretraining Data from Large Language
  Models"): mean log-probability of the ``k`` (default 20%) least likely tokens; causal LMs.
- **zlib** (Carlini et al. 2021, "Extracting Training Data from Large Language Models"): minus
  the loss divided by the text's zlib-compressed length in bytes (the MIMIR convention), so text
  that is merely easy to predict is not mistaken for memorised text; causal LMs.
- **lira** (LiRA, offline variant, Carlini et al. 2022): how far the target's confidence on a
  sample lies above its mean under reference models that never saw it, in units of the
  reference models' spread (one global spread: the paper's choice with few reference models).
- **rmia** (RMIA, offline, Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference
  Attacks"): the share of population samples ``z`` that ``x`` dominates in the likelihood ratio
  ``(p(x|target) / p(x)) / (p(z|target) / p(z))``, with ``p(.)`` the reference models' average
  corrected by ``a`` for the missing IN models.

The reference models are fine-tuned from the base model by :func:`train_reference_models` on
random halves of population data the user gives (samples from the training distribution that
are not the audited members or non-members). A low attack success is **not** a proof of privacy:
a stronger attack, more reference models or other members may do better.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import ConfigError, DataError
from audit.stats import Interval, bootstrap_ci

__all__ = [
    "FPR_LEVELS",
    "NOT_A_PROOF",
    "AttackMetrics",
    "attack_metrics",
    "lira_offline_scores",
    "min_k_scores",
    "rmia_scores",
    "tpr_at_fpr",
    "train_reference_models",
    "zlib_scores",
]

#: The false-positive rates Carlini et al. 2022 recommend reporting.
FPR_LEVELS = (0.001, 0.01)
NOT_A_PROOF = ("A low attack success is not a proof of privacy: stronger attacks, more reference models or other "
               "samples may identify members that these attacks miss.")
TPR_INTERVAL = "percentile bootstrap, members and non-members resampled separately, threshold re-chosen each time"


def tpr_at_fpr(member_scores: np.ndarray, non_member_scores: np.ndarray, level: float, axis: int = -1) -> np.ndarray:
    """Largest TPR of "member iff score > t" over thresholds whose FPR is at most ``level``.

    Vectorised over leading axes (for the bootstrap). With ``n`` non-members at most
    ``k = floor(level * n)`` false positives are allowed, so the threshold is the ``(k+1)``-th
    highest non-member score; TPR is the share of members strictly above it.
    """
    x = np.moveaxis(np.asarray(member_scores, dtype=float), axis, -1)
    y = np.moveaxis(np.asarray(non_member_scores, dtype=float), axis, -1)
    n = y.shape[-1]
    k = math.floor(level * n + 1e-9)
    if k >= n:
        return np.ones(np.broadcast_shapes(x.shape[:-1], y.shape[:-1]))
    threshold = -np.sort(-y, axis=-1)[..., k]
    return np.mean(x > threshold[..., None], axis=-1)


@dataclass(frozen=True)
class AttackMetrics:
    """One attack's success: AUC, TPR at each low FPR with its interval, and the ROC curve."""

    attack: str
    auc: Interval
    tpr: dict[float, Interval]
    roc: tuple[tuple[float, ...], tuple[float, ...]]
    n_members: int
    n_non_members: int

    @property
    def smallest_fpr(self) -> float:
        """The smallest nonzero FPR the non-member sample can show: 1 / n_non_members."""
        return 1.0 / self.n_non_members

    def resolved(self, level: float) -> bool:
        """Whether ``level`` is at least one false positive of the sample (else TPR is at FPR = 0)."""
        return level * self.n_non_members >= 1 - 1e-9


def attack_metrics(attack: str, member_scores: Sequence[float], non_member_scores: Sequence[float], *,
                   rng: np.random.Generator, n_boot: int = 2000, confidence_level: float = 0.95,
                   fpr_levels: Sequence[float] = FPR_LEVELS) -> AttackMetrics:
    """AUC and TPR at low FPR of one attack's scores (higher = member), with bootstrap intervals.

    Examples
    --------
    >>> import numpy as np
    >>> from privacy.mia import attack_metrics
    >>> m = attack_metrics("demo", [3.0, 2.0, 0.5], [0.0, 1.0, 0.4, 0.1], rng=np.random.default_rng(0), n_boot=200)
    >>> round(m.auc.estimate, 4), round(m.tpr[0.01].estimate, 4)
    (0.9167, 0.6667)
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    from privacy.leakage import _rank_auc

    members = np.asarray(member_scores, dtype=float)
    others = np.asarray(non_member_scores, dtype=float)
    for name, values in (("member", members), ("non-member", others)):
        if values.size < 2 or not np.all(np.isfinite(values)):
            raise DataError(f"Attack {attack!r}: needs at least 2 finite {name} scores, got {values.size} "
                            f"({int(np.sum(~np.isfinite(values)))} not finite). Check the samples.")
    truth = np.r_[np.ones(members.size), np.zeros(others.size)]
    scores = np.r_[members, others]
    boot = bootstrap_ci((members, others), _rank_auc, rng=rng, n_resamples=n_boot, confidence_level=confidence_level)
    auc = Interval(float(roc_auc_score(truth, scores)), boot.low, boot.high, boot.level)
    tpr = {}
    for level in fpr_levels:
        def statistic(x: np.ndarray, y: np.ndarray, axis: int = -1, _level: float = float(level)) -> np.ndarray:
            return tpr_at_fpr(x, y, _level, axis=axis)

        ci = bootstrap_ci((members, others), statistic, rng=rng, n_resamples=n_boot, confidence_level=confidence_level)
        tpr[float(level)] = ci
    fpr, tpr_curve, _ = roc_curve(truth, scores)
    return AttackMetrics(attack=attack, auc=auc, tpr=tpr, roc=(tuple(map(float, fpr)), tuple(map(float, tpr_curve))),
                         n_members=int(members.size), n_non_members=int(others.size))


# -- scores -------------------------------------------------------------------------------------
def min_k_scores(target: Any, texts: Sequence[str], *, k: float = 0.2) -> np.ndarray:
    """Min-K% Prob (Shi et al. 2024): mean log-probability of the ``ceil(k * n)`` least likely tokens."""
    if not 0 < k <= 1:
        raise ConfigError(f"Min-K% Prob: k must be in (0, 1], got {k!r}. Use e.g. 0.2 (the paper's choice).")
    out = []
    for item in target.token_log_likelihoods(list(texts)):
        logp = np.sort(item.log_probs[np.isfinite(item.log_probs)])
        if logp.size == 0:
            raise DataError("A text has no scorable token for Min-K% Prob. Drop empty texts from the samples.")
        out.append(float(logp[: max(1, math.ceil(k * logp.size))].mean()))
    return np.asarray(out)


def zlib_scores(losses: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    """Minus the loss over the zlib-compressed length of the text in bytes (Carlini et al. 2021)."""
    sizes = np.asarray([len(zlib.compress(str(t).encode("utf-8"))) for t in texts], dtype=float)
    return -np.asarray(losses, dtype=float) / sizes


def _confidence(losses: np.ndarray, *, logit: bool) -> np.ndarray:
    """The statistic LiRA fits a Gaussian to: logit of exp(-loss) for classifiers, -loss for LMs."""
    losses = np.asarray(losses, dtype=float)
    if not logit:
        return -losses
    # log(p / (1 - p)) with p = exp(-loss), stable for p near 0 and 1
    return -losses - np.log(-np.expm1(-np.maximum(losses, 1e-12)))


def lira_offline_scores(target_losses: np.ndarray, reference_losses: np.ndarray, *, logit: bool) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022) with a global variance: ``(phi - mean_out) / std_out``.

    ``reference_losses`` has one row per reference model (none trained on the samples). The
    one-sided Gaussian test the paper uses is a monotone function of this z-score.
    """
    ref = _confidence(np.atleast_2d(reference_losses), logit=logit)
    phi = _confidence(target_losses, logit=logit)
    mean = ref.mean(axis=0)
    spread = float(np.std(ref - mean, ddof=1)) if ref.shape[0] > 1 else float(np.std(ref))
    return (phi - mean) / max(spread, 1e-12)


def rmia_scores(target_x: np.ndarray, reference_x: np.ndarray, target_z: np.ndarray, reference_z: np.ndarray,
                *, a: float = 0.3, gamma: float = 1.0, tie_break: bool = False) -> np.ndarray:
    """Offline RMIA (Zarifzadeh et al. 2024): share of population ``z`` with ``LR(x, z) >= gamma``.

    Arguments are losses (``p = exp(-loss)``): of the target model on the samples ``x`` and the
    population ``z``, and of each reference model (rows) on the same. ``p(x)`` is the reference
    models' mean likelihood, corrected for the missing IN models as in the paper's offline
    variant: ``p(x) = ((1 + a) p_OUT(x) + (1 - a)) / 2``.

    The score is a step function of ``x``'s own ratio ``p(x|target) / p(x)``, so with a finite
    population many samples tie (strong members all dominate every ``z``: score 1). ``tie_break``
    orders tied samples by that ratio, adding less than one step: distinct scores keep their order.
    """
    if not 0 <= a <= 1:
        raise ConfigError(f"RMIA: a must be in [0, 1], got {a!r}. Use e.g. 0.3.")

    def ratio(target: np.ndarray, reference: np.ndarray) -> np.ndarray:
        p_out = np.exp(-np.atleast_2d(reference)).mean(axis=0)
        return np.exp(-np.asarray(target, dtype=float)) / (((1 + a) * p_out + (1 - a)) / 2)

    rx, rz = ratio(target_x, reference_x), ratio(target_z, reference_z)
    # LR(x, z) >= gamma  <=>  rz <= rx / gamma: count with a sorted population
    score = np.searchsorted(np.sort(rz), rx / gamma, side="right") / rz.size
    if tie_break:
        from scipy.stats import rankdata

        score = score + (rankdata(rx, method="average") - 1) / rx.size / (rz.size + 1)
    return score


# -- reference models ---------------------------------------------------------------------------
def train_reference_models(base: str | Path, texts: Sequence[str], labels: Sequence[int] | None, *, kind: str,
                           n_models: int, out_dir: Path, rng: np.random.Generator, epochs: int = 3,
                           learning_rate: float = 1e-3, batch_size: int = 16, max_length: int = 128) -> list[Path]:
    """Fine-tune ``n_models`` copies of ``base`` on random halves of ``texts``; return their directories.

    Cost: ``n_models * epochs * len(texts) / 2`` training examples' forward and backward passes
    (Adam, no weight decay), plus one scoring pass per reference model over the audited samples.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if kind not in ("causal-lm", "sequence-classification"):
        raise ConfigError(f"Reference models can be trained for causal LMs and sequence classifiers, not {kind}.")
    texts = [str(t) for t in texts]
    if len(texts) < 4:
        raise DataError(f"Reference models need population data of at least 4 rows, got {len(texts)}. Give more.")
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    paths = []
    for j in range(n_models):
        keep = np.sort(rng.choice(len(texts), size=len(texts) // 2, replace=False))
        torch.manual_seed(int(rng.integers(2**31)))
        auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
        model = auto.from_pretrained(base)
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
        for _ in range(epochs):
            for start in range(0, len(keep), batch_size):
                rows = keep[start:start + batch_size]
                loss = _batch_loss(model, tok, [texts[i] for i in rows],
                                   None if labels is None else [labels[i] for i in rows], kind=kind, max_length=max_length)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            keep = keep[rng.permutation(len(keep))]
        model.eval()
        path = Path(out_dir) / f"reference-{j}"
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        paths.append(path)
    return paths


def _batch_loss(model: Any, tok: Any, texts: list[str], labels: list[int] | None, *, kind: str, max_length: int) -> Any:
    import torch

    if kind == "sequence-classification":
        batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return model(**batch, labels=torch.as_tensor(labels, dtype=torch.long)).loss
    bos = tok.bos_token_id
    rows = [([bos] if bos is not None else []) + tok(t, truncation=True, max_length=max_length - 1)["input_ids"]
            for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    target = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        target[i, : len(row)] = torch.tensor(row)
    return model(input_ids=ids, attention_mask=mask, labels=target).loss
