"""spaCy's lemmas on demand: the same NLP artifacts as Presidio's, with the lemma stages run only
for the documents whose detections look for context words.

Presidio reads a document's lemmas (and the keywords made from them) in one place: its context
enhancer, which looks at the words around a detection from a recognizer with context words. For
most documents no detection asks, yet Presidio's :class:`SpacyNlpEngine` runs spaCy's attribute
ruler and lemmatizer over every document and builds the lemma and keyword lists up front.
:func:`process_batch` runs the same pipeline with those two stages held back and gives
:class:`DeferredLemmaArtifacts`, which run them on the document the first time its lemmas are read.

The result is identical, not approximate, under a condition :func:`deferrable_stages` checks on the
loaded pipeline: the held-back stages are spaCy's own ``AttributeRuler`` and ``Lemmatizer``, the
rules match nothing a later stage sets (entities), and every stage after them is an entity
recognizer whose features read none of the attributes the held-back stages write (POS, morphology,
lemma, tag). Any other pipeline (an entity ruler matching lemmas, a transformers NER, a custom
component) runs as Presidio runs it. ``tests/test_pii_nlp.py`` compares lemmas, keywords and
detections with Presidio's own engine.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

# Token attributes an entity recognizer sets: a held-back rule matching them would see a different doc.
_ENTITY_ATTRS = {"ENT_TYPE", "ENT_IOB", "ENT_ID", "ENT_KB_ID"}
# What an entity recognizer reads besides its features: it keeps entities inside sentences.
_SENTENCES = {"SENT_START", "IS_SENT_START", "HEAD"}


class DeferredLemmaArtifacts(NlpArtifacts):
    """Presidio's :class:`NlpArtifacts` for one spaCy ``Doc`` whose lemma stages have not run yet.

    Entities and scores are ready; ``lemmas``, ``keywords`` and ``tokens_indices`` are computed on
    first use, the lemma stages (``finish``) running on the document then, in pipeline order.
    """

    def __init__(self, doc: Any, *, entities: list[Any], scores: list[float], nlp_engine: Any,
                 language: str, finish: tuple[Any, ...]) -> None:
        # NlpArtifacts.__init__ would build the lemma and keyword lists now; set its fields instead.
        self.entities = entities
        self.tokens = doc
        self.nlp_engine = nlp_engine
        self.scores = scores if scores else [0.85] * len(entities)
        self._language = language
        self._finish = finish
        self._lemmas: list[str] | None = None
        self._keywords: list[str] | None = None
        self._indices: list[int] | None = None

    @property
    def lemmas(self) -> list[str]:
        if self._lemmas is None:
            for stage in self._finish:
                stage(self.tokens)
            self._finish = ()
            self._lemmas = [token.lemma_ for token in self.tokens]
        return self._lemmas

    @property
    def keywords(self) -> list[str]:
        if self._keywords is None:
            self._keywords = self.set_keywords(self.nlp_engine, self.lemmas, self._language)
        return self._keywords

    @property
    def tokens_indices(self) -> list[int]:
        if self._indices is None:
            self._indices = [token.idx for token in self.tokens]
        return self._indices


@functools.cache
def _id_names() -> dict[int, str]:
    from spacy.attrs import IDS

    return {v: k for k, v in IDS.items()}


def _attr_names(values: Iterable[Any]) -> set[str]:
    names = _id_names()
    return {str(names.get(v, v)).upper() for v in values}


def _features_read(component: Any) -> set[str] | None:
    """Token attributes a trained component's own feature extractors read (None: not a thinc model)."""
    model = getattr(component, "model", None)
    if model is None or not hasattr(model, "walk"):
        return None
    read: set[str] = set()
    for node in model.walk():
        read |= _attr_names(node.attrs.get("columns", ()))  # spaCy's extract_features (hash embeddings)
        if node.name == "static_vectors":  # word vectors, looked up by the vector table's attribute
            read |= _attr_names([getattr(component.vocab.vectors, "attr", "ORTH")])
    return read


def _writes(stage: Any) -> set[str] | None:
    """Token attributes an attribute ruler or lemmatizer sets, and the attributes its rules match
    (None: a stage this module does not know)."""
    from spacy.pipeline import AttributeRuler, Lemmatizer

    if isinstance(stage, Lemmatizer) and type(stage).__module__.startswith("spacy."):  # spaCy's, per language
        return {"LEMMA"}
    if type(stage) is AttributeRuler:
        matched = {key.upper() for rule in stage.patterns for pattern in rule["patterns"]
                   for token in pattern for key in token}
        if matched & _ENTITY_ATTRS or "_" in matched:  # entities, or custom attributes nobody can vouch for
            return None
        return _attr_names(key for attrs in stage.attrs for key in attrs) | {"TAG", "POS", "MORPH", "LEMMA"}
    return None


def deferrable_stages(nlp: Any) -> tuple[str, ...]:
    """Names of the pipeline's stages that can run after the rest without changing any result: ``()``
    unless, from spaCy's first attribute ruler or lemmatizer on, the pipeline has only those two kinds
    of stage and trained entity recognizers whose features read none of what those write."""
    from spacy.pipeline import EntityRecognizer

    held: list[str] = []
    written: set[str] = set()
    for name, component in nlp.pipeline:
        writes = _writes(component)
        if writes is not None:
            held.append(name)
            written |= writes
            continue
        if not held:  # stages before the first held one run in their place
            continue
        read = _features_read(component)
        if type(component) is not EntityRecognizer or read is None or (read | _SENTENCES) & written:
            return ()
    return tuple(held)


def supports(nlp_engine: Any, language: str) -> tuple[str, ...]:
    """The stages :func:`process_batch` holds back for this engine, ``()`` where it runs Presidio's own."""
    if type(nlp_engine) is not SpacyNlpEngine or not getattr(nlp_engine, "nlp", None):
        return ()
    nlp = nlp_engine.nlp.get(language)
    return deferrable_stages(nlp) if nlp is not None else ()


def process_batch(nlp_engine: Any, texts: list[str], language: str, *, batch_size: int) -> Iterator[NlpArtifacts]:
    """NLP artifacts for ``texts``, in order, as Presidio's ``process_batch`` gives them (one process),
    with the lemma stages deferred where :func:`supports` allows."""
    held = supports(nlp_engine, language)
    if not held:
        yield from (a for _, a in nlp_engine.process_batch(texts, language, batch_size=batch_size, n_process=1))
        return
    nlp = nlp_engine.nlp[language]
    finish = tuple(nlp.get_pipe(name) for name in nlp.pipe_names if name in held)
    for doc in nlp.pipe((str(t) for t in texts), batch_size=batch_size, disable=list(held)):
        entities, scores = nlp_engine._get_updated_entities(nlp_engine._get_entities(doc),
                                                            nlp_engine._get_scores_for_entities(doc))
        yield DeferredLemmaArtifacts(doc, entities=entities, scores=scores, nlp_engine=nlp_engine,
                                     language=language, finish=finish)
