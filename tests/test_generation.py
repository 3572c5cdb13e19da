"""Generation probe: per-group sentiment and gaps recomputed with VADER and numpy."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from audit import AuditConfig, Auditor, load_target
from audit.context import AuditContext
from audit.errors import ConfigError, DataError
from audit.target import AuditTarget
from probes.generation import GenerationProbe, bold_prompts, builtin_prompts, holistic_bias_prompts

POSITIVE = ["a wonderful and kind person", "a brilliant, loved teacher", "happy and generous", "a great friend"]
NEGATIVE = ["a terrible, cruel person", "an awful liar", "hated and violent", "a horrible thief"]


class ScriptedTarget(AuditTarget):
    """The tiny GPT-2, with continuations chosen by the test so the truth is known."""

    def __init__(self, base: AuditTarget, writer) -> None:
        super().__init__(model_id="scripted", path=base.path, kind="causal-lm", model=base.model,
                         tokenizer=base.tokenizer, fingerprint=base.fingerprint, progress=False)
        self.writer = writer
        self.calls: list[dict] = []

    def generate(self, prompts, **decoding):
        self.calls.append(decoding)
        return [self.writer(p) for p in prompts]


def _pick(pool, prompt, salt=0):
    return pool[zlib.crc32(f"{salt}:{prompt}".encode()) % len(pool)]


def _planted(prompt):  # continuations about women are negative, about men positive
    return _pick(NEGATIVE if ("woman" in prompt.lower() or "sister" in prompt.lower()) else POSITIVE, prompt)


def _rows(result, title):
    table = next(t for t in result.tables if t.title == title)
    return [dict(zip(table.columns, r, strict=True)) for r in table.rows]


def test_group_sentiment_and_gaps_match_vader_and_numpy(tiny_targets):
    target = ScriptedTarget(tiny_targets["causal-lm"], _planted)
    result = GenerationProbe(axes=["gender", "race"], n_boot=300).run(target, AuditContext(seed=0).for_probe("generation"))
    analyzer = SentimentIntensityAnalyzer()
    sets = {s.axis: s for s in builtin_prompts()}
    means = {}
    for row in _rows(result, "Sentiment by group"):
        prompts = sets[row["axis"]].groups[row["group"]]
        compound = np.array([analyzer.polarity_scores(_planted(p))["compound"] for p in prompts])
        means[(row["axis"], row["group"])] = compound.mean()
        assert row["continuations"] == len(prompts)
        assert row["mean score"] == pytest.approx(compound.mean())
        assert row["negative share"] == pytest.approx(np.mean(compound <= -0.5))
        lo, hi = (float(v) for v in row["mean 95% CI"].strip("[]").split(","))
        assert lo <= compound.mean() <= hi
    gap = result.metrics["max_sentiment_gap[gender]"]
    assert gap.value == pytest.approx(abs(means[("gender", "female")] - means[("gender", "male")]))
    assert gap.p_value < 0.01
    assert result.status == "failed"
    assert target.calls == [{"max_new_tokens": 20, "do_sample": False, "seed": 0}]
    assert all(e["vader_compound"] <= 0 for e in result.examples)
    # Race prompts mention "woman" in every group alike: no race gap is flagged.
    race = [r for r in _rows(result, "Gaps between groups") if r["axis"] == "race"]
    assert race and not any(r["flagged"] for r in race)


def test_sentiment_independent_of_group_is_not_flagged(tiny_targets):
    flagged = 0
    for salt in range(5):
        target = ScriptedTarget(tiny_targets["causal-lm"], lambda p, s=salt: _pick(POSITIVE + NEGATIVE, p, s))
        result = GenerationProbe(axes=["gender"], n_boot=100).run(target, AuditContext(seed=salt).for_probe("generation"))
        flagged += result.status != "passed"
    assert flagged <= 1


def test_sampling_settings_are_recorded_and_classifier_scores_match(tiny_targets, tiny_dirs):
    target = tiny_targets["causal-lm"]
    probe = GenerationProbe(axes=["gender"], do_sample=True, temperature=0.7, top_k=20, top_p=0.9, seed=5,
                            max_new_tokens=8, classifier=str(tiny_dirs["sequence-classification"]), n_boot=50)
    result = probe.run(target, AuditContext(seed=0).for_probe("generation"))
    assert "do_sample=True" in result.summary and "temperature=0.7" in result.summary and "seed=5" in result.summary
    prompts = [p for ps in builtin_prompts()[0].groups.values() for p in ps]
    continuations = target.generate(prompts, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, seed=5)
    judge = load_target(tiny_dirs["sequence-classification"], progress=False)
    p_negative = judge.predict_proba(continuations)[:, 0]
    rows = [r for r in _rows(result, "Sentiment by group") if r["scorer"] == "classifier"]
    for row in rows:
        members = [i for i, p in enumerate(prompts) if p in builtin_prompts()[0].groups[row["group"]]]
        assert row["mean score"] == pytest.approx(p_negative[members].mean(), abs=1e-6)
    assert "max_sentiment_gap[gender][classifier]" in result.metrics


def test_bold_and_holistic_bias_files(shared_data, tiny_targets, tmp_path):
    bold = bold_prompts(shared_data / "bold" / "prompts" / "gender_prompt.json")
    assert bold.axis == "gender" and set(bold.groups) == {"American_actors", "American_actresses"}
    raw = json.loads((shared_data / "bold" / "prompts" / "gender_prompt.json").read_text(encoding="utf-8"))
    assert len(bold.groups["American_actresses"]) == sum(len(v) for v in raw["American_actresses"].values())
    race = holistic_bias_prompts(shared_data / "holistic_bias" / "v1.1", "race_ethnicity")
    assert {"black", "asian"} <= set(race.groups)
    assert "The Black person worked as" in race.groups["black"]
    religion = holistic_bias_prompts(shared_data / "holistic_bias" / "v1.1" / "descriptors.json", "religion")
    assert len(religion.groups) > 5  # one bucket: each descriptor becomes a group

    target = ScriptedTarget(tiny_targets["causal-lm"], _planted)
    result = GenerationProbe(prompts_path=str(shared_data / "bold" / "prompts" / "gender_prompt.json"),
                             prompt_format="bold", max_prompts_per_group=15, n_boot=50).run(
        target, AuditContext(seed=0).for_probe("generation"))
    assert {r["continuations"] for r in _rows(result, "Sentiment by group")} == {15}

    with pytest.raises(DataError, match="has no axis 'height'"):
        holistic_bias_prompts(shared_data / "holistic_bias" / "v1.1", "height")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON"):
        bold_prompts(broken)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"a": ["x"], "b": ["y"]}), encoding="utf-8")
    with pytest.raises(DataError, match="must map groups"):
        bold_prompts(flat)
    with pytest.raises(DataError, match="does not exist"):
        bold_prompts(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"prompt_format": "bold"}, "needs prompts_path"),
        ({"prompts_path": "x.json"}, "prompt_format is 'builtin'"),
        ({"prompt_format": "holistic_bias", "prompts_path": "x"}, "needs holistic_bias_axis"),
        ({"prompt_format": "wiki"}, "prompt_format must be one of"),
        ({"temperature": 0}, "temperature must be positive"),
        ({"top_p": 1.5}, "top_p must be in"),
        ({"axes": "gender"}, "axes must be a list"),
    ],
)
def test_bad_configuration(params, message):
    with pytest.raises(ConfigError, match=message):
        GenerationProbe(**params)


def test_unknown_axis_or_group_and_other_kinds(tiny_targets):
    context = AuditContext().for_probe("generation")
    with pytest.raises(ConfigError, match="unknown built-in axis"):
        GenerationProbe(axes=["height"]).run(tiny_targets["causal-lm"], context)
    with pytest.raises(ConfigError, match="leave no axis with two groups"):
        GenerationProbe(groups=["female"]).run(tiny_targets["causal-lm"], context)
    for kind in ("encoder", "masked-lm", "sequence-classification"):
        (other,) = Auditor(AuditConfig(select=["generation"])).run(tiny_targets[kind]).results
        assert other.status == "not_applicable"


def test_card_renders_the_reading_and_escapes_continuations(tiny_targets):
    from reports.model_card import render_html_card

    target = ScriptedTarget(tiny_targets["causal-lm"], lambda p: "<b>terrible</b> " + _planted(p))
    results = Auditor(probes=[GenerationProbe(axes=["gender"], n_boot=50)]).run(target)
    html = render_html_card(results)
    assert "What this means." in html and "VADER" in html
    assert "<b>terrible</b>" not in html and "&lt;b&gt;terrible&lt;/b&gt;" in html
