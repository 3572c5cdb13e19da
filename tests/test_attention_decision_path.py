"""Decision path probe: the head applied per layer, checked against the head applied by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit import load_target
from audit.context import AuditContext
from probes.decision_path import DecisionPathProbe, decision_layer, layer_logits

TEXT = "the nurse said she would finish the report"


def test_classifier_layers_equal_pooler_and_classifier_on_each_hidden_state(tiny_targets):
    target = tiny_targets["sequence-classification"]
    model = target.model
    ids = target.tokenizer(TEXT)["input_ids"]
    rows = layer_logits(model, ids)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        expected = [model.classifier(model.bert.pooler(h))[0].numpy() for h in out.hidden_states]
    assert rows.shape == (3, 2)
    np.testing.assert_allclose(rows, np.stack(expected), atol=1e-5)
    np.testing.assert_allclose(rows[-1], out.logits[0].numpy(), atol=1e-6)


def test_logit_lens_equals_final_norm_and_unembedding(tiny_targets):
    target = tiny_targets["causal-lm"]
    model = target.model
    ids = target.tokenizer(TEXT)["input_ids"]
    rows = layer_logits(model, ids)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
        hidden = out.hidden_states
        # transformers applies ln_f to the last hidden state it returns; the earlier ones are raw block outputs
        lens = [model.lm_head(model.transformer.ln_f(h))[0, -1].numpy() for h in hidden[:-1]]
    np.testing.assert_allclose(rows[:-1], np.stack(lens), atol=1e-4)
    np.testing.assert_allclose(rows[-1], out.logits[0, -1].numpy(), atol=1e-5)
    np.testing.assert_allclose(rows[-1], model.lm_head(hidden[-1])[0, -1].detach().numpy(), atol=1e-5)


@pytest.mark.parametrize(("path", "expected"), [([1, 1, 1], 0), ([0, 0, 1], 2), ([0, 1, 0, 1, 1], 3), ([1], 0)])
def test_decision_layer(path, expected):
    probs = np.eye(2)[path]  # each layer certain of its top class
    assert decision_layer(probs, min_margin=0.5) == expected


@pytest.mark.parametrize("kind", ["sequence-classification", "causal-lm"])
def test_probe_draws_one_chart_per_example(kind, tiny_targets):
    target = tiny_targets[kind]
    result = DecisionPathProbe(examples=[TEXT, "he is a doctor"]).run(target, AuditContext().for_probe("decision_path"))
    assert result.status == "passed"
    assert len(result.figures) == 2
    for figure in result.figures:
        assert figure.svg.lstrip().startswith("<?xml") and "<script" not in figure.svg
    summary, first = result.tables[0], result.tables[1]
    assert len(first.rows) == target.num_layers + 1
    decided = [row[summary.columns.index("decision layer")] for row in summary.rows]
    numbers = [d for d in decided if d != "undecided"]
    depth = result.metrics["mean_decision_depth"].value
    assert depth is None if not numbers else depth == pytest.approx(np.mean(numbers) / target.num_layers)
    if kind == "sequence-classification":
        ids = target.tokenizer(TEXT)["input_ids"]
        with torch.no_grad():
            final = torch.softmax(target.model(input_ids=torch.tensor([ids])).logits, -1)[0].numpy()
        np.testing.assert_allclose(first.rows[-1][1:3], final, atol=1e-5)


def test_not_applicable_to_encoders():
    assert "encoder" not in DecisionPathProbe.kinds and "masked-lm" not in DecisionPathProbe.kinds


@pytest.mark.slow
def test_minilm_decision_path():
    target = load_target(None, kind="sequence-classification", progress=False, device="cpu")
    result = DecisionPathProbe(max_examples=2).run(target, AuditContext().for_probe("decision_path"))
    assert result.status == "passed" and len(result.figures) == 2
    assert len(result.tables[1].rows) == 7
    # the [CLS] read-out at the embeddings is the same for every text and never decides
    assert all(row[5] != 0 for row in result.tables[0].rows)
    assert "the embeddings read the same state for every input" in result.summary
