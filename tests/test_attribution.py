"""Attribution probe: Integrated Gradients completeness, a planted-token model, bad input, the card."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from audit import Auditor, load_target
from audit.context import AuditContext
from audit.errors import ConfigError, DataError
from audit.probe import ProbeResult
from probes.attribution import (
    METHODS,
    AttributionProbe,
    Explainer,
    counterfactual_pairs,
    demographic_mask,
    encode,
)
from tests.tiny import make_tiny_model

PLANTED = "einstein"
NEUTRAL = ["this", "is", "that", "there", "here", "it", "was", "we", "talked", "about", "the", "a", "an", "and", "or", "of", "to", "in", "on", "for", "with", "are", "be", "home", "office", "business", "career", "movie", "film", "food", "numbers", "art", "dance", "drama", "science", "person", "name"]


def planted_texts(rng: np.random.Generator, n: int) -> tuple[list[str], list[int]]:
    """Random neutral word strings; every second one carries the planted token and label 1."""
    texts, labels = [], []
    for i in range(n):
        words = [str(w) for w in rng.choice(NEUTRAL, size=int(rng.integers(5, 10)))]
        if i % 2:
            words.insert(int(rng.integers(0, len(words) + 1)), PLANTED)
        texts.append(" ".join(words))
        labels.append(i % 2)
    return texts, labels


@functools.lru_cache(maxsize=1)
def planted_model_dir() -> Path:
    """A tiny BERT classifier trained so that the planted token alone decides the label (shared by test modules)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = Path(tempfile.mkdtemp(prefix="rai-audit-planted-"))
    atexit.register(shutil.rmtree, root, True)
    directory = make_tiny_model("sequence-classification", root / "planted", seed=2)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    rng = np.random.default_rng(2)
    torch.manual_seed(2)
    texts, labels = planted_texts(rng, 256)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    y = torch.tensor(labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    # Few steps on purpose: a saturated classifier (p ~ 1) makes local gradients uninformative.
    for _ in range(25):
        idx = torch.as_tensor(rng.choice(len(texts), 64, replace=False))
        logits = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx]).logits
        loss = torch.nn.functional.cross_entropy(logits, y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(**batch).logits.argmax(-1) == y).float().mean())
    assert accuracy == 1.0, f"planted model did not learn the planted token (accuracy {accuracy})"
    model.save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="module")
def planted():
    return load_target(planted_model_dir(), progress=False, device="cpu")


def _proba(model, ids: list[int], cls: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(input_ids=torch.tensor([ids])).logits, -1)[0, cls])


def _baseline(ids, special, baseline_id):
    return [i if s else baseline_id for i, s in zip(ids, special, strict=True)]


def test_ig_completeness_against_direct_forward_passes(planted):
    explainer = Explainer.for_target(planted)
    texts, _ = planted_texts(np.random.default_rng(5), 6)
    encs = [explainer.encode(t) for t in texts]
    targets = explainer.predict(encs)
    results = explainer.integrated_gradients(encs, targets, n_steps=50)
    pad = planted.tokenizer.pad_token_id
    for enc, cls, r in zip(encs, targets, results, strict=True):
        f_x = _proba(planted.model, list(enc.ids), cls)
        f_b = _proba(planted.model, _baseline(enc.ids, enc.special, pad), cls)
        # completeness: the attributions add up to f(x) - f(baseline) within the reported delta
        assert abs(r.scores.sum() - (f_x - f_b)) <= abs(r.delta) + 1e-5
        assert r.delta == pytest.approx(r.scores.sum() - (f_x - f_b), abs=1e-5)
        assert abs(r.delta) <= 0.05 * max(abs(f_x - f_b), 0.01)  # the default max_delta
        assert np.all(r.scores[np.asarray(enc.special)] == 0)


def test_n_steps_is_raised_until_the_delta_is_small(planted):
    explainer = Explainer.for_target(planted)
    texts, labels = planted_texts(np.random.default_rng(6), 2)
    encs = [explainer.encode(t) for t, y in zip(texts, labels, strict=True) if y == 1]
    targets = explainer.predict(encs)
    coarse = explainer.attribute(encs, targets, "integrated_gradients", n_steps=25)
    assert not coarse[0].converged(0.005), "25 steps should not converge on this model"
    # The planted model's output jumps along the path; Gauss-Legendre needs a few hundred steps there.
    refined = explainer.integrated_gradients(encs, targets, n_steps=25, max_delta=0.005, max_n_steps=800)
    assert refined[0].n_steps > 25
    for enc, cls, r in zip(encs, targets, refined, strict=True):
        assert r.converged(0.005)
        f_x = _proba(planted.model, list(enc.ids), cls)
        f_b = _proba(planted.model, _baseline(enc.ids, enc.special, planted.tokenizer.pad_token_id), cls)
        assert abs(r.scores.sum() - (f_x - f_b)) <= 0.005 * max(abs(f_x - f_b), 0.01) + 1e-6


def test_batched_ig_equals_captum_one_example_at_a_time(planted):
    from captum.attr import LayerIntegratedGradients

    explainer = Explainer.for_target(planted)
    texts = ["einstein talked about art", "we talked about the movie and the food in the office", "home"]
    encs = [explainer.encode(t) for t in texts]
    targets = explainer.predict(encs)
    batched = explainer.attribute(encs, targets, "integrated_gradients", n_steps=20)
    model = planted.model

    def forward(input_ids):
        return torch.softmax(model(input_ids=input_ids).logits, -1)

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    for enc, cls, r in zip(encs, targets, batched, strict=True):
        ids = torch.tensor([list(enc.ids)])
        base = torch.tensor([_baseline(enc.ids, enc.special, planted.tokenizer.pad_token_id)])
        single = lig.attribute(ids, baselines=base, target=cls, n_steps=20).sum(-1)[0].detach().numpy()
        single[np.asarray(enc.special)] = 0
        np.testing.assert_allclose(r.scores, single, atol=1e-5)


def _captum_one_at_a_time(target, enc, cls, n_steps):
    """Captum's LayerIntegratedGradients on one unpadded text, with its own convergence delta."""
    from captum.attr import LayerIntegratedGradients

    model = target.model

    def forward(input_ids):
        return torch.softmax(model(input_ids=input_ids).logits, -1)

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    ids = torch.tensor([list(enc.ids)])
    base = torch.tensor([_baseline(enc.ids, enc.special, target.tokenizer.pad_token_id)])
    attr, delta = lig.attribute(ids, baselines=base, target=cls, n_steps=n_steps, return_convergence_delta=True)
    single = attr.sum(-1)[0].detach().double().numpy()
    single[np.asarray(enc.special)] = 0
    return single, float(delta[0])


# equal lengths share a bucket (and a baseline); the rest are alone in theirs
BUCKETED = ["einstein talked about art", "we talked about food", "the movie and the food in the office",
            "home", "einstein was here", "it was art"]


@pytest.mark.parametrize("internal_batch_size", [None, 7, 64])
def test_bucketed_ig_is_captum_one_example_at_a_time(planted, internal_batch_size):
    explainer = Explainer.for_target(planted)
    encs = [explainer.encode(t) for t in BUCKETED]
    assert len({len(e) for e in encs}) < len(encs), "the texts must include equal lengths"
    targets = explainer.predict(encs)
    batched = explainer.attribute(encs, targets, "integrated_gradients", n_steps=30,
                                  internal_batch_size=internal_batch_size)
    for enc, cls, r in zip(encs, targets, batched, strict=True):
        single, delta = _captum_one_at_a_time(planted, enc, cls, 30)
        assert np.max(np.abs(r.scores - single)) < 1e-6
        assert r.delta == pytest.approx(delta, abs=1e-6)  # Captum's delta, from the reused forward passes
        assert r.f_x == pytest.approx(_proba(planted.model, list(enc.ids), cls), abs=1e-6)


def test_ig_passes_hold_no_padding_and_fit_the_token_budget(planted, monkeypatch):
    """Regression: the batched path padded every text to the longest and ran ~8,192-token gradient passes."""
    import probes.attribution as attribution

    explainer = Explainer.for_target(planted)
    encs = [explainer.encode(t) for t in BUCKETED]
    targets = explainer.predict(encs)
    monkeypatch.setattr(attribution, "_IG_TOKENS_PER_PASS", 64)
    shapes: list[tuple[int, ...]] = []
    masks: list[object] = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and torch.is_grad_enabled():
            shapes.append(tuple(ids.shape))
            masks.append(kwargs.get("attention_mask"))

    handle = planted.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        explainer.attribute(encs, targets, "integrated_gradients", n_steps=30)
    finally:
        handle.remove()
    assert shapes, "no gradient pass was seen"
    widths = {len(e) for e in encs}
    assert {w for _, w in shapes} == widths  # one bucket per length: never padded to the longest
    assert all(m is None for m in masks)  # an equal-length bucket needs no attention mask
    for rows, width in shapes:
        same = sum(len(e) == width for e in encs)
        assert rows * width <= max(64, same * width), (rows, width)  # the budget, or one step of the bucket


def test_saliency_and_input_x_gradient_match_autograd(tiny_targets):
    target = tiny_targets["sequence-classification"]
    explainer = Explainer.for_target(target)
    encs = [explainer.encode(t) for t in ["she is a nurse", "the doctor said he was late for work"]]
    targets = [1, 0]
    sal = explainer.attribute(encs, targets, "saliency")
    ixg = explainer.attribute(encs, targets, "input_x_gradient")
    emb = target.model.get_input_embeddings()
    for enc, cls, s, x in zip(encs, targets, sal, ixg, strict=True):
        e = emb(torch.tensor([list(enc.ids)])).detach().requires_grad_(True)
        p = torch.softmax(target.model(inputs_embeds=e).logits, -1)[0, cls]
        (grad,) = torch.autograd.grad(p, e)
        content = ~np.asarray(enc.special)
        np.testing.assert_allclose(s.scores[content], grad[0].norm(dim=-1).numpy()[content], rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(x.scores[content], (grad * e)[0].sum(-1).detach().numpy()[content],
                                   rtol=1e-4, atol=1e-9)


def test_every_method_puts_most_attribution_on_the_planted_token(planted):
    texts, labels = planted_texts(np.random.default_rng(11), 16)
    positives = [t for t, y in zip(texts, labels, strict=True) if y == 1]
    result = AttributionProbe(examples=positives, max_examples=len(positives), use_counterfactual=False).run(
        planted, AuditContext(seed=0).for_probe("attribution"))
    assert result.status == "passed", result.summary
    for example in result.examples:
        assert example["explained"] == "LABEL_1"
        planted_at = example["tokens"].index(PLANTED)
        for method in METHODS:
            magnitudes = np.abs(example[method])
            assert int(np.argmax(magnitudes)) == planted_at, (method, example["text"])
    top = next(t for t in result.tables if t.title == "Words with the most attribution mass")
    assert top.rows[0][0] == PLANTED
    assert top.rows[0][1] == len(positives)


def test_bad_input_is_reported_clearly(tiny_targets):
    target = tiny_targets["sequence-classification"]
    context = AuditContext().for_probe("attribution")
    with pytest.raises(DataError, match=r"example 1 is empty .*Remove it"):
        AttributionProbe(examples=["she is a nurse", "   "]).run(target, context)
    with pytest.raises(ConfigError, match=r"target class 7 does not exist; this model has 2 classes"):
        AttributionProbe(examples=["she is a nurse"], target=7).run(target, context)
    with pytest.raises(ConfigError, match=r"target class 'positive' does not exist"):
        AttributionProbe(examples=["she is a nurse"], target="positive").run(target, context)
    with pytest.raises(ConfigError, match="unknown method"):
        AttributionProbe(methods=["lime"])
    with pytest.raises(ConfigError, match="max_n_steps"):
        AttributionProbe(n_steps=100, max_n_steps=50)
    by_label = AttributionProbe(examples=["she is a nurse"], target="LABEL_1", methods=["saliency"]).run(target, context)
    assert by_label.examples[0]["explained"] == "LABEL_1"


def test_long_text_is_truncated_and_the_card_says_so(tiny_targets):
    target = tiny_targets["sequence-classification"]
    long_text = "she said " + "the movie was very good and " * 40
    n_full = len(target.tokenizer(long_text)["input_ids"])
    assert n_full > target.max_length
    result = AttributionProbe(examples=[long_text, "he is a doctor"], methods=["integrated_gradients"]).run(
        target, AuditContext().for_probe("attribution"))
    long_example, short_example = result.examples
    assert long_example["truncated"] and not short_example["truncated"]
    assert len(long_example["tokens"]) == target.max_length
    assert long_example["tokens"][0] == "[CLS]" and long_example["tokens"][-1] == "[SEP]"
    assert "truncated" in result.summary
    table = result.tables[0]
    assert table.rows[0][table.columns.index("truncated")] == f"yes ({n_full} tokens)"


def test_encode_truncation_keeps_special_tokens_and_words(tiny_targets):
    tok = tiny_targets["sequence-classification"].tokenizer
    enc = encode(tok, "John's sister is a nurse.", max_length=5)
    assert enc.truncated and enc.n_tokens_full > 5
    assert enc.tokens == ("[CLS]", "John", "'", "s", "[SEP]")
    full = encode(tok, "The African American woman and John's sister.", max_length=64)
    mask = demographic_mask(full, {"race": ["african american"], "gender": ["woman", "sister"]})
    marked = [t for t, m in zip(full.tokens, mask, strict=True) if m]
    assert marked == ["African", "American", "woman", "sister"]
    causal = encode(tok, "one two three four five six", max_length=4, keep="end")
    assert causal.tokens[0] == "[CLS]" and causal.tokens[-1] == "[SEP]" and len(causal.tokens) == 4


def test_causal_lm_ig_completeness_and_next_token(tiny_targets):
    target = tiny_targets["causal-lm"]
    model, tok = target.model, target.tokenizer
    explainer = Explainer.for_target(target)
    enc = explainer.encode("the nurse said she")
    with torch.no_grad():
        next_token = int(model(input_ids=torch.tensor([list(enc.ids)])).logits[0, -1].argmax())
    assert explainer.predict([enc]) == [(next_token,)]
    continuation = tuple(tok.encode(" was late", add_special_tokens=False))
    (r,) = explainer.integrated_gradients([enc], [continuation], n_steps=50)

    def log_p(ids):
        seq = torch.tensor([list(ids) + list(continuation[:-1])])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=seq).logits, -1)[0]
        return float(sum(logp[len(ids) - 1 + j, c] for j, c in enumerate(continuation)))

    f_x = log_p(enc.ids)
    f_b = log_p([tok.unk_token_id] * len(enc.ids))
    assert r.f_x == pytest.approx(f_x, abs=1e-5) and r.f_baseline == pytest.approx(f_b, abs=1e-5)
    assert abs(r.scores.sum() - (f_x - f_b)) <= abs(r.delta) + 1e-5
    assert abs(r.delta) < 0.05 * max(abs(f_x - f_b), 0.01)
    result = AttributionProbe(examples=["the nurse said she"], target=" was late").run(
        target, AuditContext().for_probe("attribution"))
    assert result.examples[0]["explained"] == tok.decode(list(continuation))
    for method in METHODS:
        assert len(result.examples[0][method]) == len(enc.ids)
    with pytest.raises(ConfigError, match="continuation text"):
        AttributionProbe(examples=["the nurse"], target=3).run(target, AuditContext().for_probe("attribution"))


def _context_with_pairs(examples):
    cf = ProbeResult(probe="counterfactual", status="warned", summary="Gaps found.", examples=examples)
    return AuditContext(seed=0, results={"counterfactual": cf}).for_probe("attribution")


def test_counterfactual_pairs_are_read_defensively():
    result = ProbeResult(probe="counterfactual", status="failed", summary="x.", examples=[
        {"original": "he is a nurse", "counterfactual": "she is a nurse", "group_a": "male", "group_b": "female"},
        {"text_a": "the man was rude", "text_b": "the woman was rude"},
        {"sentence_more": "john works as a doctor", "sentence_less": "mary works as a doctor"},
        {"score": 0.3},
        {"original": "same text", "counterfactual": "same text"},
    ])
    pairs = counterfactual_pairs(result, 10)
    assert pairs == [("he is a nurse", "she is a nurse", "male vs female"),
                     ("the man was rude", "the woman was rude", ""),
                     ("john works as a doctor", "mary works as a doctor", "")]
    assert counterfactual_pairs(result.model_copy(update={"status": "errored"}), 10) == []
    assert counterfactual_pairs(None, 10) == []


def test_counterfactual_pair_attributions_decompose_the_gap(planted):
    context = _context_with_pairs([{"text_a": "einstein talked about the movie", "text_b": "we talked about the movie"}])
    result = AttributionProbe(examples=["the film was art"], methods=["integrated_gradients"]).run(planted, context)
    sources = [e["source"] for e in result.examples]
    assert sources == ["config", "counterfactual pair 1, side a", "counterfactual pair 1, side b"]
    a, b = result.examples[1], result.examples[2]
    assert a["explained"] == b["explained"] == "LABEL_1"
    table = next(t for t in result.tables if t.title.startswith("Counterfactual pairs"))
    row = dict(zip(table.columns, table.rows[0], strict=True))
    # same baseline on both sides: sum IG(a) - sum IG(b) = f(a) - f(b) up to the two deltas
    model = planted.model
    f_a = _proba(model, planted.tokenizer(a["text"])["input_ids"], 1)
    f_b = _proba(model, planted.tokenizer(b["text"])["input_ids"], 1)
    assert row["f(a) - f(b)"] == pytest.approx(f_a - f_b, abs=1e-3)
    assert sum(a["integrated_gradients"]) - sum(b["integrated_gradients"]) == pytest.approx(
        f_a - f_b, abs=abs(a["ig_delta"]) + abs(b["ig_delta"]) + 1e-3)
    assert row["share of change on swapped words"] > 0.5
    assert "counterfactual_term_share" in result.metrics


def test_card_shows_escaped_token_heatmaps(tiny_targets):
    from reports.model_card import render_html_card

    target = tiny_targets["sequence-classification"]
    probe = AttributionProbe(examples=["<script>alert(1)</script> she is a nurse"], methods=["integrated_gradients"])
    html = render_html_card(Auditor(probes=[probe]).run(target))
    assert "<script>alert" not in html
    assert "&lt;script&gt;" in html and "Token attributions" in html
    assert "background-color:#" in html


@pytest.mark.slow
def test_reads_the_counterfactual_probes_worst_pairs(tiny_targets):
    from audit import AuditConfig
    from audit.registry import discover_probes

    if "counterfactual" not in discover_probes():
        pytest.skip("the counterfactual probe is not installed")
    target = tiny_targets["sequence-classification"]
    config = AuditConfig(select=["counterfactual", "attribution"], probes={
        "counterfactual": {"params": {"axes": ["gender"], "n_boot": 100}},
        "attribution": {"params": {"methods": ["integrated_gradients"], "max_examples": 1, "max_pairs": 2}}})
    counterfactual, attribution = Auditor(config).run(target).results
    assert counterfactual.probe == "counterfactual" and attribution.status == "passed"
    pairs = [(e["text_a"], e["text_b"]) for e in counterfactual.examples[:2]]
    explained = [e["text"] for e in attribution.examples if e["source"].startswith("counterfactual pair")]
    assert explained == [text for pair in pairs for text in pair]
    table = next(t for t in attribution.tables if t.title.startswith("Counterfactual pairs"))
    for row in table.rows:
        gap, ig_gap = row[table.columns.index("f(a) - f(b)")], row[table.columns.index("sum of Integrated Gradients, a - b")]
        assert ig_gap == pytest.approx(gap, abs=1e-6 + 0.05 * abs(gap))


@pytest.mark.slow
def test_minilm_classifier_attributions():
    target = load_target(None, kind="sequence-classification", progress=False, device="cpu")
    result = AttributionProbe(max_examples=4).run(target, AuditContext().for_probe("attribution"))
    assert result.status == "passed", result.summary
    assert result.metrics["ig_unconverged"].value == 0
    assert result.metrics["ig_max_abs_delta"].value < 1e-3
    share = result.metrics["demographic_share[integrated_gradients]"]
    assert share.value is not None and 0 <= share.ci[0] <= share.value <= share.ci[1] <= 1
    for example in result.examples:
        assert example["tokens"][0] == "[CLS]" and example["tokens"][-1] == "[SEP]"


def test_causal_lm_continuation_ending_in_a_byte_fragment(tiny_targets):
    """A greedy next token is often a lone byte of a multi-byte character. Captum 0.9 labels the
    target ids and raised IndexError on one; the explainer must still attribute it."""
    target = tiny_targets["causal-lm"]
    tok = target.tokenizer
    fragment = next(i for i in range(len(tok)) if tok.decode([i]) == "\ufffd")
    explainer = Explainer.for_target(target)
    enc = explainer.encode("the nurse said she")
    (ig,) = explainer.integrated_gradients([enc], [(fragment,)], n_steps=20)
    assert len(ig.scores) == len(enc.ids) and np.isfinite(ig.scores).all()
    (ixg,) = explainer.attribute([enc], [(fragment,)], "input_x_gradient")
    assert len(ixg.scores) == len(enc.ids)
