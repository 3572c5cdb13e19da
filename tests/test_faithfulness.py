"""Faithfulness probe: ERASER against a direct computation, the planted-token model, model randomisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audit import load_target
from audit.context import AuditContext
from audit.errors import ConfigError
from probes.attribution import TITLES, Explainer
from probes.faithfulness import (
    PERCENTAGES,
    FaithfulnessProbe,
    cascade_stages,
    eraser_curves,
    randomize_,
    rank_correlation,
    removal_order,
)
from tests.test_attribution import planted_model_dir, planted_texts


@pytest.fixture(scope="module")
def planted():
    return load_target(planted_model_dir(), progress=False, device="cpu")


@pytest.fixture(scope="module")
def planted_result(planted):
    texts, _ = planted_texts(np.random.default_rng(3), 16)
    probe = FaithfulnessProbe(examples=texts, max_examples=len(texts), randomization_examples=4, max_n_steps=100)
    return probe.run(planted, AuditContext(seed=0).for_probe("faithfulness"))


def _p(model, ids, cls):
    with torch.no_grad():
        return float(torch.softmax(model(input_ids=torch.tensor([ids])).logits, -1)[0, cls])


def test_eraser_curves_match_a_direct_computation(tiny_targets):
    target = tiny_targets["sequence-classification"]
    explainer = Explainer.for_target(target)
    texts = ["the nurse said she was late for work today", "he is a doctor", "art"]
    encs = [explainer.encode(t) for t in texts]
    rng = np.random.default_rng(0)
    scores = [rng.normal(size=len(e)) for e in encs]
    orders = [[removal_order(s, e)] for s, e in zip(scores, encs, strict=True)]
    targets = [1, 0, 1]
    full, comp, suff = eraser_curves(explainer, encs, targets, orders)
    for i, text in enumerate(texts):
        words = text.split()  # the tiny vocabulary has one token per word here
        ids = target.tokenizer(text)["input_ids"]
        assert len(ids) == len(words) + 2
        p_full = _p(target.model, ids, targets[i])
        assert full[i] == pytest.approx(p_full, abs=1e-6)
        magnitude = np.abs(scores[i][1:-1])
        ranked = sorted(range(len(words)), key=lambda w: (-magnitude[w], w))
        for k, pct in enumerate(PERCENTAGES):
            top = set(ranked[:max(1, math.ceil(len(words) * pct / 100))])
            without = " ".join(w for j, w in enumerate(words) if j not in top)
            only = " ".join(w for j, w in enumerate(words) if j in top)
            assert comp[i, 0, k] == pytest.approx(p_full - _p(target.model, target.tokenizer(without)["input_ids"],
                                                              targets[i]), abs=1e-5)
            assert suff[i, 0, k] == pytest.approx(p_full - _p(target.model, target.tokenizer(only)["input_ids"],
                                                              targets[i]), abs=1e-5)


def test_rank_correlation_is_spearman_of_magnitudes():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=20), rng.normal(size=20)

    def ranks(x):
        return np.argsort(np.argsort(np.abs(x))).astype(float)

    expected = np.corrcoef(ranks(a), ranks(b))[0, 1]
    assert rank_correlation(a, b) == pytest.approx(expected)
    assert rank_correlation(a, -a) == pytest.approx(1.0)
    assert math.isnan(rank_correlation(a, np.zeros(20)))


def test_planted_token_comprehensiveness_beats_random(planted_result):
    result = planted_result
    table = result.tables[0]
    rows = {row[0]: dict(zip(table.columns, row, strict=False)) for row in table.rows}
    random_comp = result.metrics["comprehensiveness[random]"].value
    random_suff = result.metrics["sufficiency[random]"].value
    for method in ("integrated_gradients", "saliency", "input_x_gradient"):
        comp = result.metrics[f"comprehensiveness[{method}]"]
        suff = result.metrics[f"sufficiency[{method}]"]
        assert comp.value > random_comp + 0.1, method
        assert comp.p_value < 0.05 and suff.p_value < 0.05, method
        assert suff.value < random_suff, method
    assert rows["Integrated Gradients"]["verdict"] == "trust"
    assert result.summary.startswith("Trust ")


def test_randomisation_drops_gradient_attribution_correlation(planted_result):
    cascade = next(t for t in planted_result.tables if t.title.startswith("Model randomisation cascade"))
    assert [row[0] for row in cascade.rows] == ["head", "layer 2", "layer 1", "embeddings"]
    for method in ("integrated_gradients", "input_x_gradient"):
        rho = planted_result.metrics[f"randomized_rank_correlation[{method}]"].value
        # the trained model's attributions correlate perfectly with themselves (rho = 1)
        assert 0 <= rho < 0.4, (method, rho)
        signed = [row[cascade.columns.index(TITLES[method])] for row in cascade.rows[-2:]]
        assert rho == pytest.approx(max(abs(v) for v in signed))
    figure = planted_result.figures[-1]
    assert figure.title == "Model randomisation cascade" and "<script" not in figure.svg


def test_probe_never_changes_the_target(planted):
    before = {k: v.clone() for k, v in planted.model.state_dict().items()}
    texts, _ = planted_texts(np.random.default_rng(4), 4)
    FaithfulnessProbe(examples=texts, methods=["saliency"], n_random=2).run(
        planted, AuditContext().for_probe("faithfulness"))
    for key, value in planted.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_cascade_stages_and_randomize(tiny_targets):
    import copy

    bert = copy.deepcopy(tiny_targets["sequence-classification"].model)
    stages = cascade_stages(bert)
    assert [s[0] for s in stages] == ["head", "layer 2", "layer 1", "embeddings"]
    head_names = [n for n, _ in stages[0][1]]
    assert "classifier.weight" in head_names and "bert.pooler.dense.weight" in head_names
    # the embedding block is re-initialised last, and only there
    assert not any("embeddings" in n for s in stages[:-1] for n, _ in s[1])
    assert all(n.startswith("bert.embeddings.") for n, _ in stages[-1][1])
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    randomize_(stages[1][1], std=0.02, generator=torch.Generator().manual_seed(0))
    changed = {k for k, v in bert.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("bert.encoder.layer.1.") for k in changed)

    gpt2 = copy.deepcopy(tiny_targets["causal-lm"].model)
    stages = cascade_stages(gpt2)
    names = [n for _, params in stages[:-1] for n, _ in params]
    assert "transformer.ln_f.weight" in names
    # still tied: the shared matrix is the input embedding, re-initialised with the embeddings
    assert "lm_head.weight" not in names and not any("wte" in n or "wpe" in n for n in names)
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= {n for n, _ in stages[-1][1]}


def test_survivors_are_flagged(planted):
    # Saliency on the planted model: after every layer is re-initialised its map still follows the
    # embedding normalisation (|rho| ~ 0.7), so it describes the input, not the model.
    texts, _ = planted_texts(np.random.default_rng(3), 8)
    result = FaithfulnessProbe(examples=texts, methods=["saliency"], n_random=2, randomization_examples=4).run(
        planted, AuditContext().for_probe("faithfulness"))
    metric = result.metrics["randomized_rank_correlation[saliency]"]
    assert metric.value >= 0.5 and metric.p_value <= 0.05
    row = result.tables[0].rows[0]
    assert row[-2] is True and row[-1] == "do not trust: survives model randomisation"
    assert result.status == "warned" and "survives model randomisation" in result.summary


def test_causal_lm_faithfulness_runs(tiny_targets):
    target = tiny_targets["causal-lm"]
    result = FaithfulnessProbe(examples=["the nurse said she", "he works as a"], n_random=2).run(
        target, AuditContext().for_probe("faithfulness"))
    assert result.status in ("passed", "warned")
    for method in ("integrated_gradients", "saliency", "input_x_gradient"):
        assert result.metrics[f"comprehensiveness[{method}]"].value is not None
        assert f"randomized_rank_correlation[{method}]" in result.metrics


def test_bad_parameters():
    with pytest.raises(ConfigError, match="percentages"):
        FaithfulnessProbe(percentages=[0, 10])
    with pytest.raises(ConfigError, match="n_random"):
        FaithfulnessProbe(n_random=0)
    with pytest.raises(ConfigError, match="unknown method"):
        FaithfulnessProbe(methods=["gradcam"])
    with pytest.raises(ConfigError, match=r"max_rank_correlation in \[0, 1\]"):
        FaithfulnessProbe(max_rank_correlation=-0.5)
    with pytest.raises(ConfigError, match="min_gain"):
        FaithfulnessProbe(min_gain=1.5)


@pytest.mark.slow
def test_minilm_faithfulness():
    target = load_target(None, kind="sequence-classification", progress=False, device="cpu")
    result = FaithfulnessProbe(max_examples=4, randomization_examples=1, n_random=2).run(
        target, AuditContext().for_probe("faithfulness"))
    assert result.status in ("passed", "warned")
    assert len(next(t for t in result.tables if t.title.startswith("Model randomisation")).rows) == 8
    for method in ("integrated_gradients", "saliency", "input_x_gradient"):
        metric = result.metrics[f"comprehensiveness[{method}]"]
        assert metric.ci[0] <= metric.value <= metric.ci[1]
