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
