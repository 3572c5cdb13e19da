"""Post-processing a classifier with group thresholds: fairlearn's ``ThresholdOptimizer``.

Hardt, Price and Srebro 2016, "Equality of Opportunity in Supervised Learning", as implemented by
fairlearn's :class:`~fairlearn.postprocessing.ThresholdOptimizer`: per group, a (possibly
randomised) threshold on the classifier's positive-class score that maximises the objective under
a fairness constraint. The thresholds are saved beside the model as ``rai_audit_thresholds.json``
and :meth:`audit.target.AuditTarget.predict` applies them, reproducing fairlearn's ``predict``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from audit.errors import ConfigError, DataError, NotApplicableError, NotFittedError
from audit.target import THRESHOLDS_FILENAME, AuditTarget

__all__ = ["CONSTRAINTS", "ThresholdPostprocessor"]

CONSTRAINTS = ("demographic_parity", "equalized_odds", "true_positive_rate_parity", "false_positive_rate_parity")


class _ScoreColumn(ClassifierMixin, BaseEstimator):
    """A prefit scikit-learn 'estimator' whose input already is the positive-class score."""

    def fit(self, X: Any, y: Any = None) -> _ScoreColumn:
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        s = np.asarray(X, dtype=float)[:, 0]
        return np.column_stack([1 - s, s])

    def predict(self, X: Any) -> np.ndarray:
        return (np.asarray(X, dtype=float)[:, 0] > 0.5).astype(int)


DEGENERATE_LABELS = ("Threshold post-processing under {constraints} needs both labels in every group, but group "
                     "{group!r} has only label {label} ({n} rows). Give more rows of that group, or use "
                     "constraints='demographic_parity'.")


def _check_labels(labels: np.ndarray, groups: np.ndarray, constraints: str) -> None:
    """Refuse rows fairlearn cannot fit: one label overall, or (error-rate constraints) one label in a group."""
    if np.unique(labels).size < 2:
        raise DataError(f"The labels hold a single class ({np.unique(labels).tolist()}); thresholds need rows of both "
                        "classes. Check --label-column.")
    if constraints == "demographic_parity":
        return
    for group in sorted(set(groups)):
        present = np.unique(labels[groups == group])
        if present.size < 2:
            raise DataError(DEGENERATE_LABELS.format(constraints=constraints, group=group, label=int(present[0]),
                                                     n=int(np.sum(groups == group))))


class ThresholdPostprocessor:
    """Group thresholds for a sequence classifier under a fairness constraint.

    Parameters
    ----------
    constraints : {"demographic_parity", "equalized_odds", "true_positive_rate_parity", \
"false_positive_rate_parity"}, default="demographic_parity"
        fairlearn's constraint name, unchanged.
    objective : str, default="accuracy_score"
        fairlearn's objective (``"accuracy_score"``, ``"balanced_accuracy_score"``, ...).
    positive_label : int, default=1
        Index of the favourable class; its probability is the score that is thresholded.
    grid_size : int, default=1000
        fairlearn's grid of the trade-off curve.
    seed : int, default=0
        Seed of the randomised prediction (fairlearn's ``random_state``), saved with the thresholds.

    Attributes
    ----------
    thresholder_ : fairlearn.postprocessing.ThresholdOptimizer
    thresholds_ : dict
        The JSON-ready thresholds ``AuditTarget.predict`` applies.
    outcome_ : dict
        Accuracy and demographic parity difference before and after, on the fitting data.
    """

    def __init__(self, *, constraints: str = "demographic_parity", objective: str = "accuracy_score",
                 positive_label: int = 1, grid_size: int = 1000, seed: int = 0) -> None:
        self.constraints = constraints
        self.objective = objective
        self.positive_label = positive_label
        self.grid_size = grid_size
        self.seed = seed

    def fit(self, target: AuditTarget, texts: Sequence[str], y: Sequence[Any], *,
            sensitive_features: Sequence[Any]) -> ThresholdPostprocessor:
        """Fit group thresholds on ``target``'s scores of ``texts`` with true labels ``y`` (class indices)."""
        from fairlearn.metrics import demographic_parity_difference
        from fairlearn.postprocessing import ThresholdOptimizer

        if self.constraints not in CONSTRAINTS:
            raise ConfigError(f"constraints must be one of {list(CONSTRAINTS)}, got {self.constraints!r}.")
        if target.kind != "sequence-classification":
            raise NotApplicableError(f"Threshold post-processing needs a sequence classifier, but {target.model_id!r} "
                                     f"is {target.kind!r}. Use sentence-debias or inlp for encoders.")
        if target._num_labels() != 2:
            raise NotApplicableError(f"ThresholdOptimizer handles binary classifiers; {target.model_id!r} has "
                                     f"{target._num_labels()} classes.")
        labels = np.asarray(y).astype(int)
        groups = np.asarray([str(v) for v in sensitive_features], dtype=object)
        if not (len(texts) == labels.size == groups.size):
            raise DataError(f"texts, y and sensitive_features must have one entry per row, got {len(texts)}, "
                            f"{labels.size} and {groups.size}.")
        if len(set(groups)) < 2:
            raise DataError(f"sensitive_features has a single group ({groups[:1].tolist()}); thresholds per group "
                            "need at least two. Pass the column that names each row's group.")
        _check_labels(labels, groups, self.constraints)
        scores = target.predict_proba(texts)[:, self.positive_label]
        X = scores[:, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas 3 deprecation noise inside fairlearn
            optimizer = ThresholdOptimizer(estimator=_ScoreColumn().fit(X), constraints=self.constraints,
                                           objective=self.objective, grid_size=self.grid_size, prefit=True,
                                           predict_method="predict_proba")
            try:
                optimizer.fit(X, labels, sensitive_features=groups)
            except ValueError as exc:  # fairlearn's own data checks (e.g. a group with one label only)
                raise DataError(f"ThresholdOptimizer cannot fit these rows ({str(exc).splitlines()[0][:200]}). "
                                "Give rows with both labels in every group.") from None
            after = optimizer.predict(X, sensitive_features=groups, random_state=self.seed)
        self.thresholder_ = optimizer
        groups_spec = {}
        for group, spec in optimizer.interpolated_thresholder_.interpolation_dict.items():
            entry = {"p0": float(spec.p0), "operation0": [spec.operation0.operator, float(spec.operation0.threshold)],
                     "p1": float(spec.p1), "operation1": [spec.operation1.operator, float(spec.operation1.threshold)]}
            if "p_ignore" in spec:
                entry.update(p_ignore=float(spec.p_ignore), prediction_constant=float(spec.prediction_constant))
            groups_spec[str(group)] = entry
        self.thresholds_ = {"technique": "threshold", "constraints": self.constraints, "objective": self.objective,
                            "positive_label": int(self.positive_label), "seed": int(self.seed),
                            "groups": groups_spec}
        before = target.predict_proba(texts).argmax(axis=1) == self.positive_label
        truth = labels == self.positive_label
        self.outcome_ = {
            "rows": int(labels.size),
            "accuracy_before": float(np.mean(before == truth)),
            "accuracy_after": float(np.mean((after == 1) == truth)),
            "demographic_parity_difference_before": float(demographic_parity_difference(
                truth.astype(int), before.astype(int), sensitive_features=groups)),
            "demographic_parity_difference_after": float(demographic_parity_difference(
                truth.astype(int), after.astype(int), sensitive_features=groups)),
        }
        return self

    def save_thresholds(self, directory: str | Path) -> Path:
        """Write ``rai_audit_thresholds.json`` into a model directory."""
        if not hasattr(self, "thresholds_"):
            raise NotFittedError("This ThresholdPostprocessor is not fitted yet. Call fit() before save_thresholds().")
        path = Path(directory) / THRESHOLDS_FILENAME
        path.write_text(json.dumps(self.thresholds_, indent=2) + "\n", encoding="utf-8")
        return path
