"""`rai-audit demo`: the dataset it builds, and the whole walk-through end to end on the bundled MiniLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rai_audit.demo_data import make_splits


def test_splits_are_reproducible_disjoint_and_labelled_by_vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    sizes = {"train": 120, "calibration": 40, "test": 60}
    first, second = make_splits(seed=3, sizes=sizes), make_splits(seed=3, sizes=sizes)
    for name in sizes:
        assert first[name].equals(second[name])
        assert len(first[name]) == sizes[name]
    texts = [set(first[n]["text"]) for n in sizes]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    analyzer = SentimentIntensityAnalyzer()
    test = first["test"]
    truth = ["positive" if analyzer.polarity_scores(t)["compound"] > 0 else "negative" for t in test["text"]]
    # the planted PII suffix is neutral to VADER, so every held-out label is VADER's verdict on the row
    assert truth == test["label"].tolist()
    train = first["train"]
    flipped = train[train["relabelled"] == 1]
    assert len(flipped) > 0 and set(flipped["gender"]) == {"female"} and set(flipped["label"]) == {"negative"}
    assert make_splits(seed=4, sizes=sizes)["test"]["text"].tolist() != test["text"].tolist()


def test_planted_pii_and_pronouns_match_the_row():
    splits = make_splits(seed=0, sizes={"train": 300, "calibration": 10, "test": 10})
    train = splits["train"]
    pii = train[train["has_pii"] == 1]["text"]
    assert len(pii) > 5 and all(("@example.com" in t) or ("555-01" in t) for t in pii)
    assert not any(("@" in t) or ("555-01" in t) for t in train[train["has_pii"] == 0]["text"])
    for text, gender in zip(train["text"], train["gender"]):
        words = set(text.replace(",", " ").replace(".", " ").lower().split())
        assert not words & ({"he", "his", "him"} if gender == "female" else {"she", "her"})


def _accuracy(model_dir, frame) -> float:
    """Held-out accuracy computed here with transformers alone, not through rai-audit."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.no_grad():
        enc = tokenizer(frame["text"].tolist(), padding=True, truncation=True, max_length=64, return_tensors="pt")
        predicted = model(**enc).logits.argmax(-1).numpy()
    names = np.asarray([model.config.id2label[int(i)] for i in predicted])
    return float(np.mean(names == frame["label"].to_numpy()))


@pytest.mark.slow
def test_demo_end_to_end_then_from_the_cache(tmp_path, capsys):
    import pandas as pd

    from audit.cli import main
    from rai_audit.demo import CLASSIFIER_PROBES, THRESHOLD_PROBES

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    first = capsys.readouterr()
    summary = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    steps = summary["steps"]
    assert steps["train_dp"]["cache"] == "miss" and steps["debias"]["cache"] == "miss"
    for line in ("[demo 1/5]", "[demo 2/5]", "[demo 3/5]", "[demo 4/5]", "[demo 5/5]"):
        assert line in first.err

    classifier = steps["classifier"]
    assert set(classifier["statuses"]) == set(CLASSIFIER_PROBES)
    assert set(classifier["statuses"].values()) <= {"passed", "warned", "failed"}
    assert classifier["probes_ran"] >= 10
    assert set(steps["encoder"]["statuses"]) == {"seat", "attention"}
    for key in ("classifier_fairness", "classifier_threshold"):
        assert set(steps[key]["statuses"]) == set(THRESHOLD_PROBES)
    # the DP model's fairness re-audit for the comparison reads what step 3 computed
    assert steps["classifier_fairness"]["cached_probes"] == len(THRESHOLD_PROBES)

    test = pd.read_csv(out / "data" / "test.csv")
    accuracy = summary["held_out_accuracy"]
    assert accuracy["value"] == pytest.approx(_accuracy(out / "models" / "classifier-dp", test), abs=1e-9)
    majority = test["label"].value_counts(normalize=True).max()
    assert accuracy["ci"][0] > majority + 0.05, "the DP classifier did not learn"

    record = json.loads((out / "models" / "classifier-dp" / "rai_audit_record.json").read_text(encoding="utf-8"))["dp"]
    assert record["epsilon"] <= record["target_epsilon"] == 8.0
    card = (out / "classifier" / "model_card.html").read_text(encoding="utf-8")
    assert "<strong>Privacy guarantee.</strong>" in card
    assert (out / "comparison" / "comparison.html").is_file()
    comparison = json.loads((out / "comparison" / "comparison.json").read_text(encoding="utf-8"))
    assert comparison["tradeoffs"], "the comparison compared nothing"

    index = (out / "index.html").read_text(encoding="utf-8")
    assert "planted bias" in index  # the reader is told what the audit should find
    for href in ("encoder/model_card.html", "classifier/model_card.html", "classifier-threshold/model_card.html",
                 "comparison/comparison.html"):
        assert f"href='{href}'" in index and (out / href).is_file()
    assert str(out / "index.html") in first.out

    assert main(["demo", "--out", str(out)]) == 0
    second = capsys.readouterr()
    again = json.loads((out / "demo.json").read_text(encoding="utf-8"))["steps"]
    assert again["train_dp"]["cache"] == "hit" and again["debias"]["cache"] == "hit"
    assert second.err.count("cache hit") == 2
    for key in ("encoder", "classifier", "classifier_fairness", "classifier_threshold"):
        assert again[key]["cached_probes"] == again[key]["n_probes"] > 0
        assert again[key]["statuses"] == steps[key]["statuses"]
