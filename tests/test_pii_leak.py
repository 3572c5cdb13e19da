"""Nothing leaks: PII planted in the data and in a model's outputs never reaches a file or a log.

A tiny GPT-2 is trained until it reproduces planted personal data when the ``pii_generation``
prompts invite it to; a dataset carries other planted values. The audit (``pii_data`` and
``pii_generation``) and ``rai-audit redact`` then run through the real CLI, and every file they
wrote (HTML, JSON, Markdown, cache, redacted output) and everything printed or logged is searched
for the planted strings. With ``--show-pii`` the same strings must appear, so the search is shown
to be able to find them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from audit import load_target
from audit.cli import main
from privacy.pii import spacy_model_available
from privacy.probes import PII_PROMPTS
from tests.test_leakage import train_causal_lm
from tests.tiny import make_tiny_model

# Trains a tiny model and runs the CLI audit twice: 10-30 s on 2 shared cores.
pytestmark = pytest.mark.slow

HAS_SPACY = spacy_model_available()

# What the model memorises, each sentence starting with one of the built-in PII_PROMPTS.
GENERATED = {
    "zelda.quimby@example.org": "My email address is zelda.quimby@example.org and that is all.",
    "415-555-0132": "Call me on 415-555-0132 today.",
    "4111 1111 1111 1111": "My credit card number is 4111 1111 1111 1111 .",
}
if HAS_SPACY:
    GENERATED["Margaret Thompson"] = "My name is Margaret Thompson ."
DATA_VALUES = ["amos.tran@example.net", "212-555-0187", "DE89 3704 0044 0532 0130 00", "219-09-9999"]
DATA_ROWS = [
    "Customer wrote from amos.tran@example.net about the delay.",
    "Please call back on 212-555-0187 after five.",
    "Refund to IBAN DE89 3704 0044 0532 0130 00 approved.",
    "Her SSN is 219-09-9999 according to the form.",
    "The parcel arrived in good condition.",
    "Thanks for the quick reply.",
]
if HAS_SPACY:
    DATA_VALUES.append("Robert Johnson")
    DATA_ROWS.append("Please ask Robert Johnson to sign the contract.")
PLANTED = [*GENERATED, *DATA_VALUES]


@pytest.fixture(scope="module")
def memorising_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("leak")
    base = make_tiny_model("causal-lm", root / "base")
    return train_causal_lm(base, list(GENERATED.values()), root / "memorised", steps=200, bos=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("leak-data") / "customers.csv"
    pd.DataFrame({"text": DATA_ROWS, "label": [i % 2 for i in range(len(DATA_ROWS))]}).to_csv(path, index=False)
    return path


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_bytes().decode("utf-8", errors="replace")
            for p in sorted(root.rglob("*")) if p.is_file()}


def _audit(model: Path, data: Path, out: Path, *extra: str) -> int:
    return main(["run", "--model", str(model), "--data", str(data), "--text-column", "text",
                 "--probe", "pii_data", "--probe", "pii_generation", "--out", str(out), "--device", "cpu",
                 "--no-progress", "--seed", "0", *extra])


def test_the_model_really_emits_the_planted_values(memorising_model):
    target = load_target(memorising_model, progress=False, device="cpu")
    prompts = [sentence.split(value)[0].strip() for value, sentence in GENERATED.items()]
    assert set(prompts) <= set(PII_PROMPTS)
    outputs = target.generate(prompts, max_new_tokens=32)
    assert [value in text for value, text in zip(GENERATED, outputs, strict=True)] == [True] * len(GENERATED)


def test_no_planted_value_reaches_any_file_or_log(memorising_model, dataset, tmp_path, capfd, caplog):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "report"
    code = _audit(memorising_model, dataset, out)
    redacted = tmp_path / "customers.redacted.csv"
    code_redact = main(["redact", str(dataset), "--out", str(redacted), "--columns", "text", "--no-progress"])
    printed = capfd.readouterr()
    assert code_redact == 0, printed.err
    assert code == 0, printed.err  # no gate, no errored probe

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    by_probe = {r["probe"]: r for r in results["results"]}
    # the planted values were found, so the absence below is redaction, not a blind scanner
    data_result = by_probe["pii_data"]
    assert data_result["status"] == "warned", data_result["summary"]
    assert data_result["metrics"]["documents_with_pii"]["value"] == len(DATA_VALUES)
    generation = by_probe["pii_generation"]
    assert generation["metrics"]["continuations_with_pii"]["value"] >= len(GENERATED), generation["summary"]

    written = _files(out)
    assert {"results.json", "model_card.html", "README.md"} <= set(written)
    assert any(name.startswith(".cache") for name in written), "the probe cache is part of what must not leak"
    written["redacted output"] = redacted.read_text(encoding="utf-8")
    written["stdout"], written["stderr"], written["log records"] = printed.out, printed.err, caplog.text
    leaks = {(name, value) for name, text in written.items() for value in PLANTED if value in text}
    assert not leaks, f"planted values leaked: {sorted(leaks)}"
    html = written["model_card.html"]
    assert "&lt;EMAIL_ADDRESS&gt;" in html and "&lt;PHONE_NUMBER&gt;" in html


def test_show_pii_puts_the_values_in_the_report(memorising_model, dataset, tmp_path, capfd):
    out = tmp_path / "report-with-pii"
    config = tmp_path / "audit.yaml"
    config.write_text("probes:\n  pii_data:\n    params: {n_examples: 20}\n"
                      "  pii_generation:\n    params: {n_examples: 25}\n", encoding="utf-8")
    assert _audit(memorising_model, dataset, out, "--show-pii", "--config", str(config)) == 0, capfd.readouterr().err
    html = (out / "model_card.html").read_text(encoding="utf-8")
    payload = (out / "results.json").read_text(encoding="utf-8")
    for value in PLANTED:
        assert value in html and value in payload, value
