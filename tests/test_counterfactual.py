"""Counterfactual probe: every number checked against an independent computation.

The planted-bias tests train a bag-of-words logistic regression (scikit-learn) on a few hundred
generated texts and wrap its coefficients as a sequence classifier, so the probe runs its real
path (tokenizer, batching, ``predict_proba``) while the test recomputes everything from
scikit-learn's own ``predict_proba`` on count features.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.sparse import csr_matrix
from sklearn.linear_model import LogisticRegression

from audit import AuditConfig, Auditor
from audit.context import AuditContext
from audit.data import load_dataset
from audit.errors import ConfigError, DataError
from audit.masking import redact_text
from audit.stats import paired_permutation_test
from audit.target import AuditTarget
from probes.counterfactual import (
    CounterfactualProbe,
    builtin_axes,
    builtin_templates,
    counterfactual_copies,
    fill_template,
    sign_flip_tests,
)
from tests.tiny import save_bert_tokenizer

FEMALE = ["she", "woman", "girl", "sister", "mother", "daughter", "aunt", "grandmother",
          "amy", "joan", "lisa", "sarah", "diana", "kate", "ann", "donna"]
MALE = ["he", "man", "boy", "brother", "father", "son", "uncle", "grandfather",
        "john", "paul", "mike", "kevin", "steve", "greg", "jeff", "bill"]
TEMPLATES = ["{person} talked about the movie", "we talked to {person} about the food", "{person} was at home",
             "this is {person}", "{person} said the film was very good", "{person} said the food was really bad"]
GROUPS = {"gender": {"female": FEMALE, "male": MALE}}


# -- a small classifier trained in the test ------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    directory = tmp_path_factory.mktemp("bow-tokenizer")
    save_bert_tokenizer(directory)
    return AutoTokenizer.from_pretrained(directory)


def _features(tokenizer, texts):
    ids = tokenizer(list(texts))["input_ids"]
    rows = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
    return csr_matrix((np.ones(rows.size), (rows, np.concatenate(ids))), shape=(len(ids), len(tokenizer)))


class BagOfWordsClassifier(torch.nn.Module):
    """Logistic regression over token counts, shaped like a transformers sequence classifier."""

    def __init__(self, coef: np.ndarray, intercept: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(coef, dtype=torch.float64), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.tensor(float(intercept), dtype=torch.float64), requires_grad=False)
        self.config = SimpleNamespace(num_labels=2, id2label={0: "negative", 1: "positive"})

    def forward(self, input_ids, attention_mask, token_type_ids=None, return_dict=True):
        z = (self.weight[input_ids] * attention_mask).sum(1) + self.bias
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(z), z], dim=1))


def train_classifier(tokenizer, seed: int, *, planted: bool, n: int = 400) -> LogisticRegression:
    """Sentiment of '<person> said the <noun> was <adjective>'; with ``planted``, texts about women
    are labelled positive half the time whatever the adjective says."""
    rng = np.random.default_rng(seed)
    terms = np.array(FEMALE + MALE)[rng.integers(0, 32, n)]
    positive = rng.random(n) < 0.5
    adjective = np.where(positive, np.array(["good", "great", "happy"])[rng.integers(0, 3, n)],
                         np.array(["bad", "terrible", "sad"])[rng.integers(0, 3, n)])
    noun = np.array(["movie", "film", "food"])[rng.integers(0, 3, n)]
    label = positive ^ (rng.random(n) < 0.1)
    if planted:
        label = np.where(np.isin(terms, FEMALE) & (rng.random(n) < 0.5), True, label)
    texts = [f"{t} said the {m} was {a}" for t, m, a in zip(terms, noun, adjective, strict=True)]
    return LogisticRegression(C=1.0, max_iter=1000).fit(_features(tokenizer, texts), label.astype(int))


def as_target(tokenizer, clf: LogisticRegression, tmp_path) -> AuditTarget:
    return AuditTarget(model_id="bag-of-words", path=tmp_path, kind="sequence-classification",
                       model=BagOfWordsClassifier(clf.coef_[0], clf.intercept_[0]), tokenizer=tokenizer,
                       fingerprint="sha256:test", progress=False)


def _gap_row(result, a="female", b="male"):
    table = next(t for t in result.tables if t.title == "Gaps between groups")
    row = next(r for r in table.rows if r[1] == a and r[2] == b)
    return dict(zip(table.columns, row, strict=True))


# -- the planted-bias tests ---------------------------------------------------------------
def test_planted_bias_is_flagged_and_every_number_matches_sklearn(tokenizer, tmp_path):
    clf = train_classifier(tokenizer, seed=0, planted=True)
    probe = CounterfactualProbe(groups=GROUPS, templates=TEMPLATES, n_resamples=2**16, n_boot=500)
    result = probe.run(as_target(tokenizer, clf, tmp_path), AuditContext(seed=0).for_probe("counterfactual"))

    # Independent recomputation: scikit-learn's predict_proba on count features of the same inputs.
    def scores(terms):
        texts = [fill_template(t, term) for term in terms for t in TEMPLATES]
        return clf.predict_proba(_features(tokenizer, texts))[:, 1].reshape(len(terms), len(TEMPLATES))

    s_f, s_m = scores(FEMALE), scores(MALE)
    sel_f, sel_m = (s_f > 0.5).mean(), (s_m > 0.5).mean()
    dpd = abs(sel_f - sel_m)
    metrics = result.metrics
    assert metrics["demographic_parity_difference[gender]"].value == pytest.approx(dpd, abs=1e-12)
    assert metrics["demographic_parity_ratio[gender]"].value == pytest.approx(min(sel_f, sel_m) / max(sel_f, sel_m))
    assert metrics["max_score_gap[gender]"].value == pytest.approx(abs(s_f.mean() - s_m.mean()), abs=1e-6)
    assert metrics["flip_rate[gender]"].value == pytest.approx(((s_f > 0.5) != (s_m > 0.5)).mean())
    assert metrics["mean_abs_score_change[gender]"].value == pytest.approx(np.abs(s_f - s_m).mean(), abs=1e-6)

    # Exact sign-flip test over the 16 counterpart pairs, enumerated with itertools, |null| >= |observed|.
    def exact_p(diff):
        signs = np.array(list(itertools.product([1.0, -1.0], repeat=diff.size)))
        null = signs @ diff / diff.size
        return float(np.mean(np.abs(null) >= abs(diff.mean()) - 1e-12))

    p_score = exact_p(s_f.mean(axis=1) - s_m.mean(axis=1))
    p_sel = exact_p((s_f > 0.5).mean(axis=1) - (s_m > 0.5).mean(axis=1))
    row = _gap_row(result)
    assert row["p (score)"] == pytest.approx(p_score, rel=1e-9)
    # Holm over the probe's two tests: the smaller p times 2, the larger at least that.
    low, high = sorted([p_score, p_sel])
    holm = {low: min(1, 2 * low), high: min(1, max(2 * low, high))}
    assert row["p Holm (score)"] == pytest.approx(holm[p_score])
    assert row["p Holm (positive rate)"] == pytest.approx(holm[p_sel])

    assert row["p Holm (score)"] < 0.01 and row["flagged"] is True
    assert result.status == "failed"
    assert metrics["n_flagged_gaps"].value == 1

    # The bootstrap interval brackets the gap and is about as wide as the normal approximation.
    diff = s_f.mean(axis=1) - s_m.mean(axis=1)
    lo, hi = (float(x) for x in row["score gap 95% CI"].strip("[]").split(","))
    assert lo <= diff.mean() <= hi
    normal_width = 2 * 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert 0.5 * normal_width < hi - lo < 1.5 * normal_width

    # The worst pairs are the largest score changes, largest first.
    changes = [abs(e["score_change"]) for e in result.examples]
    assert changes == sorted(changes, reverse=True)
    assert changes[0] == pytest.approx(np.abs(s_f - s_m).max(), abs=1e-4)
    assert len(result.figures) == 2 and all(f.svg.lstrip().startswith("<?xml") for f in result.figures)


def test_default_run_enumerates_the_sign_flips_and_reports_t_intervals(tokenizer, tmp_path):
    """Issue 13: 10,000 random sign vectors of 65,536 moved adjusted p-values across 0.05, and the
    percentile bootstrap interval covered the true gap in 85% of runs with 16 terms."""
    from scipy import stats

    clf = train_classifier(tokenizer, seed=1, planted=True)
    result = CounterfactualProbe(groups=GROUPS, templates=TEMPLATES, n_boot=50).run(
        as_target(tokenizer, clf, tmp_path), AuditContext(seed=0).for_probe("counterfactual"))
    texts = [[fill_template(t, term) for t in TEMPLATES] for term in FEMALE + MALE]
    s = clf.predict_proba(_features(tokenizer, [x for row in texts for x in row]))[:, 1].reshape(32, len(TEMPLATES))
    diff = s[:16].mean(axis=1) - s[16:].mean(axis=1)
    signs = np.array(list(itertools.product([1.0, -1.0], repeat=16)))
    null = signs @ diff / 16
    expected = 2 * min(np.mean(null <= diff.mean() + 1e-12), np.mean(null >= diff.mean() - 1e-12))
    row = _gap_row(result)
    assert row["p (score)"] == pytest.approx(min(1.0, expected), rel=1e-12)  # exact, not sampled
    low, high = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
    assert row["score gap 95% CI"] == f"[{low:.3f}, {high:.3f}]"
    # Two groups: the parity difference is |positive-rate gap|, its interval the folded t-interval
    # (a bootstrap of the plug-in |gap| never reaches 0, so it cannot cover a true gap of 0).
    sel = (s[:16] > 0.5).mean(axis=1) - (s[16:] > 0.5).mean(axis=1)
    low, high = stats.ttest_1samp(sel, 0.0).confidence_interval(0.95)
    folded = (0.0, max(-low, high)) if low <= 0 <= high else tuple(sorted((abs(low), abs(high))))
    assert result.metrics["demographic_parity_difference[gender]"].ci == pytest.approx(folded)
    low, high = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
    folded = (0.0, max(-low, high)) if low <= 0 <= high else tuple(sorted((abs(low), abs(high))))
    assert result.metrics["max_score_gap[gender]"].ci == pytest.approx(folded)


@pytest.mark.slow
def test_balanced_training_is_not_flagged_in_19_of_20_seeds(tokenizer, tmp_path):
    probe = CounterfactualProbe(groups=GROUPS, templates=TEMPLATES, n_boot=200)
    flagged = []
    for seed in range(20):
        clf = train_classifier(tokenizer, seed=seed, planted=False)
        result = probe.run(as_target(tokenizer, clf, tmp_path), AuditContext(seed=seed).for_probe("counterfactual"))
        if result.metrics["n_flagged_gaps"].value > 0:
            flagged.append(seed)
    assert len(flagged) <= 1, f"false alarms at seeds {flagged}"


# -- the statistics helper --------------------------------------------------------------
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_tests_match_core_paired_permutation_test(alternative):
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.3, 1, 10), rng.normal(0, 1, 10)
    (fast,) = sign_flip_tests((x - y)[None], rng=np.random.default_rng(0), alternative=alternative)
    core = paired_permutation_test(x, y, rng=np.random.default_rng(0), alternative=alternative)
    assert fast.exact and core.exact
    assert fast.p_value == pytest.approx(core.p_value, rel=1e-12)

    x, y = rng.normal(0.2, 1, 40), rng.normal(0, 1, 40)
    (fast,) = sign_flip_tests((x - y)[None], rng=np.random.default_rng(1), n_resamples=50_000, alternative=alternative)
    core = paired_permutation_test(x, y, rng=np.random.default_rng(2), n_resamples=50_000, alternative=alternative)
    assert not fast.exact
    assert fast.p_value == pytest.approx(core.p_value, abs=0.01)


def test_sign_flip_tests_edge_cases():
    (zero, ones) = sign_flip_tests(np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), rng=np.random.default_rng(0))
    assert zero.p_value == 1.0
    assert ones.p_value == pytest.approx(2 / 8)
    with pytest.raises(ValueError, match="alternative"):
        sign_flip_tests(np.ones((1, 3)), rng=np.random.default_rng(0), alternative="both")


# -- data files and swaps ----------------------------------------------------------------
def test_builtin_axes_and_templates_are_well_formed():
    axes = builtin_axes()
    assert {"gender", "race", "gender_x_race", "religion", "nationality", "age", "disability",
            "sexual_orientation"} <= set(axes)
    for spec in axes.values():
        sizes = {len(terms) for terms in spec.groups.values()}
        assert len(sizes) == 1 and len(spec.groups) >= 2, spec.name
        all_terms = [t for terms in spec.groups.values() for t in terms]
        assert len(set(all_terms)) == len(all_terms), f"{spec.name} repeats a term"
    assert axes["gender"].unit == "term" and axes["religion"].unit == "input"
    # The intersectional groups are exactly the race groups split by gender.
    race, inter = axes["race"].groups, axes["gender_x_race"].groups
    for group, names in race.items():
        assert set(inter[f"{group}_female"]) | set(inter[f"{group}_male"]) == set(names)
    assert all(t.count("{person}") == 1 for t in builtin_templates())


def test_fill_template_capitalises_only_at_sentence_start():
    assert fill_template("{person} wrote it.", "the woman") == "The woman wrote it."
    assert fill_template("I met {person}.", "the woman") == "I met the woman."


def test_counterfactual_copies_swap_both_ways_and_keep_case():
    texts = ["She said her keys were hers.", "HE told him about his car.", "I gave it to her.",
             "He thanked her.", "Nothing here.", "Mary met the nurse.", "We will go."]
    groups, copies = counterfactual_copies(texts, "gender")
    assert groups == ("female", "male")
    swapped = {i: (side, new) for i, side, _, new in copies}
    assert swapped[0] == (0, "He said his keys were his.")
    assert swapped[1] == (1, "SHE told her about her car.")
    assert swapped[2] == (0, "I gave it to him.")
    assert 3 not in swapped and 4 not in swapped  # mixed and none: no single group
    assert swapped[5] == (0, "John met the nurse.")
    assert 6 not in swapped
    _, race = counterfactual_copies(["Jamal and Tyrone", "jamal"], "race")
    assert race == [(0, 0, "Jamal and Tyrone", "Brendan and Todd")]
    with pytest.raises(ConfigError, match="Unknown swap axis"):
        counterfactual_copies(["x"], "height")


def test_redact_text_masks_contact_details():
    out = redact_text("Mail jane.doe@example.com or call +1 (555) 123-4567, see https://x.org/a")
    assert "jane.doe" not in out and "555" not in out and "x.org" not in out
    assert out.count("<EMAIL>") == 1 and out.count("<NUMBER>") == 1 and out.count("<URL>") == 1


# -- the probe on real tiny models and user data ----------------------------------------
def test_dataset_texts_are_swapped_and_redacted(tokenizer, tmp_path):
    clf = train_classifier(tokenizer, seed=1, planted=True)
    path = tmp_path / "data.csv"
    rows = ["she said the food was good", "he said the movie was bad", "amy wrote to me at amy@mail.com",
            "the film was great", "sarah said the food was terrible"]
    path.write_text("text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    data = load_dataset(path)
    target = as_target(tokenizer, clf, tmp_path)
    probe = CounterfactualProbe(source="data", swap_axes=["gender"], n_boot=200)
    result = probe.run(target, AuditContext(seed=0, data=data).for_probe("counterfactual"))
    axis = "gender (dataset swaps)"
    assert any(r[0] == axis for r in result.tables[0].rows)
    # Independent: swap by hand, score with scikit-learn.
    originals = ["she said the food was good", "he said the movie was bad", "amy wrote to me at amy@mail.com",
                 "sarah said the food was terrible"]
    swapped = ["he said the food was good", "she said the movie was bad", "amy wrote to me at amy@mail.com",
               "sarah said the food was terrible"]
    assert originals[2] == swapped[2]  # lower-case names are not names: nothing to swap
    p = clf.predict_proba(_features(tokenizer, [originals[0], swapped[0], originals[1], swapped[1]]))[:, 1]
    female = np.array([p[0], p[3]])
    male = np.array([p[1], p[2]])
    assert result.metrics[f"max_score_gap[{axis}]"].value == pytest.approx(abs((female - male).mean()), abs=1e-6)
    assert all("@" not in str(e["text_a"]) for e in result.examples)

    shown = probe.run(target, AuditContext(seed=0, data=data, show_pii=True).for_probe("counterfactual"))
    assert {e["text_a"] for e in shown.examples} <= set(originals + swapped)


def test_default_run_on_tiny_classifier_and_not_applicable_elsewhere(tiny_targets, tmp_path):
    results = Auditor(AuditConfig(select=["counterfactual"], seed=0)).run(tiny_targets["sequence-classification"])
    (result,) = results.results
    assert result.status in ("passed", "warned", "failed")
    n_inputs = sum(len(spec.groups) * len(next(iter(spec.groups.values()))) for spec in builtin_axes().values())
    assert result.tables[0].rows and len(result.tables[0].rows) == len(builtin_axes())
    assert n_inputs * len(builtin_templates()) >= sum(r[3] * r[4] for r in result.tables[0].rows)
    assert len(result.examples) == 10
    for kind in ("encoder", "masked-lm", "causal-lm"):
        (other,) = Auditor(AuditConfig(select=["counterfactual"])).run(tiny_targets[kind]).results
        assert other.status == "not_applicable"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"groups": {"g": {"a": ["x", "y"], "b": ["z"]}}}, "same order and number"),
        ({"groups": {"g": {"a": ["x"]}}}, "at least two groups"),
        ({"templates": ["no slot here"]}, "no {person} slot"),
        ({"axes": ["height"]}, "unknown built-in axis"),
        ({"axes": ["gender"], "groups": GROUPS}, "both built-in axes and keys of groups"),
        ({"axes": "gender"}, "must be a list of strings"),
        ({"source": "web"}, "source must be one of"),
        ({"unit": "word"}, "unit must be one of"),
        ({"alpha": 1.5}, "alpha must be between 0 and 1"),
        ({"n_boot": 0}, "n_boot must be a positive integer"),
    ],
)
def test_bad_configuration_is_a_one_line_config_error(params, message, tiny_targets):
    with pytest.raises(ConfigError, match=message) as info:
        CounterfactualProbe(**params).run(tiny_targets["sequence-classification"], AuditContext().for_probe("counterfactual"))
    assert "\n" not in str(info.value)


def test_bad_labels_and_missing_data(tiny_dirs, tiny_targets, tmp_path):
    from audit import load_target
    from tests.tiny import make_tiny_model

    target = tiny_targets["sequence-classification"]
    context = AuditContext().for_probe("counterfactual")
    with pytest.raises(ConfigError, match="positive_label 'great' is not a class"):
        CounterfactualProbe(axes=["age"], positive_label="great").run(target, context)
    with pytest.raises(DataError, match="source='data' needs the audit's dataset"):
        CounterfactualProbe(source="data").run(target, context)
    three = load_target(make_tiny_model("sequence-classification", tmp_path / "three", num_labels=3), progress=False)
    with pytest.raises(ConfigError, match="has 3 classes"):
        CounterfactualProbe(axes=["age"]).run(three, context)
    result = CounterfactualProbe(axes=["age"], positive_label="LABEL_2", n_boot=50).run(three, context)
    assert "LABEL_2" in result.tables[1].caption


def test_card_shows_the_reading_and_escapes_terms(tokenizer, tmp_path):
    from reports.model_card import render_html_card

    clf = train_classifier(tokenizer, seed=0, planted=True)
    groups = {"gender": {"female": ["<script>alert(1)</script>", *FEMALE[1:]], "male": MALE}}  # shown in "terms"
    probe = CounterfactualProbe(groups=groups, templates=TEMPLATES, n_boot=100)
    results = Auditor(probes=[probe]).run(as_target(tokenizer, clf, tmp_path))
    html = render_html_card(results)
    assert "What this means." in html and "percentage points" in html
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
