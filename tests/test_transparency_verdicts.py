"""Transparency verdicts (issue 13): each test plants the truth and checks the verdict says it.

1. A reversed ranking after model randomisation is not erased (|rho|), and the cascade reaches
   every parameter, the embedding block and a tied unembedding included.
2. "Better than random" can pass at the stated minimum number of examples, and a tiny effect
   does not earn trust.
3. A layer decides only with a margin; a [CLS] read-out at the embeddings never does.
4. The demographic-term share is a finding only beyond position-matched controls.
5. The same seed gives the same verdicts.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from audit import load_target
from audit.context import AuditContext
from probes import faithfulness
from probes.attribution import (
    AttributionProbe,
    Explainer,
    control_rank_p_value,
    demographic_mask,
    position_matched_controls,
)
from probes.decision_path import (
    DecisionPathProbe,
    decision_layer,
    input_dependent_layers,
    layer_logits,
    layer_margins,
)
from probes.faithfulness import (
    EMBEDDING_STAGE,
    FaithfulnessProbe,
    cascade_stages,
    min_examples_for,
    randomize_,
    untie_output_embeddings_,
)
from tests.test_attribution import PLANTED, planted_model_dir, planted_texts

CTX = AuditContext(seed=0)


@pytest.fixture(scope="module")
def planted():
    return load_target(planted_model_dir(), progress=False, device="cpu")


def _positives(n: int, seed: int) -> list[str]:
    texts, labels = planted_texts(np.random.default_rng(seed), 2 * n)
    return [t for t, y in zip(texts, labels, strict=True) if y == 1][:n]


# -- 1. model randomisation --------------------------------------------------------------
def test_reversed_ranking_after_randomisation_is_flagged(planted, monkeypatch):
    """A map whose ranking is reversed by randomisation still describes the input, not the model."""
    honest = faithfulness.rank_correlation
    monkeypatch.setattr(faithfulness, "rank_correlation", lambda a, b: -honest(a, b))
    result = FaithfulnessProbe(examples=_positives(6, 7), methods=["saliency"], n_random=2,
                               randomization_examples=4).run(planted, CTX.for_probe("faithfulness"))
    cascade = next(t for t in result.tables if t.title.startswith("Model randomisation"))
    signed = [row[1] for row in cascade.rows]
    # Saliency's ranking after every layer is randomised is the trained one reversed (rho < -0.5) ...
    assert signed[-2] <= -0.5, signed
    # ... which the old signed rule (rho >= 0.5) called erased; |rho| is what the check reads.
    assert result.metrics["randomized_rank_correlation[saliency]"].value == pytest.approx(abs(signed[-2]))
    assert result.tables[0].rows[0][-1] == "do not trust: survives model randomisation"
    assert not result.summary.startswith("Trust")


def test_cascade_reaches_every_parameter_bert(tiny_targets):
    bert = copy.deepcopy(tiny_targets["sequence-classification"].model)
    stages = cascade_stages(bert)
    assert [s[0] for s in stages] == ["head", "layer 2", "layer 1", EMBEDDING_STAGE]
    staged = [id(p) for _, params in stages for _, p in params]
    assert sorted(staged) == sorted(id(p) for p in bert.parameters())  # each parameter exactly once
    embedding_names = {n for n, _ in stages[-1][1]}
    assert {"bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight",
            "bert.embeddings.position_embeddings.weight"} <= embedding_names


def test_cascade_randomises_a_tied_unembedding_with_the_head(tiny_targets):
    gpt2 = copy.deepcopy(tiny_targets["causal-lm"].model)
    assert gpt2.lm_head.weight is gpt2.transformer.wte.weight
    assert untie_output_embeddings_(gpt2)
    assert gpt2.lm_head.weight is not gpt2.transformer.wte.weight
    stages = cascade_stages(gpt2)
    head = dict(stages[0][1])
    assert stages[0][0] == "head" and "lm_head.weight" in head
    assert stages[-1][0] == EMBEDDING_STAGE and {"transformer.wte.weight", "transformer.wpe.weight"} <= dict(
        stages[-1][1]).keys()
    wte, lm_head = gpt2.transformer.wte.weight.clone(), gpt2.lm_head.weight.clone()
    generator = torch.Generator().manual_seed(0)
    randomize_(stages[0][1], std=0.02, generator=generator)
    assert torch.equal(gpt2.transformer.wte.weight, wte) and not torch.equal(gpt2.lm_head.weight, lm_head)
    for _, params in stages[1:]:
        randomize_(params, std=0.02, generator=generator)
    assert not torch.equal(gpt2.transformer.wte.weight, wte)
    # a model left tied still reaches its shared matrix, at the embeddings stage
    tied = copy.deepcopy(tiny_targets["causal-lm"].model)
    names = [n for _, params in cascade_stages(tied)[-1:] for n, _ in params]
    assert "transformer.wte.weight" in names


@pytest.mark.slow
def test_minilm_saliency_is_not_trusted():
    """The bundled MiniLM with a new head: Saliency's map survives randomising all six layers (|rho| ~ 0.8)."""
    target = load_target(None, kind="sequence-classification", progress=False, device="cpu")
    result = FaithfulnessProbe(methods=["saliency"], max_examples=6, n_random=2, randomization_examples=4).run(
        target, CTX.for_probe("faithfulness"))
    assert result.metrics["randomized_rank_correlation[saliency]"].value >= 0.5
    assert result.tables[0].rows[0][-1] == "do not trust: survives model randomisation"
    assert "Trust Saliency" not in result.summary


# -- 2. better than random ------------------------------------------------------------------
def test_minimum_examples_is_where_an_exact_holm_test_can_first_pass():
    for m, alpha in ((1, 0.05), (3, 0.05), (6, 0.05), (3, 0.01)):
        n = min_examples_for(m, alpha)
        assert m / 2**n <= alpha < m / 2 ** (n - 1)
    assert min_examples_for(3, 0.05) == 6


def test_better_than_random_can_pass_at_the_stated_minimum(planted):
    texts = _positives(6, 8)  # six examples, three methods: the smallest Holm p is 3 / 64
    result = FaithfulnessProbe(examples=texts, n_random=3, randomization=False, max_n_steps=50).run(
        planted, CTX.for_probe("faithfulness"))
    assert result.metrics["min_examples_for_verdict"].value == 6
    gain = result.metrics["comprehensiveness_gain[integrated_gradients]"]
    assert gain.p_value == pytest.approx(3 / 64) and gain.value > 0.05
    assert result.tables[0].rows[0][-1] == "faithful by ERASER (randomisation check not run)"
    fewer = FaithfulnessProbe(examples=texts[:5], n_random=3, randomization=False, max_n_steps=50).run(
        planted, CTX.for_probe("faithfulness"))
    assert fewer.tables[0].rows[0][-1] == "undetermined: 5 examples, at least 6 needed"
    assert "too few examples" in fewer.summary and "a verdict needs at least 6" in fewer.summary
    assert fewer.status == "warned"


@pytest.fixture(scope="module")
def timid_dir():
    """The planted model with its head scaled down: the right token still matters most, but barely."""
    from transformers import AutoModelForSequenceClassification

    root = Path(tempfile.mkdtemp(prefix="rai-audit-timid-"))
    directory = root / "timid"
    shutil.copytree(planted_model_dir(), directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    with torch.no_grad():
        model.classifier.weight.mul_(0.01)
        model.classifier.bias.mul_(0.01)
    model.save_pretrained(directory, safe_serialization=True)
    yield directory
    shutil.rmtree(root, ignore_errors=True)


def test_a_tiny_effect_does_not_earn_trust(timid_dir):
    target = load_target(timid_dir, progress=False, device="cpu")
    texts = _positives(8, 9)
    result = FaithfulnessProbe(examples=texts, methods=["integrated_gradients"], n_random=3,
                               randomization=False).run(target, CTX.for_probe("faithfulness"))
    comp = result.metrics["comprehensiveness[integrated_gradients]"].value
    random_comp = result.metrics["comprehensiveness[random]"].value
    # every example's top tokens remove more than random ones, by a fraction of a percent
    assert 0 < comp - random_comp < 0.01
    gain = result.metrics["comprehensiveness_gain[integrated_gradients]"]
    assert gain.value < 0.05 and gain.p_value > 0.05
    assert result.tables[0].rows[0][-1].startswith("do not trust: not better than random removal by at least 0.05")
    assert result.status == "warned"


# -- 3. decision path -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def biased_classifier_dir(tmp_path_factory):
    """A tiny BERT classifier whose bias makes every layer, the embeddings included, predict class 0."""
    from transformers import AutoModelForSequenceClassification

    from tests.tiny import make_tiny_model

    directory = make_tiny_model("sequence-classification", tmp_path_factory.mktemp("biased") / "m", seed=5)
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([3.0, 0.0]))
    model.save_pretrained(directory, safe_serialization=True)
    return directory


TEXTS = ["the nurse said she would finish the report", "he is a doctor", "we talked about the movie"]


def test_cls_at_the_embeddings_never_decides(biased_classifier_dir):
    target = load_target(biased_classifier_dir, progress=False, device="cpu")
    ids = [target.tokenizer(t)["input_ids"] for t in TEXTS]
    rows = [layer_logits(target.model, i) for i in ids]
    # layer 0 is the same for every input and already predicts the final class with a wide margin
    np.testing.assert_allclose(rows[0][0], rows[1][0], atol=1e-6)
    assert all(r[0].argmax() == r[-1].argmax() == 0 for r in rows)
    result = DecisionPathProbe(examples=TEXTS).run(target, CTX.for_probe("decision_path"))
    decided = [row[5] for row in result.tables[0].rows]
    assert 0 not in decided and decided == [1, 1, 1]
    assert result.metrics["mean_decision_depth"].value == pytest.approx(0.5)
    assert "the embeddings read the same state for every input" in result.summary


def test_input_dependence_bert_and_gpt2(tiny_targets):
    for kind, expected_first in (("sequence-classification", False), ("causal-lm", True)):
        target = tiny_targets[kind]
        enc = target.tokenizer(TEXTS[0])["input_ids"]
        other = target.tokenizer("art dance and the poetry of a science novel")["input_ids"][:len(enc)]
        flags = input_dependent_layers(target.model, enc, other)
        assert bool(flags[0]) is expected_first and flags[1:].all(), kind


def test_decision_needs_a_margin(tiny_targets):
    target = tiny_targets["sequence-classification"]
    result = DecisionPathProbe(examples=TEXTS).run(target, CTX.for_probe("decision_path"))
    for text, row in zip(TEXTS, result.tables[0].rows, strict=True):
        probs = torch.softmax(torch.as_tensor(layer_logits(target.model, target.tokenizer(text)["input_ids"])), -1)
        top2 = probs[-1].topk(2).values
        # an independent margin: the random tiny head is close to a coin flip
        assert float(top2[0] - top2[1]) < 0.1
        assert row[5] == "undecided"
    assert result.metrics["mean_decision_depth"].value is None
    assert result.metrics["undecided_share"].value == 1.0
    assert all("Undecided" in f.caption and "Dashed line" not in f.caption for f in result.figures)
    loose = DecisionPathProbe(examples=TEXTS, min_margin=0.0).run(target, CTX.for_probe("decision_path"))
    assert all(row[5] in (1, 2) for row in loose.tables[0].rows)
    assert all("Dashed line: the decision layer" in f.caption for f in loose.figures)


@pytest.mark.parametrize(("probs", "margin", "informative", "expected"), [
    ([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], 0.1, None, 0),
    ([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]], 0.1, [False, True, True], 1),
    ([[0.9, 0.1], [0.52, 0.48], [0.7, 0.3]], 0.1, None, 2),
    ([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], 0.1, None, 2),
    ([[0.9, 0.1], [0.8, 0.2], [0.54, 0.46]], 0.1, None, None),
    ([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]], 0.25, None, 1),
])
def test_decision_layer(probs, margin, informative, expected):
    assert decision_layer(np.array(probs), min_margin=margin, informative=informative) == expected
    final = int(np.argmax(probs[-1]))
    expected_margin = [p[final] - max(v for c, v in enumerate(p) if c != final) for p in probs]
    np.testing.assert_allclose(layer_margins(np.array(probs)), expected_margin)


# -- 4. demographic share and position -------------------------------------------------------
TERM_LAST = ["the doctor talked to the nurse and she", "we talked about the movie with her",
             "the office was home for him", "the film was about a girl", "they said the art was for the woman",
             "the food was good for the man"]
TERM_FIRST = ["she talked to the doctor about the movie", "her film was about the office",
              "he said the food was good", "woman talked about art and dance", "girl was in the office",
              "man said it was great"]


@pytest.mark.parametrize("texts", [TERM_LAST, TERM_FIRST], ids=["term-last", "term-first"])
def test_random_gpt2_share_is_not_a_finding(texts, tiny_targets):
    target = tiny_targets["causal-lm"]  # random weights: whatever it attributes, it is position
    probe = AttributionProbe(examples=texts, max_examples=len(texts), target=" the", max_demographic_share=0.3,
                             methods=["input_x_gradient"])
    result = probe.run(target, CTX.for_probe("attribution"))
    share = result.metrics["demographic_share[input_x_gradient]"]
    if texts is TERM_LAST:
        assert share.value > 0.3  # position alone puts most of it on the last word: the old rule warned here
        assert "not a finding" in share.note
    excess = result.metrics["demographic_share_excess[input_x_gradient]"]
    assert excess.p_value > 0.05 and excess.note is None
    assert result.status == "passed" and "not a finding" in result.summary


#: Eight prompts that end with a demographic term, explained for their own greedy next token.
TERM_LAST_8 = [*TERM_LAST, "the movie was made by his father", "it was a good day for the boy"]


def test_random_gpt2_own_next_token_is_not_a_finding(tiny_targets):
    """Terms at the end, default target: the old controls explained the original's next token, which
    the last-position term decides, so a random model's share on the term was a finding (p 0.004)."""
    target = tiny_targets["causal-lm"]
    probe = AttributionProbe(examples=TERM_LAST_8, max_examples=8, methods=["integrated_gradients"])
    result = probe.run(target, CTX.for_probe("attribution"))
    assert result.metrics["demographic_share[integrated_gradients]"].value > 0.5  # position alone
    excess = result.metrics["demographic_share_excess[integrated_gradients]"]
    assert excess.note is None and excess.p_value > 0.05  # old code: 0.0039 on this model
    assert abs(excess.value) < 0.1  # old code: +0.2
    assert "not a finding" in result.summary


def test_controls_draw_words_the_text_lacks(tiny_targets):
    explainer = Explainer.for_target(tiny_targets["causal-lm"])
    enc = explainer.encode("the nurse said she was late for the film")
    mask = demographic_mask(enc, {"gender": ["she"]})
    other = explainer.encode("we talked about the movie and the art")
    pool = [*enc.ids, *other.ids]
    controls = position_matched_controls(enc, mask, rng=np.random.default_rng(0), n_controls=20, pool=pool)
    fresh = set(other.ids) - set(enc.ids)
    assert len(controls) == 20
    for c in controls:
        assert len(c.ids) == len(enc.ids)
        assert all(c.ids[j] in fresh for j in np.flatnonzero(mask))  # never a repeat of a word of the text
    assert position_matched_controls(enc, mask, rng=np.random.default_rng(0), n_controls=2, pool=enc.ids) == []


def test_control_rank_p_value_matches_enumeration():
    import itertools

    originals, controls = [0.9, 0.5, 0.7], [[0.1, 0.95, 0.2], [0.6, 0.4], [0.7, 0.1, 0.2]]  # 0.7 vs 0.7: a tie
    observed = 2 + 1 + 2
    outcomes = list(itertools.product(range(4), range(3), range(4)))  # each C_i uniform on 0..m_i
    expected = sum(sum(o) >= observed for o in outcomes) / len(outcomes)
    assert control_rank_p_value(originals, controls) == pytest.approx(expected)
    assert control_rank_p_value([1.0] * 5, [[0.0] * 3] * 5) == pytest.approx(4.0 ** -5)
    assert control_rank_p_value([0.0] * 5, [[1.0] * 3] * 5) == pytest.approx(1.0)


def test_rank_test_is_calibrated_on_skewed_exchangeable_shares():
    """One original against the mean of three controls is skewed; a sign-flip test of the mean excess
    alarmed on such nulls far above alpha, the rank test stays at or under it."""
    rng = np.random.default_rng(0)
    alarms = 0
    for _ in range(2000):
        shares = 1 - rng.beta(0.5, 4, size=(8, 4))  # exchangeable, near 1, long left tail
        alarms += control_rank_p_value(shares[:, 0], shares[:, 1:]) <= 0.05
    assert alarms / 2000 <= 0.06


def test_planted_term_share_is_a_finding(planted):
    texts = _positives(8, 12)
    probe = AttributionProbe(examples=texts, max_examples=len(texts), use_counterfactual=False,
                             demographic_terms={"planted": [PLANTED]}, max_demographic_share=0.3,
                             methods=["input_x_gradient"])
    result = probe.run(planted, CTX.for_probe("attribution"))
    excess = result.metrics["demographic_share_excess[input_x_gradient]"]
    assert excess.value > 0.3 and excess.p_value <= 0.05
    assert result.status == "warned" and ": a finding" in result.summary
    # the controls' replacement words come from the context's generator: same seed, same numbers
    again = probe.run(planted, CTX.for_probe("attribution")).metrics["demographic_share_excess[input_x_gradient]"]
    assert again == excess


def test_position_matched_controls_keep_positions(tiny_targets):
    target = tiny_targets["sequence-classification"]
    enc = Explainer.for_target(target).encode("the nurse said she was late")
    mask = demographic_mask(enc, {"gender": ["she"]})
    controls = position_matched_controls(enc, mask, rng=np.random.default_rng(0), n_controls=4)
    others = {enc.ids[j] for j in enc.content if not mask[j]}
    for c in controls:
        assert len(c.ids) == len(enc.ids)
        assert all(a == b for a, b, m in zip(c.ids, enc.ids, mask, strict=True) if not m)
        assert all(c.ids[j] in others for j in np.flatnonzero(mask))
    assert position_matched_controls(enc, np.zeros(len(enc), dtype=bool), rng=np.random.default_rng(0),
                                     n_controls=2) == []


# -- 5. the seed decides ------------------------------------------------------------------
def test_same_seed_same_verdicts(planted):
    texts = _positives(6, 13)

    def run(seed: int):
        probe = FaithfulnessProbe(examples=texts, methods=["saliency", "input_x_gradient"], n_random=2,
                                  randomization_examples=2)
        return probe.run(planted, AuditContext(seed=seed).for_probe("faithfulness"))

    a, b, c = run(4), run(4), run(5)
    assert a.tables[0].rows == b.tables[0].rows and a.tables[1].rows == b.tables[1].rows
    assert a.summary == b.summary
    # another seed draws other random orders and another randomised model
    assert a.metrics["comprehensiveness[random]"].value != c.metrics["comprehensiveness[random]"].value
    assert a.tables[1].rows != c.tables[1].rows


def test_rank_correlation_p_value_matches_exact_enumeration():
    from itertools import permutations

    from probes.faithfulness import rank_correlation, rank_correlation_p_value

    a, b = np.array([0.9, 0.1, 0.5, 0.3, 0.7]), np.array([0.8, 0.2, 0.1, 0.4, 0.9])
    observed = rank_correlation(a, b)
    rhos = [rank_correlation(a, np.array(p)) for p in permutations(b)]
    exact = np.mean(np.abs(rhos) >= abs(observed) - 1e-12)
    p = rank_correlation_p_value([(a, b)], observed, rng=np.random.default_rng(0), n_resamples=20000)
    assert p == pytest.approx(exact, abs=0.01)


def test_erased_maps_are_rarely_flagged_even_on_short_texts():
    """Null: the randomised model's maps are independent of the original ones (three-token texts)."""
    from probes.faithfulness import rank_correlation, rank_correlation_p_value

    rng = np.random.default_rng(1)
    probe = FaithfulnessProbe()
    names = ["head", "layer 1", EMBEDDING_STAGE]
    flagged = threshold_only = 0
    runs = 300
    for _ in range(runs):
        rhos, ps = [None], [None]
        for _stage in names[1:]:
            pairs = [(rng.random(3), rng.random(3)) for _ in range(4)]
            mean = float(np.mean([rank_correlation(x, y) for x, y in pairs]))
            rhos.append(mean)
            ps.append(rank_correlation_p_value(pairs, mean, rng=rng, n_resamples=400))
        flagged += probe._survival(rhos, ps, names)[2] == "survives"
        threshold_only += max(abs(r) for r in rhos[1:]) >= probe.max_rank_correlation
    assert flagged / runs <= 0.05
    assert threshold_only / runs > 0.1  # |rho| alone would flag erased maps on texts this short


@pytest.mark.parametrize(("rhos", "p_values", "outcome"), [
    ([0.9, 0.7, 0.1], [None, 0.001, 0.5], "survives"),
    ([0.9, 0.1, -0.8], [None, 0.6, 0.02], "survives"),  # reversed at the embeddings stage; 0.02 x 2 <= 0.05
    ([0.9, 0.1, -0.8], [None, 0.6, 0.03], "inconclusive"),  # 0.03 x 2 > 0.05: no evidence, and no trust
    ([0.9, 0.7, 0.1], [None, 0.2, 0.9], "inconclusive"),
    ([0.9, 0.3, -0.2], [None, 0.04, 0.1], "erased"),  # significant but small: below the threshold
])
def test_survival_outcomes(rhos, p_values, outcome):
    probe = FaithfulnessProbe()
    value, _, got = probe._survival(rhos, p_values, ["head", "layer 1", EMBEDDING_STAGE])
    assert got == outcome and value == pytest.approx(max(abs(r) for r in rhos[1:]))
    verdict = probe._verdict(survival=got, checked=True, enough=True, beats=True, n=8, n_min=6)
    assert (verdict == "trust") is (outcome == "erased")
