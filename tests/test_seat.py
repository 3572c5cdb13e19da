"""SEAT against the formula of Caliskan et al. 2017 computed independently, and on real data."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from audit import AuditConfig, Auditor, ConfigError, DataError
from audit.context import AuditContext
from probes.seat import SEATProbe, builtin_tests, effect_size, load_test_file
from tests.tiny import write_seat_test


def cos(u, v):
    return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))


def s_word(w, A, B):
    return np.mean([cos(w, a) for a in A]) - np.mean([cos(w, b) for b in B])


def reference_effect_size(X, Y, A, B):
    sx = [s_word(x, A, B) for x in X]
    sy = [s_word(y, A, B) for y in Y]
    return (np.mean(sx) - np.mean(sy)) / np.std(sx + sy, ddof=1)


def reference_exact_p(X, Y, A, B):
    """Pr over all equal-size re-partitions of X u Y of sum_Xi s >= observed (observed included)."""
    words = list(X) + list(Y)
    s = [s_word(w, A, B) for w in words]
    observed = sum(s[: len(X)]) - sum(s[len(X):])
    hits = total = 0
    for idx in itertools.combinations(range(len(words)), len(X)):
        chosen = sum(s[i] for i in idx)
        stat = chosen - (sum(s) - chosen)
        hits += stat >= observed - 1e-12
        total += 1
    return hits / total


@pytest.fixture
def vectors():
    rng = np.random.default_rng(42)
    direction = rng.normal(size=16)
    X = rng.normal(size=(6, 16)) + 0.6 * direction
    Y = rng.normal(size=(6, 16)) - 0.6 * direction
    A = rng.normal(size=(5, 16)) + direction
    B = rng.normal(size=(5, 16)) - direction
    return X, Y, A, B


def test_effect_size_matches_formula(vectors):
    X, Y, A, B = vectors
    assert effect_size(X, Y, A, B) == pytest.approx(reference_effect_size(X, Y, A, B), rel=1e-10)


class FixedEmbeddings:
    """A stand-in target whose embedding of each sentence is a fixed vector."""

    kind = "encoder"

    def __init__(self, table):
        self.table = table

    def embed(self, texts, *, pooling="mean", layer=-1):
        return np.stack([self.table[t] for t in texts])


def test_probe_effect_size_and_exact_p_match_reference(vectors, tmp_path):
    X, Y, A, B = vectors
    names = {role: [f"{role} {i}" for i in range(len(v))] for role, v in zip("XYAB", vectors)}
    table = {n: v for role, vs in zip("XYAB", vectors) for n, v in zip(names[role], vs)}
    path = write_seat_test(tmp_path / "t.jsonl", names["X"], names["Y"], names["A"], names["B"])
    probe = SEATProbe(test_files=[str(path)], n_samples=10_000)
    result = probe.run(FixedEmbeddings(table), AuditContext(seed=0).for_probe("seat"))
    metric = result.metrics["effect_size[t]"]
    assert metric.value == pytest.approx(reference_effect_size(X, Y, A, B), rel=1e-9)
    row = result.tables[0].rows[0]
    assert math.comb(12, 6) <= 10_000 and row[-1] == "exact"
    assert row[8] == pytest.approx(reference_exact_p(X, Y, A, B), abs=1e-12)
    assert metric.ci[0] < metric.value < metric.ci[1]


def test_holm_adjustment_across_tests(vectors, tmp_path):
    X, Y, A, B = vectors
    table, files = {}, []
    for k, shift in enumerate([1.0, 0.0]):
        sets = (X * shift + (1 - shift) * Y, Y, A, B)
        names = {r: [f"{k}{r}{i}" for i in range(len(vs))] for r, vs in zip("XYAB", sets)}
        for role, vs in zip("XYAB", sets):
            table.update(dict(zip(names[role], vs)))
        files.append(str(write_seat_test(tmp_path / f"t{k}.jsonl", names["X"], names["Y"], names["A"], names["B"])))
    result = SEATProbe(test_files=files, n_samples=10_000).run(FixedEmbeddings(table), AuditContext().for_probe("seat"))
    raw = [row[8] for row in result.tables[0].rows]
    adjusted = [row[9] for row in result.tables[0].rows]
    low, high = sorted(range(2), key=lambda i: raw[i])
    assert adjusted[low] == pytest.approx(min(1.0, 2 * raw[low]))
    assert adjusted[high] == pytest.approx(max(adjusted[low], min(1.0, raw[high])))


def test_builtin_tests_expand_templates():
    tests = builtin_tests()
    assert {"weat3", "weat6", "weat7", "weat8"} <= set(tests)
    weat6 = tests["weat6"]
    assert "This is John." in weat6.X and "That is Amy." in weat6.Y
    assert len(weat6.X) == 8 * 8 and len(weat6.A) == 8 * 8


def test_sent_bias_file_format(shared_data):
    test = load_test_file(shared_data / "seat" / "tests" / "sent-weat6.jsonl")
    raw = json.loads((shared_data / "seat" / "tests" / "sent-weat6.jsonl").read_text())
    assert list(test.X) == raw["targ1"]["examples"] and list(test.B) == raw["attr2"]["examples"]


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('{"targ1": {"examples": []}}', "'targ1' must be an object with a non-empty"),
    ("[1, 2]", "must hold one JSON object"),
])
def test_bad_test_files(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_test_file(path)


def test_bad_parameters():
    with pytest.raises(ConfigError, match="pooling"):
        SEATProbe(pooling="max")
    with pytest.raises(ConfigError, match="unknown built-in test"):
        SEATProbe(tests=["weat99"])._selected_tests()


def test_runs_on_every_kind_with_tiny_models(tiny_targets):
    for kind, target in tiny_targets.items():
        result = Auditor(AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat6"], "n_samples": 2000}}})).run(target).results[0]
        assert result.status in ("passed", "warned"), (kind, result.error)
        assert -2 <= result.metrics["effect_size[weat6]"].value <= 2
        mean_abs = result.metrics["mean_abs_effect_size"]
        assert mean_abs.ci[0] <= mean_abs.value <= mean_abs.ci[1] + 1e-9


@pytest.mark.slow
def test_sent_weat6_with_minilm_matches_direct_transformers(shared_data, minilm):
    """The probe's effect size equals one computed from embeddings made directly with transformers."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = shared_data / "seat" / "tests" / "sent-weat6.jsonl"
    test = load_test_file(path)
    tokenizer = AutoTokenizer.from_pretrained(minilm.path)
    model = AutoModel.from_pretrained(minilm.path).eval()

    def direct(texts):
        rows = []
        with torch.no_grad():
            for text in texts:  # one at a time: no padding, no sorting, no cache
                enc = tokenizer(text, return_tensors="pt")
                rows.append(model(**enc).last_hidden_state[0].mean(0).numpy())
        return np.stack(rows)

    expected = reference_effect_size(*(direct(s) for s in (test.X, test.Y, test.A, test.B)))
    result = Auditor(AuditConfig(select=["seat"], probes={"seat": {"params": {"test_files": [str(path)]}}})).run(minilm)
    seat = result.results[0]
    assert seat.metrics["effect_size[sent-weat6]"].value == pytest.approx(expected, abs=1e-4)
    assert seat.metrics["effect_size[sent-weat6]"].p_value < 0.05


def clustered_null(seed, *, n_words=4, n_templates=6, word_sd=1.0, noise=0.2, dim=8):
    """X and Y words drawn from one distribution (no effect); each word's sentences share its vector."""
    rng = np.random.default_rng(seed)
    words = rng.normal(size=(2 * n_words, dim)) * word_sd
    sentences = np.repeat(words, n_templates, axis=0) + noise * rng.normal(size=(2 * n_words * n_templates, dim))
    A = rng.normal(size=(5, dim)) + 1.0
    B = rng.normal(size=(5, dim)) - 1.0
    half = n_words * n_templates
    units = [f"w{i // n_templates}" for i in range(2 * half)]
    return sentences[:half], sentences[half:], A, B, units[:half], units[half:]


def run_with_units(tmp_path, X, Y, A, B, ux, uy, **params):
    names = {role: [f"{role} {i}" for i in range(len(v))] for role, v in zip("XYAB", (X, Y, A, B))}
    table = {n: v for role, vs in zip("XYAB", (X, Y, A, B)) for n, v in zip(names[role], vs)}
    spec = {r: {"category": r, "examples": names[k]} for r, k in zip(("targ1", "targ2", "attr1", "attr2"), "XYAB")}
    spec["targ1"]["units"], spec["targ2"]["units"] = list(ux), list(uy)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(spec))
    return SEATProbe(test_files=[str(path)], **params).run(FixedEmbeddings(table), AuditContext(seed=1).for_probe("seat"))


def test_clustered_sentences_are_permuted_by_word(tmp_path):
    """Regression: sentences of one word are correlated, so the exact p re-partitions words.

    Brute force: every split of the 8 words into two sets of 4 (70), statistic = difference of the
    mean per-word association. Sentence-level permutation (the old test) gives a far smaller p here.
    """
    X, Y, A, B, ux, uy = clustered_null(3)
    s = np.array([s_word(w, A, B) for w in np.concatenate([X, Y])])
    word_means = s.reshape(8, 6).mean(axis=1)
    observed = word_means[:4].mean() - word_means[4:].mean()
    splits = list(itertools.combinations(range(8), 4))
    hits = sum(word_means[list(c)].mean() - np.delete(word_means, list(c)).mean() >= observed - 1e-12 for c in splits)
    result = run_with_units(tmp_path, X, Y, A, B, ux, uy, n_samples=1000)
    row = result.tables[0].rows[0]
    assert row[-1] == "exact"
    assert row[8] == pytest.approx(hits / len(splits), abs=1e-12)
    # The effect size is still the sentence-level d of Caliskan et al. / May et al.
    assert result.metrics["effect_size[c]"].value == pytest.approx(reference_effect_size(X, Y, A, B), rel=1e-9)


def test_clustered_null_false_alarm_rate(tmp_path):
    """On 40 clustered nulls (6 words a side) the word-level test alarms at about alpha: 3 of 40 here.

    The sentence-level test (the old code) alarmed in 11 of 40. Seeds are fixed, so this is deterministic.
    """
    alarms = 0
    for seed in range(40):
        X, Y, A, B, ux, uy = clustered_null(100 + seed, n_words=6, noise=0.05)
        result = run_with_units(tmp_path, X, Y, A, B, ux, uy, n_samples=1000, n_boot=200)
        alarms += result.status != "passed"
    assert alarms <= 6  # P(Binomial(40, 0.05) > 6) < 0.02


def test_clustered_interval_resamples_words(tmp_path):
    """Regression: the interval matches a brute-force bootstrap that draws words with all their sentences.

    Per replicate k - 1 of the k words of each set, with replacement; percentiles at the tail of a
    t quantile with (words - 2) degrees of freedom (expanded percentile). The old interval resampled
    sentences and was about half as wide.
    """
    from scipy import stats

    X, Y, A, B, ux, uy = clustered_null(7, n_words=6)
    result = run_with_units(tmp_path, X, Y, A, B, ux, uy, n_samples=1000, n_boot=8000)
    rng = np.random.default_rng(0)
    sx = np.array([s_word(w, A, B) for w in X]).reshape(6, 6)
    sy = np.array([s_word(w, A, B) for w in Y]).reshape(6, 6)
    reps = []
    for _ in range(8000):
        bx, by = sx[rng.integers(0, 6, 5)].ravel(), sy[rng.integers(0, 6, 5)].ravel()
        both = np.concatenate([bx, by])
        reps.append((bx.mean() - by.mean()) / both.std(ddof=1))
    tail = stats.norm.cdf(-stats.t.ppf(0.975, df=12 - 2))
    low, high = np.quantile(reps, [tail, 1 - tail])
    ci = result.metrics["effect_size[c]"].ci
    width = high - low
    assert ci[0] == pytest.approx(low, abs=0.05 * width) and ci[1] == pytest.approx(high, abs=0.05 * width)


def test_builtin_tests_carry_the_word_of_each_sentence():
    weat6 = builtin_tests()["weat6"]
    assert len(weat6.X_units) == len(weat6.X) and weat6.X_units.count("John") == 8
    assert weat6.X[weat6.X_units.index("John")] == "This is John."


def test_bad_units_in_test_file(tmp_path):
    spec = {r: {"category": r, "examples": ["a", "b"]} for r in ("targ1", "targ2", "attr1", "attr2")}
    spec["targ1"]["units"] = ["w"]
    path = tmp_path / "u.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(DataError, match="'units' must be a list of strings, one per example"):
        load_test_file(path)
