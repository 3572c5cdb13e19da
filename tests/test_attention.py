"""Attention probe: maps against an eager model, rollout against a direct matrix product, the card."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from audit import Auditor, load_target
from audit.context import AuditContext
from probes.attention import AttentionProbe, attention_maps, attention_rollout

TEXT = "the nurse said she would finish the report before the doctor arrived"


def _eager_attentions(directory, kind, ids):
    """Attention weights from a second copy of the model loaded with eager attention (independent path)."""
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    model = cls.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_attentions=True)
    return np.stack([a[0].numpy() for a in out.attentions])


def _direct_rollout(maps, residual=True):
    n = maps.shape[-1]
    adjusted = []
    for layer in maps.astype(np.float64):
        a = layer.mean(axis=0)
        if residual:
            a = a + np.eye(n)
            a = a / a.sum(axis=1, keepdims=True)
        adjusted.append(a)
    # R = A_L @ ... @ A_1: the last layer is leftmost
    return np.linalg.multi_dot(adjusted[::-1]) if len(adjusted) > 1 else adjusted[0]


@pytest.mark.parametrize("kind", ["sequence-classification", "causal-lm"])
def test_maps_match_an_eager_copy_and_rows_sum_to_one(kind, tiny_targets, tiny_dirs):
    target = tiny_targets[kind]
    ids = target.tokenizer(TEXT)["input_ids"]
    maps = attention_maps(target.model, ids)
    expected = _eager_attentions(tiny_dirs[kind], kind, ids)
    assert maps.shape == (2, 2, len(ids), len(ids))
    np.testing.assert_allclose(maps, expected, atol=1e-6)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)
    if kind == "causal-lm":
        assert np.all(np.triu(maps, k=1) == 0)
    assert target.model.config._attn_implementation == "sdpa", "the attention implementation must be restored"


@pytest.mark.parametrize("kind", ["sequence-classification", "causal-lm"])
def test_rollout_equals_direct_product_of_adjusted_head_means(kind, tiny_targets, tiny_dirs):
    target = tiny_targets[kind]
    ids = target.tokenizer(TEXT)["input_ids"]
    maps = _eager_attentions(tiny_dirs[kind], kind, ids)
    rollout = attention_rollout(maps)
    np.testing.assert_allclose(rollout, _direct_rollout(maps), atol=1e-10)
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-10)
    np.testing.assert_allclose(attention_rollout(maps, residual=False), _direct_rollout(maps, residual=False),
                               atol=1e-10)
    if kind == "causal-lm":
        assert np.allclose(np.triu(rollout, k=1), 0.0)


def test_probe_reports_rollout_and_layer_shares(tiny_targets, tiny_dirs):
    kind = "sequence-classification"
    target = tiny_targets[kind]
    state = {k: v.clone() for k, v in target.model.state_dict().items()}
    result = AttentionProbe(examples=[TEXT], per_head_examples=1).run(target, AuditContext().for_probe("attention"))
    ids = target.tokenizer(TEXT)["input_ids"]
    maps = _eager_attentions(tiny_dirs[kind], kind, ids)
    (example,) = result.examples
    np.testing.assert_allclose(example["rollout"], _direct_rollout(maps)[0], rtol=1e-3, atol=1e-6)
    assert example["from_token"] == "[CLS]"
    layers = result.tables[0]
    first = layers.columns.index("share on first token")
    special = layers.columns.index("share on special tokens")
    for layer, row in enumerate(layers.rows):
        assert row[first] == pytest.approx(maps[layer, :, :, 0].mean(), abs=1e-6)
        assert row[special] == pytest.approx(maps[layer][:, :, [0, len(ids) - 1]].sum(-1).mean(), abs=1e-6)
    assert len(result.figures) == 2
    for figure in result.figures:
        assert figure.svg.lstrip().startswith("<?xml") and "<script" not in figure.svg
    assert target.model.config._attn_implementation == "sdpa"
    for key, value in target.model.state_dict().items():
        assert torch.equal(value, state[key])


def test_card_escapes_tokens_and_long_text_is_truncated(tiny_targets):
    from reports.model_card import render_html_card

    target = tiny_targets["sequence-classification"]
    long_text = "<b>bold</b> " + "the movie was good and " * 60
    probe = AttentionProbe(examples=[long_text], per_head_examples=0, max_tokens=16)
    results = Auditor(probes=[probe]).run(target)
    (result,) = results.results
    assert result.status == "passed", result.summary
    assert result.examples[0]["truncated"] and "truncated" in result.summary
    assert len(result.examples[0]["tokens"]) == target.max_length
    assert "first 16 of 128 tokens shown" in result.figures[0].caption
    html = render_html_card(results)
    assert "<b>" not in html and ">&lt;<sub>" in html  # the token, escaped, then its weight (no hover needed)
    assert re.search(r'class="tok"[^>]*>[^<]*<sub>0(\.\d+)?(e-\d+)?</sub>', html)
    assert "Attention rollout by token" in html


@pytest.mark.slow
def test_minilm_attention():
    target = load_target(progress=False, device="cpu")
    result = AttentionProbe(max_examples=1).run(target, AuditContext().for_probe("attention"))
    assert result.status == "passed"
    assert len(result.tables[0].rows) == 6
    assert 0 < result.metrics["mean_attention_entropy"].value < 1
    np.testing.assert_allclose(sum(result.examples[0]["rollout"]), 1.0, atol=1e-3)
