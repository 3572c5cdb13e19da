"""Group fairness probe: per-group rates, parity/odds gaps and Borkan AUCs against independent code."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from audit import AuditConfig, Auditor
from audit.context import AuditContext
from audit.data import AuditDataset, load_dataset
from audit.errors import ConfigError, DataError
from probes.group_fairness import GroupFairnessProbe, _selection_gap, borkan_aucs, equalized_odds_gap

WORDS = ["good", "bad", "great", "terrible", "love", "hate", "happy", "sad", "movie", "film", "food", "the", "was",
         "very", "not"]


def _frame(seed: int = 0, n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "text": [" ".join(rng.choice(WORDS, 6)) for _ in range(n)],
        "label": rng.integers(0, 2, n),
        "sex": rng.choice(["f", "m"], n),
        "race": rng.choice(["a", "b", "c"], n),
    })
    frame.loc[(frame.sex == "m") & (frame.race == "c"), "label"] = 0  # a group with no positives
    return frame[~((frame.sex == "f") & (frame.race == "c"))].reset_index(drop=True)  # an empty combination


def _scores_and_threshold(target, texts):
    """The model's positive-class probabilities (the metrics' input, not what is under test) and a
    threshold halfway between two distinct scores near the median, so no score sits on it."""
    scores = target.predict_proba(list(texts))[:, 1].astype(float)
    distinct = np.unique(scores)
    middle = len(distinct) // 2
    return scores, float((distinct[middle - 1] + distinct[middle]) / 2)


@pytest.fixture(scope="module")
def labelled(tiny_targets, tmp_path_factory):
    target = tiny_targets["sequence-classification"]
    frame = _frame()
    path = tmp_path_factory.mktemp("gf") / "eval.csv"
    frame.to_csv(path, index=False)
    data = load_dataset(path, label_column="label", sensitive_features=["sex", "race"])
    # The tiny random classifier is nearly constant; a median threshold gives varied decisions.
    scores, threshold = _scores_and_threshold(target, frame.text)
    probe = GroupFairnessProbe(threshold=threshold, n_boot=20, min_group_size=10)
    result = probe.run(target, AuditContext(seed=0, data=data).for_probe("group_fairness"))
    return frame, scores, threshold, result


def _rows(result, feature):
    table = next(t for t in result.tables if t.title == f"Groups by {feature}")
    return {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}, table


def test_per_group_rates_match_numpy(labelled):
    frame, scores, threshold, result = labelled
    y, pred = frame.label.to_numpy().astype(bool), scores >= threshold
    rows, _ = _rows(result, "race")
    for group in ("a", "b", "c"):
        m = frame.race.to_numpy() == group
        yt, yp = y[m], pred[m]
        row = rows[group]
        assert row["rows"] == m.sum() and row["positives"] == yt.sum()
        assert row["accuracy"] == pytest.approx(np.mean(yt == yp))
        assert row["selection rate"] == pytest.approx(yp.mean())
        assert row["false positive rate"] == pytest.approx(yp[~yt].mean())
        if yt.any():
            assert row["true positive rate"] == pytest.approx(yp[yt].mean())
            assert row["false negative rate"] == pytest.approx(1 - yp[yt].mean())
        lo, hi = (float(v) for v in row["selection rate CI"].strip("[]").split(","))
        assert lo <= yp.mean() + 1e-9 and hi >= yp.mean() - 1e-9
    # Group c has no positives: TPR and FNR are marked, not reported as 0 (as fairlearn would).
    assert rows["c"]["true positive rate"] is None and rows["c"]["false negative rate"] is None
    assert "no positives" in rows["c"]["notes"]


def test_parity_and_equalized_odds_match_fairlearn_and_numpy(labelled):
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    frame, scores, threshold, result = labelled
    y, pred = frame.label.to_numpy().astype(int), (scores >= threshold).astype(int)
    for feature in ("sex", "race"):
        g = frame[feature].to_numpy()
        rates = [pred[g == v].mean() for v in np.unique(g)]
        dpd = result.metrics[f"demographic_parity_difference[{feature}]"]
        assert dpd.value == pytest.approx(max(rates) - min(rates))
        assert dpd.value == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=g))
        assert dpd.ci[0] <= dpd.value <= dpd.ci[1]
    # Equalized odds on race leaves out group c (no positives); numpy over a and b only.
    g = frame.race.to_numpy()
    keep = g != "c"
    tpr = [pred[(g == v) & (y == 1)].mean() for v in ("a", "b")]
    fpr = [pred[(g == v) & (y == 0)].mean() for v in ("a", "b")]
    expected = max(abs(tpr[0] - tpr[1]), abs(fpr[0] - fpr[1]))
    eod = result.metrics["equalized_odds_difference[race]"]
    assert eod.value == pytest.approx(expected)
    assert eod.value == pytest.approx(equalized_odds_difference(y[keep], pred[keep], sensitive_features=g[keep]))
    # A percentile interval of a largest gap need not contain the estimate (the bootstrap maximum of
    # noisy gaps is biased upward near 0); it must be an ordered interval of valid gaps.
    assert 0 <= eod.ci[0] <= eod.ci[1] <= 1
    assert "left out of equalized odds: c" in _rows(result, "race")[1].caption


def test_borkan_aucs_match_sklearn_and_mann_whitney(labelled):
    from sklearn.metrics import roc_auc_score

    frame, scores, _, result = labelled
    y = frame.label.to_numpy().astype(bool)

    def mann_whitney(pos, neg):
        diff = pos[:, None] - neg[None, :]
        return float(np.mean((diff > 0) + 0.5 * (diff == 0)))

    rows, _ = _rows(result, "sex")
    for group in ("f", "m"):
        m = frame.sex.to_numpy() == group
        sub = roc_auc_score(y[m], scores[m])
        bpsn = mann_whitney(scores[~m & y], scores[m & ~y])
        bnsp = mann_whitney(scores[m & y], scores[~m & ~y])
        assert rows[group]["subgroup AUC"] == pytest.approx(sub, abs=1e-6)
        assert rows[group]["BPSN AUC"] == pytest.approx(bpsn, abs=1e-6)
        assert rows[group]["BNSP AUC"] == pytest.approx(bnsp, abs=1e-6)
        assert mann_whitney(scores[m & y], scores[m & ~y]) == pytest.approx(sub, abs=1e-6)
    worst = min(rows[g]["BPSN AUC"] for g in ("f", "m"))
    assert result.metrics["min_bpsn_auc[sex]"].value == pytest.approx(worst)
    # A group with one class has no subgroup AUC.
    assert borkan_aucs(np.array([1, 1, 0]), np.array([0.2, 0.3, 0.9]), np.array([True, True, False]))["subgroup_auc"] is None


def test_intersectional_groups(labelled):
    frame, scores, threshold, result = labelled
    rows, table = _rows(result, "sex x race")
    assert set(rows) == {"f, a", "f, b", "f, c", "m, a", "m, b", "m, c"}
    assert rows["f, c"]["rows"] == 0 and "does not occur" in rows["f, c"]["notes"]
    pred = scores >= threshold
    combo = (frame.sex + ", " + frame.race).to_numpy()
    rates = [pred[combo == c].mean() for c in np.unique(combo)]
    assert result.metrics["demographic_parity_difference[sex x race]"].value == pytest.approx(max(rates) - min(rates))
    assert "left out of equalized odds: m, c" in table.caption


def test_bootstrapped_gap_statistics_match_fairlearn_on_resamples():
    """The interval resamples rows and recomputes these vectorised gaps; each must equal fairlearn's
    own metric on the same resample."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    rng = np.random.default_rng(0)
    y, p, c = rng.integers(0, 2, (5, 60)), rng.integers(0, 2, (5, 60)), rng.integers(0, 3, (5, 60))
    eod, dpd = equalized_odds_gap(y, p, c, 3), _selection_gap(p, c, 3)
    for i in range(5):
        assert eod[i] == pytest.approx(equalized_odds_difference(y[i], p[i], sensitive_features=c[i]))
        assert dpd[i] == pytest.approx(demographic_parity_difference(y[i], p[i], sensitive_features=c[i]))


def test_status_follows_the_interval(tiny_targets, tmp_path):
    """A gap entirely above max_gap fails; the tiny model's labels are replaced by its own decisions
    for one group and their opposite for the other, so equalized odds is maximal."""
    target = tiny_targets["sequence-classification"]
    frame = _frame(seed=1, n=200).drop(columns="race")
    scores, threshold = _scores_and_threshold(target, frame.text)
    decided = (scores >= threshold).astype(int)
    frame["label"] = np.where(frame.sex == "f", decided, 1 - decided)
    path = tmp_path / "skewed.jsonl"
    frame.to_json(path, orient="records", lines=True)
    data = load_dataset(path, label_column="label", sensitive_features=["sex"])
    result = GroupFairnessProbe(threshold=threshold, n_boot=20).run(
        target, AuditContext(seed=0, data=data).for_probe("group_fairness"))
    assert result.metrics["equalized_odds_difference[sex]"].value == pytest.approx(1.0)
    assert result.status == "failed"


# -- bad input ---------------------------------------------------------------------------
def _dataset(frame: pd.DataFrame, **roles) -> AuditDataset:
    return AuditDataset(frame=frame, text_column=roles.get("text", "text"), label_column=roles.get("label", "label"),
                        sensitive_features=tuple(roles.get("sensitive", ("sex",))), path="eval.csv")


@pytest.mark.parametrize(
    ("change", "roles", "message"),
    [
        (lambda f: f, {"sensitive": ("gender",)}, "column 'gender' (sensitive_features) is not in 'eval.csv'"),
        (lambda f: f, {"label": None}, "needs a label column"),
        (lambda f: f, {"sensitive": ()}, "needs at least one sensitive feature"),
        (lambda f: f.assign(label=1), {}, "has a single class"),
        (lambda f: f.assign(sex="f"), {}, "has a single group"),
        (lambda f: f.assign(label=(["yes", "no"] * len(f))[: len(f)]), {}, "neither a class name of the model"),
        (lambda f: f.assign(label=[None, *f.label.tolist()[1:]]), {}, "is empty in 1 row"),
    ],
)
def test_bad_data_is_a_one_line_data_error(change, roles, message, tiny_targets):
    data = _dataset(change(_frame(n=40).drop(columns="race")), **roles)
    with pytest.raises(DataError, match=re.escape(message)) as info:
        GroupFairnessProbe(n_boot=5).run(tiny_targets["sequence-classification"],
                                         AuditContext(data=data).for_probe("group_fairness"))
    assert "\n" not in str(info.value)


def test_bad_files_and_parameters(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="is empty"):
        load_dataset(empty)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label,sex\ncaf\xe9,1,f\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_dataset(latin, label_column="label", sensitive_features=["sex"])
    with pytest.raises(DataError, match="Column 'gender'"):
        ok = tmp_path / "ok.csv"
        ok.write_text("text,label,sex\na,1,f\nb,0,m\n", encoding="utf-8")
        load_dataset(ok, label_column="label", sensitive_features=["gender"])
    with pytest.raises(ConfigError, match="threshold must be between 0 and 1"):
        GroupFairnessProbe(threshold=2.0)
    with pytest.raises(ConfigError, match="n_boot"):
        GroupFairnessProbe(n_boot=1)


def test_skipped_without_data_and_not_applicable_to_language_models(tiny_targets):
    (skipped,) = Auditor(AuditConfig(select=["group_fairness"])).run(tiny_targets["sequence-classification"]).results
    assert skipped.status == "skipped"
    (other,) = Auditor(AuditConfig(select=["group_fairness"])).run(tiny_targets["causal-lm"]).results
    assert other.status == "not_applicable"


def test_card_renders_the_reading(tiny_targets, tmp_path):
    from reports.model_card import render_html_card

    path = tmp_path / "eval.csv"
    _frame(n=80).to_csv(path, index=False)
    data = load_dataset(path, label_column="label", sensitive_features=["sex", "race"])
    html = render_html_card(Auditor(probes=[GroupFairnessProbe(n_boot=5)]).run(tiny_targets["sequence-classification"],
                                                                               data=data))
    assert "Equalized odds asks" in html and "Groups by sex x race" in html


def test_auc_interval_matches_sklearn_and_hanley_mcneil_width():
    """The AUC behind the interval is sklearn's; its width is close to Hanley and McNeil's (1982) formula."""
    from sklearn.metrics import roc_auc_score

    from probes.group_fairness import _mann_whitney_auc, auc_interval

    rng = np.random.default_rng(0)
    y = rng.random(600) < 0.4
    scores = np.round(np.where(y, rng.normal(1.0, 1.0, 600), rng.normal(0.0, 1.0, 600)), 1)  # ties on purpose
    mask = np.ones(600, bool)
    auc = roc_auc_score(y, scores)
    assert float(_mann_whitney_auc(scores[y], scores[~y])) == pytest.approx(auc, abs=1e-12)
    ci = auc_interval(y, scores, mask, np.random.default_rng(1), n_resamples=2000)
    n1, n0 = y.sum(), (~y).sum()
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    se = np.sqrt((auc * (1 - auc) + (n1 - 1) * (q1 - auc**2) + (n0 - 1) * (q2 - auc**2)) / (n1 * n0))
    assert ci.low < auc < ci.high
    assert (ci.high - ci.low) == pytest.approx(2 * 1.96 * se, rel=0.25)
