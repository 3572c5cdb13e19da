"""SentenceDebias and INLP against planted ground truth, and the projection saved beside a model."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from audit import load_target
from audit.errors import DataError, ModelLoadError, NotFittedError
from audit.target import PROJECTION_FILENAME
from probes.debias import INLP, SentenceDebias
from probes.debias.projection import fold_projection_into_head, head_inputs, save_projection

DIM = 16


def weat_effect_size(X, Y, A, B):
    """Caliskan et al. 2017 effect size, written out from the definition (cosine, ddof=1)."""
    def cos(u, v):
        return (u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))

    def s(w):
        return np.mean([cos(w, a) for a in A]) - np.mean([cos(w, b) for b in B])

    sx, sy = [s(x) for x in X], [s(y) for y in Y]
    return (np.mean(sx) - np.mean(sy)) / np.std(sx + sy, ddof=1)


def planted_world(seed=0):
    """Targets and attributes that share a planted 'gender' direction g; pairs differ only along g."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=DIM)
    g /= np.linalg.norm(g)
    content = lambda n: rng.normal(size=(n, DIM))  # noqa: E731 - a local shorthand
    neutral = [content(40) for _ in range(4)]
    signs = (3, -3, 3, -3)  # X, Y: e.g. male / female names; A, B: e.g. career / family words
    planted = [m + s * g for m, s in zip(neutral, signs)]
    base = content(60)
    pairs_a = base + g + 0.05 * content(60)
    pairs_b = base - g + 0.05 * content(60)
    return g, planted, neutral, (pairs_a, pairs_b)


def test_sentence_debias_finds_the_planted_direction_and_zeroes_the_seat_effect():
    g, (X, Y, A, B), neutral, (pa, pb) = planted_world()
    before = weat_effect_size(X, Y, A, B)
    # ground truth: the neutral content with exactly the planted direction removed
    truth = weat_effect_size(*(m @ (np.eye(DIM) - np.outer(g, g)) for m in neutral))
    sd = SentenceDebias(n_components=1).fit(pa, pb)
    assert abs(sd.bias_subspace_[0] @ g) > 0.99
    assert sd.explained_variance_ratio_[0] > 0.9
    P = sd.projection_
    np.testing.assert_allclose(P, P.T, atol=1e-12)
    np.testing.assert_allclose(P @ P, P, atol=1e-10)
    after = weat_effect_size(*(sd.transform(M) for M in (X, Y, A, B)))
    assert before > 1.5
    assert after == pytest.approx(truth, abs=0.05)
    assert abs(after) < 0.35
    # the content orthogonal to g is untouched
    v = np.linalg.svd(np.eye(DIM) - np.outer(g, g))[0][:, 0]
    np.testing.assert_allclose(sd.transform(v[None])[0], v, atol=0.05)


def test_inlp_brings_a_linear_probe_to_chance():
    rng = np.random.default_rng(1)
    n = 600
    y = rng.integers(0, 2, n)
    # the attribute is spread over three planted directions, with noise
    directions = np.linalg.qr(rng.normal(size=(DIM, 3)))[0].T
    X = rng.normal(size=(n, DIM)) + (2 * y - 1)[:, None] * (directions.sum(0) * 1.5)
    train, test = slice(0, 400), slice(400, None)
    before = LogisticRegression(max_iter=2000).fit(X[train], y[train]).score(X[test], y[test])
    inlp = INLP(n_iterations=10, seed=0).fit(X[train], y[train])
    Z = inlp.transform(X)
    after = LogisticRegression(max_iter=2000).fit(Z[train], y[train]).score(Z[test], y[test])
    majority = max(np.mean(y[test]), 1 - np.mean(y[test]))
    assert before > 0.95
    assert after < majority + 0.07
    assert len(inlp.accuracies_) >= 2 and inlp.accuracies_[0] > 0.95
    assert inlp.accuracies_[-1] <= inlp.majority_rate_ + inlp.tolerance + 0.1
    np.testing.assert_allclose(inlp.projection_ @ inlp.projection_, inlp.projection_, atol=1e-8)
    # the planted signal direction is projected out
    assert np.linalg.norm(inlp.projection_ @ directions.sum(0)) < 0.1 * np.linalg.norm(directions.sum(0))


def test_estimators_refuse_bad_input_with_clear_messages():
    with pytest.raises(NotFittedError, match=r"Call fit\(\) before transform\(\)"):
        SentenceDebias().transform(np.ones((2, 3)))
    with pytest.raises(DataError, match="must pair row by row"):
        SentenceDebias().fit(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(DataError, match="single class"):
        INLP().fit(np.random.default_rng(0).normal(size=(10, 3)), np.zeros(10))
    sd = SentenceDebias().fit(np.eye(4), -np.eye(4))
    with pytest.raises(DataError, match="fitted on 4"):
        sd.transform(np.ones((1, 5)))


def test_projection_saved_beside_an_encoder_loads_back_and_is_applied(tiny_dirs, tmp_path):
    source = tiny_dirs["encoder"]
    out = tmp_path / "debiased"
    shutil.copytree(source, out)
    raw = load_target(source, progress=False, device="cpu")
    texts = ["he is a doctor", "she is a nurse", "the movie was good"]
    rng = np.random.default_rng(0)
    q = np.linalg.qr(rng.normal(size=(32, 32)))[0][:, :2]
    P = np.eye(32) - q @ q.T
    save_projection(out, P, technique="sentence-debias", layer=-1, pooling="mean")
    debiased = load_target(out, progress=False, device="cpu")
    assert debiased.projection["technique"] == "sentence-debias"
    assert any(PROJECTION_FILENAME in note for note in debiased.notes)
    assert debiased.fingerprint != raw.fingerprint
    for pooling in ("mean", "cls"):
        expected = raw.embed(texts, pooling=pooling) @ P
        np.testing.assert_allclose(debiased.embed(texts, pooling=pooling), expected, atol=1e-5)
        # layer 2 is the last layer of the tiny model: the same layer as -1
        np.testing.assert_allclose(debiased.embed(texts, pooling=pooling, layer=2), expected, atol=1e-5)
    np.testing.assert_allclose(debiased.embed(texts, layer=1), raw.embed(texts, layer=1), atol=1e-6)
    np.testing.assert_allclose(debiased.embed(texts) @ q, 0, atol=1e-5)


def test_a_projection_of_the_wrong_size_is_refused(tiny_dirs, tmp_path):
    out = tmp_path / "wrong"
    shutil.copytree(tiny_dirs["encoder"], out)
    save_projection(out, np.eye(8), technique="inlp", layer=-1, pooling="mean")
    with pytest.raises(ModelLoadError, match="hidden size is 32"):
        load_target(out, progress=False, device="cpu")


def test_folding_into_the_head_equals_projecting_the_head_input(tiny_targets):
    target = tiny_targets["sequence-classification"]
    texts = ["he said the movie was good", "she said the food was bad"]
    h = head_inputs(target, texts)
    head = target.model.classifier
    W, b = head.weight.detach().double().numpy(), head.bias.detach().double().numpy()
    rng = np.random.default_rng(2)
    q = np.linalg.qr(rng.normal(size=(32, 32)))[0][:, :3]
    P = np.eye(32) - q @ q.T
    logits = h @ P @ W.T + b
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    import copy

    model = copy.deepcopy(target.model)
    fold_projection_into_head(model, P)
    batch = target.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        got = torch.softmax(model(**batch).logits, -1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not torch.equal(model.classifier.weight, target.model.classifier.weight)
