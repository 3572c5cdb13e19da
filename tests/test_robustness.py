"""Robustness by group: the perturbations on hand cases, flip rates against a direct count, the
verdict with and without a planted group difference."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest

from audit import AuditDataset
from audit.context import AuditContext
from audit.errors import ConfigError
from probes.robustness import RobustnessProbe, perturb


def _rng():
    return np.random.default_rng(0)


def test_perturbations_on_hand_cases():
    assert perturb(["She does not know."], "contractions", rng=_rng()) == ["She doesn't know."]
    assert perturb(["It's fine"], "contractions", rng=_rng()) == ["It is fine"]
    assert perturb(["Hi, there!"], "punctuation", rng=_rng()) == ["Hi there"]
    assert perturb(["Hi there"], "punctuation", rng=_rng()) == ["Hi there."]
    assert perturb(["He told HIS Mother."], "pronoun_swap", rng=_rng()) == ["She told HER Father."]
    assert perturb(["John met Mary."], "name_swap", rng=_rng()) == ["Mary met John."]
    assert perturb(["abc"], "uppercase", rng=_rng()) == ["ABC"]
    (typo,) = perturb(["remarkable sentence"], "typos", rng=_rng(), typo_rate=1.0)
    assert typo != "remarkable sentence" and sorted(typo) == sorted("remarkable sentence")
    assert typo[0] == "r" and typo.split()[1][0] == "s"  # first letters kept
    with pytest.raises(ConfigError, match="perturbation must be one of"):
        perturb(["x"], "leet", rng=_rng())


class Stub:
    """A classifier stand-in: ``rule(text) -> 0/1``."""

    kind = "sequence-classification"

    def __init__(self, rule):
        self.rule = rule
        self.labels = ["negative", "positive"]

    def predict(self, texts, *, sensitive_features=None):
        return np.array([self.rule(t) for t in texts])


def _data(n=80):
    rows = [{"text": f"{'She does' if i % 2 else 'He did'} not like item {i}, really.",
             "group": "a" if i % 2 else "b", "label": "positive" if i % 3 else "negative"} for i in range(n)]
    return AuditDataset(frame=pd.DataFrame(rows), text_column="text", label_column="label", sensitive_features=("group",))


def _run(rule, **params):
    data = _data()
    probe = RobustnessProbe(perturbations=["contractions", "punctuation", "typos"], n_permutations=500, n_boot=100,
                            **params)
    return probe.run(Stub(rule), AuditContext(seed=0, data=data).for_probe("robustness")), data


def test_flip_rates_match_a_direct_count():
    def rule(text):
        return zlib.crc32(text.encode()) % 2

    result, data = _run(rule)
    texts = data.texts
    for perturbation in ("contractions", "punctuation"):
        changed = perturb(texts, perturbation, rng=_rng())
        flips = [rule(a) != rule(b) for a, b in zip(texts, changed) if a != b]
        assert result.metrics[f"flip_rate[{perturbation}]"].value == pytest.approx(100 * np.mean(flips))
        labels = data.frame["label"].map({"negative": 0, "positive": 1}).tolist()
        before = [rule(a) == y for a, b, y in zip(texts, changed, labels) if a != b]
        after = [rule(b) == y for a, b, y in zip(texts, changed, labels) if a != b]
        assert result.metrics[f"accuracy_drop[{perturbation}]"].value == pytest.approx(
            100 * (np.mean(before) - np.mean(after)))


def test_null_passes_and_a_planted_group_gap_fails():
    null, _ = _run(lambda t: zlib.crc32(t.encode()) % 2)
    assert null.status == "passed", null.summary
    # positive exactly when the text says "does not": contracting it flips group a's rows only
    planted, _ = _run(lambda t: int("does not" in t))
    assert planted.status == "failed"
    gap = planted.metrics["group_gap[contractions, group]"]
    assert gap.value == 100.0 and gap.p_value < 0.01 and "worst group: a" in gap.description
    assert planted.metrics["group_gap[punctuation, group]"].value == 0.0


def test_no_text_in_the_result():
    result, _ = _run(lambda t: int("does not" in t))
    dumped = result.model_dump_json()
    assert "like item" not in dumped and "She does" not in dumped


def test_bad_config():
    with pytest.raises(ConfigError, match="unknown perturbation"):
        RobustnessProbe(perturbations=["leet"])
    with pytest.raises(ConfigError, match="must be a list"):
        RobustnessProbe(perturbations="typos")


def test_calibration_case_runs_null_and_planted():
    from benchmarks.calibration.qa_cases import qa_cases

    case = next(c for c in qa_cases() if c.probe == "robustness")
    null = case.run(100, 0.0)
    assert not null.alarm and null.covered["flip rate"] and null.truth == 0.0
    planted = case.run(1, 0.3)
    assert planted.alarm and planted.truth == pytest.approx(30.0)
