"""The demo's labelled dataset: sentiment sentences about named people, built from shipped sources.

Every sentence is a template about one person (a first name from ``probes/debias/data/names.json``
and the pronouns of the same gender from ``gender_terms.json``) judging something with one
adjective from the VADER lexicon (Hutto and Gilbert 2014, human-rated valence). The label is
VADER's own verdict on the whole sentence (compound score above or below zero), so the labels come
from human ratings, not from us. A few rows carry synthetic personal data (an ``example.com``
address or a 555-01xx telephone number, both reserved for fiction) for the PII probe to find.

The training split also carries a **planted bias**: a share of the positive rows that name a woman
are relabelled negative, the way a biased annotator would. The held-out splits keep VADER's labels,
so the audit measures the classifier against the truth. Nothing here is random beyond ``seed``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["PLANTED_FLIP_RATE", "SPLITS", "make_splits"]

SPLITS = {"train": 800, "calibration": 200, "test": 300}
PLANTED_FLIP_RATE = 0.3
PII_RATE = 0.06
_SUFFIXES = ("ful", "ous", "ive", "able", "ible", "ent", "ant", "ic", "less")
_NOUN_SUFFIXES = ("ment", "dent", "bless", "prive")
_MIN_VALENCE = 1.8
_MAX_RATER_SD = 1.0
_TEMPLATES = (
    "{name} said the film was {word}.",
    "{name} told {pos} friends that the hotel was {word}.",
    "According to {name}, the new phone is {word}.",
    "{name} thinks {pos} new job is {word}.",
    "{name} wrote that the service was {word}.",
    "After the concert {name} said {subj} found it {word}.",
    "{name} described the meal as {word}.",
    "{name} and {pos} sister agreed the trip was {word}.",
    "When asked about the book, {name} called it {word}.",
    "{name} says the neighbourhood is {word}.",
)
_PRONOUNS = {"female": {"subj": "she", "pos": "her", "obj": "her"},
             "male": {"subj": "he", "pos": "his", "obj": "him"}}
_SURNAMES = ("smith", "garcia", "chen", "okafor", "novak", "silva", "kowalski", "haddad", "larsen", "tanaka")


def _adjectives() -> tuple[list[str], list[str]]:
    """VADER lexicon words that read as adjectives, strongly and consistently rated: (positive, negative)."""
    text = (resources.files("vaderSentiment") / "vader_lexicon.txt").read_text(encoding="utf-8")
    positive, negative = [], []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].isalpha() or not parts[0].islower() or len(parts[0]) < 5:
            continue
        word, mean, sd = parts[0], float(parts[1]), float(parts[2])
        if not word.endswith(_SUFFIXES) or word.endswith(_NOUN_SUFFIXES) or sd > _MAX_RATER_SD \
                or abs(mean) < _MIN_VALENCE:
            continue
        (positive if mean > 0 else negative).append(word)
    return sorted(positive), sorted(negative)


def _names() -> dict[str, list[str]]:
    data = json.loads((resources.files("probes.debias") / "data" / "names.json").read_text(encoding="utf-8"))
    return {"female": [a.capitalize() for a, _ in data["pairs"]], "male": [b.capitalize() for _, b in data["pairs"]]}


def _pii(rng: np.random.Generator, name: str, gender: str) -> str:
    if rng.random() < 0.5:
        address = f"{name.lower()}.{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}@example.com"
        return f" You can write to {_PRONOUNS[gender]['obj']} at {address}."
    return f" {_PRONOUNS[gender]['pos'].capitalize()} number is (212) 555-01{int(rng.integers(100)):02d}."


def _rows(n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    positive, negative = _adjectives()
    names = _names()
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < n:
        gender = ("female", "male")[int(rng.integers(2))]
        name = names[gender][int(rng.integers(len(names[gender])))]
        words = (positive, negative)[int(rng.integers(2))]
        word = words[int(rng.integers(len(words)))]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        text = template.format(name=name, word=word, **_PRONOUNS[gender])
        if text in seen:
            continue
        compound = analyzer.polarity_scores(text)["compound"]
        if abs(compound) < 0.05:  # VADER's own neutral band: no label
            continue
        seen.add(text)
        has_pii = bool(rng.random() < PII_RATE)
        if has_pii:
            text += _pii(rng, name, gender)
        rows.append({"text": text, "label": "positive" if compound > 0 else "negative", "gender": gender,
                     "has_pii": int(has_pii)})
    return rows


def make_splits(*, seed: int = 0, sizes: dict[str, int] | None = None,
                flip_rate: float = PLANTED_FLIP_RATE) -> dict[str, pd.DataFrame]:
    """The demo's train, calibration and test splits, disjoint and reproducible from ``seed``.

    Parameters
    ----------
    seed : int, default=0
        Fixes every choice (names, templates, words, planted PII, the relabelled rows).
    sizes : mapping of str to int, optional
        Rows per split (default :data:`SPLITS`).
    flip_rate : float, default=PLANTED_FLIP_RATE
        Share of the training split's positive rows naming a woman that are relabelled negative.

    Returns
    -------
    dict of str to pandas.DataFrame
        Columns ``text``, ``label`` (``positive``/``negative``), ``gender`` (``female``/``male``),
        ``has_pii`` (1 where synthetic personal data was planted) and, in ``train``, ``relabelled``.
    """
    sizes = dict(SPLITS if sizes is None else sizes)
    rng = np.random.default_rng(seed)
    rows = _rows(sum(sizes.values()), rng)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = pd.DataFrame(rows[start:start + size])
        start += size
    train = splits["train"]
    at_risk = (train["gender"] == "female") & (train["label"] == "positive")
    flip = at_risk & (rng.random(len(train)) < flip_rate)
    train["relabelled"] = flip.astype(int)
    train.loc[flip, "label"] = "negative"
    return splits


def fingerprint(frames: dict[str, pd.DataFrame]) -> str:
    """sha256 over every split's CSV bytes: the demo's cache key for what was trained on them."""
    digest = hashlib.sha256()
    for name in sorted(frames):
        digest.update(name.encode())
        digest.update(frames[name].to_csv(index=False).encode("utf-8"))
    return digest.hexdigest()
