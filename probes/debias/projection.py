"""Projection debiasing of sentence representations: SentenceDebias and INLP.

Both learn a symmetric projection matrix ``P`` (``hidden x hidden``) that removes a protected
attribute's linear directions from a representation, ``x -> P x``. Saved beside a model as
``rai_audit_projection.safetensors`` (see :func:`save_projection`), an encoder loads back with
:func:`audit.load_target` and every ``embed`` call at the recorded layer is projected; under a
sequence classifier the projection is folded into the classification head instead
(``logits = W (P h) + b = (W P) h + b``), so the saved model is a plain Hugging Face model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.errors import ConfigError, DataError, NotFittedError

__all__ = ["INLP", "SentenceDebias", "fold_projection_into_head", "head_inputs", "save_projection"]

PROJECTION_FILENAME = "rai_audit_projection.safetensors"


def _check_fitted(estimator: Any, attribute: str = "projection_") -> None:
    if not hasattr(estimator, attribute):
        raise NotFittedError(
            f"This {type(estimator).__name__} is not fitted yet (no {attribute}). Call fit() before transform()."
        )


def _as_matrix(values: Any, name: str) -> np.ndarray:
    matrix = np.asarray(values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty 2-D array (rows x hidden), got shape {matrix.shape}. "
                        "Pass one embedding per row.")
    if not np.all(np.isfinite(matrix)):
        raise DataError(f"{name} holds NaN or infinite values. Check the embeddings before fitting.")
    return matrix


class _Projection:
    """Shared ``transform`` of the projection estimators."""

    projection_: np.ndarray

    def transform(self, X: Any) -> np.ndarray:
        """Project ``X`` (rows are representations): ``X P`` (``P`` is symmetric)."""
        _check_fitted(self)
        matrix = _as_matrix(X, "X")
        if matrix.shape[1] != self.projection_.shape[0]:
            raise DataError(f"X has {matrix.shape[1]} columns but the projection was fitted on "
                            f"{self.projection_.shape[0]}. Embed with the same model, layer and pooling.")
        return matrix @ self.projection_


class SentenceDebias(_Projection):
    """Remove a bias subspace found by PCA over counterfactual sentence pairs.

    SentenceDebias (Liang et al. 2020, "Towards Debiasing Sentence Representations"): embed
    sentences that differ only in a protected-attribute term (``"she is a doctor"`` /
    ``"he is a doctor"``), centre each pair on its own mean, and take the top principal
    components of the centred differences as the bias subspace ``V``. Debiasing projects onto its
    orthogonal complement: ``x -> x - V^T V x``.

    Parameters
    ----------
    n_components : int, default=1
        Dimension of the bias subspace (Liang et al. use 1 for gender in BERT).

    Attributes
    ----------
    bias_subspace_ : ndarray of shape (n_components, hidden)
        Orthonormal rows spanning the bias subspace.
    explained_variance_ratio_ : ndarray of shape (n_components,)
        Share of the centred pair variance each component explains.
    projection_ : ndarray of shape (hidden, hidden)
        ``I - V^T V``.

    Examples
    --------
    >>> import numpy as np
    >>> from probes.debias import SentenceDebias
    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(50, 8))
    >>> direction = np.eye(8)[0]
    >>> sd = SentenceDebias().fit(base + direction, base - direction)
    >>> bool(abs(sd.bias_subspace_[0] @ direction) > 0.99)
    True
    """

    def __init__(self, *, n_components: int = 1) -> None:
        self.n_components = n_components

    def fit(self, X_a: Any, X_b: Any) -> SentenceDebias:
        """Learn the bias subspace from paired embeddings (``X_a[i]`` and ``X_b[i]`` are counterparts)."""
        a, b = _as_matrix(X_a, "X_a"), _as_matrix(X_b, "X_b")
        if a.shape != b.shape:
            raise DataError(f"X_a and X_b must pair row by row, got shapes {a.shape} and {b.shape}. "
                            "Embed both sides of every counterfactual pair.")
        if not isinstance(self.n_components, int) or not 1 <= self.n_components <= a.shape[1]:
            raise ConfigError(f"n_components must be an integer in 1..{a.shape[1]}, got {self.n_components!r}. "
                              "Use 1 for a single protected attribute.")
        mean = (a + b) / 2
        centred = np.concatenate([a - mean, b - mean])
        # PCA without re-centring: the pair-centred rows already have zero mean per pair (Liang et al.)
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        variance = singular**2
        k = self.n_components
        self.bias_subspace_ = vt[:k]
        self.explained_variance_ratio_ = variance[:k] / variance.sum() if variance.sum() > 0 else np.zeros(k)
        self.projection_ = np.eye(a.shape[1]) - self.bias_subspace_.T @ self.bias_subspace_
        return self


def _rowspace_projection(W: np.ndarray) -> np.ndarray:
    """Orthogonal projection onto the row space of ``W``."""
    _, s, vt = np.linalg.svd(W, full_matrices=False)
    basis = vt[s > s.max() * 1e-10] if s.size and s.max() > 0 else np.zeros((0, W.shape[1]))
    return basis.T @ basis


class INLP(_Projection):
    """Iterative nullspace projection against linear classifiers of a protected attribute.

    INLP (Ravfogel et al. 2020, "Null It Out"): repeatedly train a linear classifier to predict
    the protected attribute from the (already projected) representations, and project onto the
    nullspace of every classifier found so far, ``P = I - P_R(w_1, ..., w_n)`` where ``P_R`` is
    the projection onto the row space of the stacked weight vectors. Stops after
    ``n_iterations`` or once a classifier is no better than the majority class on held-out rows.

    Parameters
    ----------
    n_iterations : int, default=20
        Most classifiers to train and project out.
    dev_fraction : float, default=0.3
        Held-out share for the stopping rule and the reported accuracies.
    tolerance : float, default=0.01
        Stop when held-out accuracy is within this of the majority-class rate.
    C : float, default=1.0
        Inverse regularisation strength of the logistic-regression classifiers.
    seed : int, default=0
        Seed of the train/dev split and the classifiers.

    Attributes
    ----------
    projection_ : ndarray of shape (hidden, hidden)
    directions_ : ndarray of shape (n_directions, hidden)
        The classifiers' weight vectors, one row per class boundary.
    accuracies_ : list of float
        Held-out accuracy of the classifier trained at each iteration (before its projection).
    majority_rate_ : float
        Held-out accuracy of always predicting the most frequent class.
    """

    def __init__(self, *, n_iterations: int = 20, dev_fraction: float = 0.3, tolerance: float = 0.01,
                 C: float = 1.0, seed: int = 0) -> None:
        self.n_iterations = n_iterations
        self.dev_fraction = dev_fraction
        self.tolerance = tolerance
        self.C = C
        self.seed = seed

    def fit(self, X: Any, y: Any) -> INLP:
        """Learn the nullspace projection from representations ``X`` and protected-attribute labels ``y``."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split

        matrix = _as_matrix(X, "X")
        labels = np.asarray(y)
        if labels.shape != (matrix.shape[0],):
            raise DataError(f"y must hold one protected-attribute label per row of X ({matrix.shape[0]}), "
                            f"got shape {labels.shape}.")
        if np.unique(labels).size < 2:
            raise DataError(f"y has a single class ({labels[:1].tolist()}); INLP needs at least two groups.")
        if not isinstance(self.n_iterations, int) or self.n_iterations < 1:
            raise ConfigError(f"n_iterations must be a positive integer, got {self.n_iterations!r}.")
        if not 0 < self.dev_fraction < 1:
            raise ConfigError(f"dev_fraction must be in (0, 1), got {self.dev_fraction!r}.")
        # one global scale (it leaves every nullspace unchanged) so C means the same for any model's units
        scale = float(matrix.std()) or 1.0
        x_tr, x_dev, y_tr, y_dev = train_test_split(matrix / scale, labels, test_size=self.dev_fraction,
                                                    random_state=self.seed, stratify=labels)
        _, counts = np.unique(y_dev, return_counts=True)
        self.majority_rate_ = float(counts.max() / counts.sum())
        projection = np.eye(matrix.shape[1])
        directions: list[np.ndarray] = []
        self.accuracies_: list[float] = []
        for i in range(self.n_iterations):
            clf = LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed + i)
            clf.fit(x_tr @ projection, y_tr)
            accuracy = float(clf.score(x_dev @ projection, y_dev))
            self.accuracies_.append(accuracy)
            if accuracy <= self.majority_rate_ + self.tolerance:
                break
            directions.extend(np.atleast_2d(clf.coef_))
            projection = np.eye(matrix.shape[1]) - _rowspace_projection(np.stack(directions))
        self.directions_ = np.stack(directions) if directions else np.zeros((0, matrix.shape[1]))
        self.projection_ = projection
        return self


# -- representations under a classifier ----------------------------------------------------
def _classification_head(model: Any) -> Any:
    """The last ``torch.nn.Linear`` with ``num_labels`` outputs: the layer whose input is the representation."""
    import torch

    n_labels = int(getattr(model.config, "num_labels", 0) or 0)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == n_labels]
    if not heads:
        raise ConfigError(f"No linear classification head with {n_labels} outputs was found in "
                          f"{type(model).__name__}. Use an encoder model or a standard *ForSequenceClassification.")
    return heads[-1]


def head_inputs(target: Any, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
    """The representation a sequence classifier's final linear layer receives, one row per text."""
    import torch

    head = _classification_head(target.model)
    captured: list[np.ndarray] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().cpu().numpy()))
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = target.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                         max_length=target.max_length, return_tensors="pt").to(target.device)
                target.model(**batch)
    finally:
        hook.remove()
    return np.concatenate(captured) if captured else np.zeros((0, head.in_features))


def fold_projection_into_head(model: Any, projection: np.ndarray) -> None:
    """Replace the head's weight ``W`` by ``W P`` in place (the caller owns ``model``)."""
    import torch

    head = _classification_head(model)
    with torch.no_grad():
        p = torch.as_tensor(projection, dtype=head.weight.dtype, device=head.weight.device)
        head.weight.copy_(head.weight @ p)


def save_projection(directory: str | Path, projection: np.ndarray, *, technique: str, layer: int,
                    pooling: str, parameters: dict[str, Any] | None = None) -> Path:
    """Write ``rai_audit_projection.safetensors`` (matrix plus metadata) into a model directory.

    :func:`audit.load_target` reads it back and applies it in ``AuditTarget.embed`` at ``layer``.
    """
    import torch
    from safetensors.torch import save_file

    matrix = np.asarray(projection, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise DataError(f"A projection must be a square matrix, got shape {matrix.shape}.")
    path = Path(directory) / PROJECTION_FILENAME
    metadata = {"technique": technique, "layer": str(int(layer)), "pooling": pooling,
                "parameters": json.dumps(parameters or {}, sort_keys=True)}
    save_file({"projection": torch.from_numpy(np.ascontiguousarray(matrix))}, str(path), metadata=metadata)
    return path
