"""No verbatim text from the user's dataset in any artefact unless the user asks for it.

Twenty distinctive values (names in no word list, e-mail addresses, phone and card numbers,
street addresses) are planted in the text column of a dataset. Every registered probe runs
through the CLI on a tiny classifier whose tokenizer holds those words as whole tokens, and on a
tiny causal LM with a byte-level tokenizer; then every file under the output directory (the
cache included), the JUnit XML, stdout and stderr are searched for each value and its words.
Without a flag none may appear; with ``--show-examples`` (and with ``--show-pii``) some must,
so the search itself is shown to find them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from audit.masking import BASE_WORDS, TextMasker, mask_text, mask_tokens, scrub
from tests.tiny import SPECIAL, make_tiny_model, word_vocab

REPO = Path(__file__).resolve().parents[1]

NAMES = ["Zebulon Quargh", "Thaddeus Vornkrist", "Ottoline Brasswick", "Ignatius Pelloquin",
         "Wilhelmina Quenbury", "Fenwick Draxmoor", "Perpetua Ollivane", "Casimir Throckden"]
EMAILS = ["zebulon.quargh@fernwoodpost.test", "t.vornkrist@halcyonmail.test", "ottoline@brasswickhall.test",
          "pelloquin77@quillbox.test"]
PHONES = ["+44 20 7946 0958", "(415) 555-0142", "+1-202-555-0187"]
CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004"]
ADDRESSES = ["742 Evergreen Terrace", "1600 Quillfeather Lane", "88 Wrenhollow Crescent"]
PLANTED = [*NAMES, *EMAILS, *PHONES, *CARDS, *ADDRESSES]
assert len(PLANTED) == 20

TEMPLATES = [
    ("She said {} was a great doctor.", "female", 1),
    ("He told us that {} is a terrible engineer.", "male", 0),
    ("Her brother wrote to {} about the job.", "female", 1),
    ("His mother called {} very late.", "male", 0),
    ("She met {} at the office and was happy.", "female", 1),
]


def needles(value: str) -> list[str]:
    """What must not appear: the value, its letters-only words of 5+ characters, its digits joined."""
    words = [w for w in re.findall(r"[A-Za-z]+", value) if len(w) >= 5]
    digits = "".join(re.findall(r"\d", value))
    return [value, *words, *([digits] if len(digits) >= 10 else [])]


def test_planted_words_are_in_no_allow_list():
    """Otherwise the allow-list would show them by design and the test below would prove nothing."""
    from probes.display import known_words

    allowed = known_words()
    words = {w.lower() for v in PLANTED for w in needles(v)[1:] if w.isalpha()}
    assert words and not words & allowed


# Counterfactual pairs made from the data's rows (so the worst pairs shown are rows); membership
# inference reads a true/false column of the data; fewer resamples where they only cost time.
CONFIG = """
probes:
  counterfactual:
    params:
      source: data
  membership_inference:
    params:
      member_column: member
  seat:
    params: {n_samples: 1000, n_boot: 200}
  faithfulness:
    params: {max_examples: 8, n_random: 2, n_steps: 16}
  generation:
    params: {max_prompts_per_group: 8}
"""


def write_dataset(path: Path) -> Path:
    rows = []
    for i, value in enumerate(PLANTED * 2):
        template, group, label = TEMPLATES[i % len(TEMPLATES)]
        rows.append({"text": template.format(value), "label": label, "gender": group, "member": i % 2 == 0})
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label", "gender", "member"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_classifier(directory: Path) -> Path:
    """A tiny BERT classifier whose vocabulary has every planted word as a whole token."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    make_tiny_model("sequence-classification", directory)  # for the config's shape; replaced below
    extra = sorted({w.lower() for v in PLANTED for w in re.findall(r"[A-Za-z]+|\d+", v)} - set(word_vocab()))
    vocab = [*word_vocab(), *extra, "@", "-", "(", ")", "+"]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(directory)
    import torch

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2)
    BertForSequenceClassification(config).eval().save_pretrained(directory, safe_serialization=True)
    assert SPECIAL[1] not in BertTokenizer.from_pretrained(directory).tokenize(NAMES[0])
    return directory


@pytest.fixture(scope="module")
def leak_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("leak")
    config = root / "audit.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    return {"data": write_dataset(root / "data.csv"), "clf": make_classifier(root / "clf"), "config": config,
            "lm": make_tiny_model("causal-lm", root / "lm"), "root": root}


def run_cli(setup: dict[str, Path], model: str, name: str, *flags: str) -> tuple[Path, str]:
    """Run every probe through the CLI; returns the output directory and stdout + stderr + JUnit."""
    out = setup["root"] / name
    junit = setup["root"] / f"{name}.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "audit.cli", "run", "--model", str(setup[model]), "--data", str(setup["data"]),
         "--config", str(setup["config"]),
         "--sensitive-feature", "gender", "--label-column", "label", "--out", str(out), "--junit", str(junit),
         "--device", "cpu", "--no-progress", "--seed", "3", *flags],
        capture_output=True, text=True, env=env, timeout=900, cwd=setup["root"],
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    ran = {r["probe"]: r["status"] for r in results["results"]}
    assert ran, "no probe ran"
    return out, proc.stdout + "\n" + proc.stderr + "\n" + junit.read_text(encoding="utf-8")


def found(out: Path, captured: str) -> dict[str, list[str]]:
    """Each planted value whose value or words appear somewhere, with where."""
    blobs = {"stdout/stderr/junit": captured}
    for path in out.rglob("*"):
        if path.is_file():
            blobs[str(path.relative_to(out))] = path.read_text(encoding="utf-8", errors="replace")
    lowered = {where: text.lower() for where, text in blobs.items()}
    hits: dict[str, list[str]] = {}
    for value in PLANTED:
        for needle in needles(value):
            where = [w for w, text in lowered.items() if needle.lower() in text]
            if where:
                hits.setdefault(value, []).extend(f"{needle!r} in {w}" for w in where)
    return hits


@pytest.mark.slow
@pytest.mark.parametrize("model", ["clf", "lm"])
def test_no_planted_value_in_any_artefact(leak_setup: dict[str, Path], model: str):
    out, captured = run_cli(leak_setup, model, f"{model}-default")
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    statuses = {r["probe"]: r["status"] for r in results["results"]}
    # The probes that show rows of the data must actually have run, or the test proves nothing.
    for probe in ("attribution", "attention", "decision_path", "pii_data", "counterfactual"):
        assert statuses.get(probe) not in (None, "errored", "skipped"), (probe, statuses)
    assert list(out.glob(".cache/*.json")), "the cache was not written"
    assert found(out, captured) == {}
    if model == "clf":  # a second run, served from the cache, leaks nothing either
        out, captured = run_cli(leak_setup, model, f"{model}-default")
        assert found(out, captured) == {}


@pytest.mark.slow
def test_planted_values_appear_when_asked(leak_setup: dict[str, Path]):
    out, captured = run_cli(leak_setup, "clf", "clf-show-examples", "--show-examples")
    hits = found(out, captured)
    assert len(hits) >= 3, hits


@pytest.mark.parametrize(("show_examples", "show_pii", "reveal"),
                         [(False, False, False), (True, False, True), (False, True, True)])
def test_either_flag_reveals_rows_to_the_probes(show_examples: bool, show_pii: bool, reveal: bool):
    from audit.context import AuditContext
    from probes.display import data_masker

    context = AuditContext(show_examples=show_examples, show_pii=show_pii)
    assert context.reveal_data is reveal
    assert (data_masker(context) is None) is reveal


# -- the masker itself ---------------------------------------------------------------------------
def test_mask_text_keeps_only_allowed_words_and_entity_types():
    text = "She said Zebulon Quargh lives at 742 Evergreen Terrace; mail zq@fernwoodpost.test"
    masked = mask_text(text, allowed=BASE_WORDS | {"said", "lives"}, entities=[(9, 23, "PERSON")])
    assert masked == "She said <PERSON> lives at <NUMBER> <WORD> <WORD>; <WORD> <EMAIL>"


def test_mask_text_masks_what_the_detector_missed():
    masked = TextMasker(allowed={"met"}).text("Ottoline met Casimir Throckden")
    assert masked == "<WORD> met <WORD> <WORD>"


def test_mask_tokens_keeps_one_token_per_score():
    text = "john quargh"
    tokens = ["[CLS]", "john", "qu", "##argh", "[SEP]"]
    spans = [(0, 0), (0, 4), (5, 7), (7, 11), (0, 0)]
    masked = mask_tokens(text, tokens, spans, [True, False, False, False, True], allowed={"john"})
    assert masked == ["[CLS]", "john", "<WORD>", "<WORD>", "[SEP]"]
    no_offsets = mask_tokens(text, tokens, [(0, 0)] * 5, [True, False, False, False, True], allowed={"john"})
    assert no_offsets == ["[CLS]", "john", "<WORD>", "<WORD>", "[SEP]"]


def test_scrub_masks_only_words_shared_with_the_data():
    message = "ValueError: could not parse 'Zebulon Quargh called 555 0142 7788'"
    assert scrub(message, {"zebulon", "quargh"}) == "ValueError: could not parse '<WORD> <WORD> called <NUMBER>'"


def test_error_quoting_a_row_is_scrubbed(tiny_targets):
    """An exception that quotes a row reaches results.json only scrubbed."""
    import pandas as pd

    from audit.config import AuditConfig
    from audit.data import AuditDataset
    from audit.probe import Probe
    from audit.runner import Auditor

    class Quoting(Probe):
        name = "quoting"
        kinds = frozenset({"sequence-classification"})

        def run(self, target, context):
            raise ValueError(f"cannot read {context.data.texts[0]!r}")

    data = AuditDataset(frame=pd.DataFrame({"text": ["Zebulon Quargh wrote this"]}), text_column="text")
    target = tiny_targets["sequence-classification"]
    for reveal, expect in ((False, False), (True, True)):
        config = AuditConfig(show_examples=reveal, cache=False)
        result = Auditor(config, probes=[Quoting()]).run(target, data=data).results[0]
        dumped = json.dumps(result.model_dump(mode="json"))
        assert result.status == "errored"
        assert ("Quargh" in dumped) is expect, dumped


def test_cache_key_depends_on_show_examples(tmp_path: Path, tiny_targets):
    """A masked result cached by a default run is never served to a --show-examples run (or back)."""
    from audit.config import AuditConfig
    from audit.context import AuditContext
    from audit.runner import Auditor
    from probes.attribution import AttributionProbe

    auditor = Auditor(AuditConfig(), cache_dir=tmp_path)
    probe = AttributionProbe()
    paths = {flag: auditor._cache_path(probe, tiny_targets["sequence-classification"], AuditContext(show_examples=flag))
             for flag in (False, True)}
    assert paths[False] != paths[True]


def test_pii_redacted_example_masks_what_the_detector_missed():
    """pii_data's "redacted" text used to show every word Presidio did not flag, names included."""
    from privacy.pii import Detection, redacted_example

    text = "Zebulon Quargh wrote to jo@example.com"
    example = redacted_example(text, [Detection("EMAIL_ADDRESS", 24, 38, 1.0)])
    assert example["text (redacted)"] == "<WORD> <WORD> <WORD> to <EMAIL_ADDRESS>"
    shown = redacted_example(text, [Detection("EMAIL_ADDRESS", 24, 38, 1.0)], show_pii=True)
    assert "Zebulon Quargh" in shown["text (raw, --show-pii)"]
