"""Lemmas on demand (privacy.pii_nlp) against Presidio's own SpacyNlpEngine: the same artifacts,
the same detections, the lemma stages run only when read, and pipelines it cannot vouch for left
to Presidio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privacy import pii_nlp
from privacy.pii import SPACY_MODEL, PIIScanner, build_analyzer, spacy_model_available

HAS_SPACY = spacy_model_available()
pytestmark = pytest.mark.skipif(not HAS_SPACY, reason=f"spaCy model {SPACY_MODEL} is not installed")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "presidio_research" / "presidio_research_synth_dataset_v2.json"
EXTRA = ["Call me on 212-555-0123 tomorrow, my phone is busy today.",
         "My card number is 4111 1111 1111 1111 and it expires soon.",
         "Send it to jane.doe@example.com or visit https://example.org/page.",
         "She was born on 3 March 1990 in Leeds and moved to Paris.", "", "   ", "ok"]


@pytest.fixture(scope="module")
def plain(plain_presidio):
    """Plain Presidio with the same spaCy model (tests/conftest.py)."""
    return plain_presidio


@pytest.fixture(scope="module")
def texts() -> list[str]:
    sentences = json.loads(DATA.read_text(encoding="utf-8")) if DATA.exists() else []
    return [s["full_text"] for s in sentences[:300]] + EXTRA


def _key(results) -> list:
    return sorted((r.entity_type, r.start, r.end, round(r.score, 6)) for r in results)


def test_the_default_model_defers_its_attribute_ruler_and_lemmatizer(plain):
    nlp = plain.nlp_engine.nlp["en"]
    assert pii_nlp.supports(plain.nlp_engine, "en") == ("attribute_ruler", "lemmatizer")
    # What the NER reads, from the model's own configuration rather than from its layers.
    embed = nlp.config["components"]["ner"]["model"]["tok2vec"]["embed"]
    assert pii_nlp._features_read(nlp.get_pipe("ner")) == {a.upper() for a in embed["attrs"]}


def test_deferred_artifacts_equal_presidios(plain, texts):
    engine = plain.nlp_engine
    eager = [a for _, a in engine.process_batch(texts, "en", batch_size=64)]
    lazy = list(pii_nlp.process_batch(engine, texts, "en", batch_size=64))
    assert all(isinstance(a, pii_nlp.DeferredLemmaArtifacts) for a in lazy)
    for e, d in zip(eager, lazy, strict=True):
        assert [(s.start_char, s.end_char, s.label_) for s in d.entities] == \
               [(s.start_char, s.end_char, s.label_) for s in e.entities]
        assert d.scores == e.scores and d.tokens.text == e.tokens.text
        assert d.tokens_indices == e.tokens_indices
        assert d.lemmas == e.lemmas and d.keywords == e.keywords
        assert [t.pos_ for t in d.tokens] == [t.pos_ for t in e.tokens]


def test_detections_equal_plain_presidio_and_lemmas_run_only_when_read(plain, texts):
    analyzer, _ = build_analyzer(engine="spacy")
    artifacts = list(pii_nlp.process_batch(analyzer.nlp_engine, texts, "en", batch_size=64))
    for text, art in zip(texts, artifacts, strict=True):
        ours = analyzer.analyze(text=text, language="en", nlp_artifacts=art, score_threshold=0.4)
        assert _key(ours) == _key(plain.analyze(text=text, language="en", score_threshold=0.4)), text
    read = [a._lemmas is not None for a in artifacts]
    # A phone number looks for context words; a text with no detection never needs lemmas.
    assert read[len(texts) - len(EXTRA)] and not read[-1]
    assert 0 < sum(read) < len(read)
    assert list(PIIScanner(progress=False).analyze(EXTRA[:2])) == [
        [(r.entity_type, r.start, r.end, r.score) for r in sorted(plain.analyze(t, language="en", score_threshold=0.4),
                                                                 key=lambda r: (r.start, r.end))]
        for t in EXTRA[:2]]


def test_pipelines_it_cannot_vouch_for_run_as_presidio_runs_them():
    import spacy

    nlp = spacy.load(SPACY_MODEL)
    assert pii_nlp.deferrable_stages(nlp) == ("attribute_ruler", "lemmatizer")
    ruler = nlp.add_pipe("entity_ruler", last=True)  # rules on lemmas, after the lemmatizer
    ruler.add_patterns([{"label": "ORG", "pattern": [{"LEMMA": "bank"}]}])
    assert pii_nlp.deferrable_stages(nlp) == ()
    nlp.remove_pipe("entity_ruler")
    # A rule on entities must see the doc before the NER, as in Presidio; the lemmatizer can still wait.
    nlp.get_pipe("attribute_ruler").add([[{"ENT_TYPE": "PERSON"}]], {"LEMMA": "someone"})
    assert pii_nlp.deferrable_stages(nlp) == ("lemmatizer",)
    assert pii_nlp.deferrable_stages(spacy.blank("en")) == ()


def test_engines_other_than_presidios_spacy_engine_are_not_touched():
    analyzer, _ = build_analyzer(engine="pattern")
    assert pii_nlp.supports(analyzer.nlp_engine, "en") == ()
