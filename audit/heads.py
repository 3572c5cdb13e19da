"""What a classifier's head means: the one place that turns its logits into scores.

A sequence-classification head is one of three things, read from its config:

- ``"single-label"``: one class per text; scores are the softmax over the classes.
- ``"multi-label"`` (``config.problem_type == "multi_label_classification"``, e.g. toxicity
  classifiers): each label is an independent yes/no; scores are the sigmoid of each logit, and a
  label is predicted when its score is at least 0.5. A softmax here would make the labels compete
  and change every probability.
- ``"score"`` (``num_labels == 1``: regression heads, cross-encoders, reward models): the raw
  logit is the output. A softmax over one logit is always 1.0, so every gap and every attribution
  of it is exactly 0; probes audit the score itself.

Every probe and metric that reads a classifier goes through :func:`scores_from_logits`.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import torch

__all__ = ["HEADS", "MULTI_LABEL_THRESHOLD", "NO_CLASSES", "Head", "classifier_head", "decisions",
           "scores_from_logits"]

Head = Literal["single-label", "multi-label", "score"]
HEADS: tuple[str, ...] = get_args(Head)
#: A multi-label head predicts a label when its sigmoid reaches this (transformers' pipeline does the same).
MULTI_LABEL_THRESHOLD = 0.5
NO_CLASSES = ("{op}() needs class probabilities, but {model!r} has a single-score head (num_labels=1: a regression, "
              "cross-encoder or reward model), whose score is not a probability. Probes audit its score "
              "(predict_scores); a probe built on predicted classes does not apply.")


def classifier_head(config: Any) -> Head:
    """The head type of a sequence classifier's config.

    Examples
    --------
    >>> from transformers import BertConfig
    >>> from audit.heads import classifier_head
    >>> classifier_head(BertConfig(num_labels=3)), classifier_head(BertConfig(num_labels=1))
    ('single-label', 'score')
    >>> classifier_head(BertConfig(num_labels=3, problem_type="multi_label_classification"))
    'multi-label'
    """
    if int(getattr(config, "num_labels", 2) or 2) == 1:
        return "score"
    if getattr(config, "problem_type", None) == "multi_label_classification":
        return "multi-label"
    return "single-label"


def scores_from_logits(logits: torch.Tensor, head: Head) -> torch.Tensor:
    """The scores a head's logits stand for (float32), shape unchanged: softmax, sigmoid or the logit.

    Differentiable, so attribution methods explain the same scores the other probes measure.

    Examples
    --------
    >>> import torch
    >>> from audit.heads import scores_from_logits
    >>> logits = torch.tensor([[2.0, 0.0]])
    >>> [round(v, 3) for v in scores_from_logits(logits, "single-label")[0].tolist()]
    [0.881, 0.119]
    >>> [round(v, 3) for v in scores_from_logits(logits, "multi-label")[0].tolist()]
    [0.881, 0.5]
    >>> scores_from_logits(torch.tensor([[-1.5]]), "score").tolist()
    [[-1.5]]
    """
    if head not in HEADS:
        raise ValueError(f"Unknown classifier head {head!r}; use one of {list(HEADS)}.")
    logits = logits.float()
    if head == "single-label":
        return torch.softmax(logits, dim=-1)
    if head == "multi-label":
        return torch.sigmoid(logits)
    return logits


def decisions(scores: np.ndarray, head: Head, positive: int) -> np.ndarray:
    """Whether each row's outcome is ``positive``: the argmax (single-label), the label's score
    reaching :data:`MULTI_LABEL_THRESHOLD` (multi-label), or a score above 0 (a single score: the
    sign of the logit, which is sigmoid >= 0.5 for a cross-encoder trained with a logistic loss).

    Examples
    --------
    >>> import numpy as np
    >>> from audit.heads import decisions
    >>> decisions(np.array([[0.6, 0.7], [0.2, 0.1]]), "multi-label", 0).tolist()
    [True, False]
    >>> decisions(np.array([[0.6, 0.7], [0.2, 0.1]]), "single-label", 0).tolist()
    [False, True]
    """
    scores = np.asarray(scores)
    if head == "single-label":
        return scores.argmax(axis=-1) == positive
    if head == "multi-label":
        return scores[..., positive] >= MULTI_LABEL_THRESHOLD
    return scores[..., positive] > 0
