"""PIIRedactor, redact_file and the ``rai-audit redact`` / ``scan-pii`` commands."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from audit.cli import main
from audit.errors import ConfigError, OutputError
from privacy import redact as redact_module
from privacy.redact import BAD_KEY, MISSING_KEY, PIIRedactor, redact_file

EMAILS = ["zelda.quimby@example.org", "amos.tran@example.net", "ines.okafor@example.com"]
CARD = "4111 1111 1111 1111"
KEY = "0123456789abcdef"  # 16 bytes: AES-128


def redactor(**kwargs) -> PIIRedactor:
    return PIIRedactor(entities=["EMAIL_ADDRESS", "CREDIT_CARD"], engine="pattern", **kwargs)


def table() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [1, 2, 3, 4],
        "text": [f"mail {EMAILS[0]} today", "nothing, here", f"card {CARD}", f"{EMAILS[1]} and {EMAILS[2]}"],
        "zip": ["02139", "00501", "10001", "94103"],  # leading zeros must survive
        "score": [0.5, 1.25, 3.0, -2.0],
        "notes": [f"cc {EMAILS[2]}", "", "plain", "x"],
    })


# -- the transformer ------------------------------------------------------------------------
def test_operators_do_what_presidio_documents():
    texts = [f"mail {EMAILS[0]} now", None, 42, "no personal data"]
    assert redactor().transform(texts) == ["mail <EMAIL_ADDRESS> now", None, 42, "no personal data"]
    assert redactor(operator="mask").transform(texts[:1]) == ["mail " + "*" * len(EMAILS[0]) + " now"]
    assert redactor(operator="redact").transform(texts[:1]) == ["mail  now"]
    assert redactor(operator="replace", operator_params={"new_value": "[gone]"}).transform(texts[:1]) == ["mail [gone] now"]
    salt = "pepper-and-salt-16"
    [hashed] = redactor(operator="hash", operator_params={"salt": salt}).transform(texts[:1])
    assert hashed == f"mail {hashlib.sha256(EMAILS[0].encode() + salt.encode()).hexdigest()} now"
    # without a salt each value gets a random one: equal values no longer link
    a, b = redactor(operator="hash").transform([EMAILS[0], EMAILS[0]])
    assert a != b and len(a) == 64


def test_encrypt_round_trips_through_presidio_decrypt():
    from presidio_anonymizer import DeanonymizeEngine
    from presidio_anonymizer.entities import OperatorConfig, OperatorResult

    [encrypted] = redactor(operator="encrypt", key=KEY).transform([f"mail {EMAILS[0]} now"])
    assert EMAILS[0] not in encrypted and encrypted.startswith("mail ") and encrypted.endswith(" now")
    start, end = len("mail "), len(encrypted) - len(" now")
    restored = DeanonymizeEngine().deanonymize(
        encrypted, [OperatorResult(start=start, end=end, entity_type="EMAIL_ADDRESS")],
        {"DEFAULT": OperatorConfig("decrypt", {"key": KEY})},
    )
    assert restored.text == f"mail {EMAILS[0]} now"


def test_bad_operator_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"Unknown redaction operator 'scramble'. Use one of \['replace'"):
        redactor(operator="scramble").fit()
    with pytest.raises(ConfigError) as missing:
        redactor(operator="encrypt").fit()
    assert str(missing.value) == MISSING_KEY.format(env="RAI_AUDIT_REDACT_KEY")
    with pytest.raises(ConfigError) as short:
        redactor(operator="encrypt", key="short-key").fit()
    assert str(short.value) == BAD_KEY.format(n=9) and "short-key" not in str(short.value)
    with pytest.raises(ConfigError, match="a key is used only by 'encrypt'"):
        redactor(operator="mask", key=KEY).fit()
    with pytest.raises(ConfigError, match="Operator 'hash' rejected its parameters"):
        redactor(operator="hash", operator_params={"salt": "short"}).fit()
    assert KEY not in repr(redactor(operator="encrypt", key=KEY)) and "key='***'" in repr(redactor(operator="encrypt", key=KEY))


# -- files ----------------------------------------------------------------------------------
def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_redaction_keeps_other_columns_and_order(tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table().to_csv(src, index=False)
    summary = redact_file(src, out, columns=["text", "notes"], redactor=redactor(), chunk_size=3)
    before, after = _read_csv_rows(src), _read_csv_rows(out)
    assert [r["id"] for r in after] == ["1", "2", "3", "4"] and list(after[0]) == list(before[0])
    for b, a in zip(before, after, strict=True):
        assert {k: a[k] for k in ("id", "zip", "score")} == {k: b[k] for k in ("id", "zip", "score")}
    assert [r["text"] for r in after] == ["mail <EMAIL_ADDRESS> today", "nothing, here", "card <CREDIT_CARD>",
                                          "<EMAIL_ADDRESS> and <EMAIL_ADDRESS>"]
    assert [r["notes"] for r in after] == ["cc <EMAIL_ADDRESS>", "", "plain", "x"]
    assert summary.rows == 4 and summary.entity_counts == {"EMAIL_ADDRESS": 4, "CREDIT_CARD": 1}
    assert summary.columns == {"text": {"values": 4, "changed": 3, "not_text": 0},
                               "notes": {"values": 4, "changed": 1, "not_text": 0}}
    text = summary.format_text() + out.read_text(encoding="utf-8")
    assert not [v for v in [*EMAILS, CARD] if v in text]


def test_jsonl_parquet_and_saved_dataset_keep_types_and_schema(tmp_path):
    import datasets
    import pyarrow.parquet as pq

    records = [{"id": 1, "text": f"mail {EMAILS[0]}", "tags": ["a", "b"], "score": None},
               {"text": "no pii", "id": 2, "score": 2.5},
               {"id": 3, "score": 1, "tags": []}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    redact_file(src, tmp_path / "out.jsonl", columns=["text"], redactor=redactor())
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = [dict(r) for r in records]
    expected[0]["text"] = "mail <EMAIL_ADDRESS>"
    assert out == expected and [list(r) for r in out] == [list(r) for r in records]

    frame = table()
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    summary = redact_file(tmp_path / "in.parquet", tmp_path / "out.parquet", columns=["text"], redactor=redactor())
    assert pq.read_schema(tmp_path / "out.parquet") == pq.read_schema(tmp_path / "in.parquet")
    got = pd.read_parquet(tmp_path / "out.parquet")
    pd.testing.assert_frame_equal(got.drop(columns="text"), frame.drop(columns="text"))
    assert got["text"].tolist()[2] == "card <CREDIT_CARD>" and summary.values_changed == 3

    datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(tmp_path / "hf_in"))
    redact_file(tmp_path / "hf_in", tmp_path / "hf_out", columns=["notes", "text"], redactor=redactor())
    loaded = datasets.load_from_disk(str(tmp_path / "hf_out")).to_pandas()
    pd.testing.assert_frame_equal(loaded[["id", "zip", "score"]], frame[["id", "zip", "score"]])
    assert loaded["notes"].tolist()[0] == "cc <EMAIL_ADDRESS>"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging files left behind"


def test_output_is_refused_or_replaced_atomically(tmp_path, monkeypatch):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table().to_csv(src, index=False)
    out.write_text("previous result\n", encoding="utf-8")
    with pytest.raises(OutputError, match=r"already exists\. Pass --overwrite"):
        redact_file(src, out, columns=["text"], redactor=redactor())
    with pytest.raises(OutputError, match="must have the input's format"):
        redact_file(src, tmp_path / "out.parquet", columns=["text"], redactor=redactor())
    calls = {"n": 0}
    real = PIIRedactor.redact

    def failing(self, texts):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(self, texts)

    monkeypatch.setattr(PIIRedactor, "redact", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        redact_file(src, out, columns=["text"], redactor=redactor(), overwrite=True, chunk_size=2)
    assert out.read_text(encoding="utf-8") == "previous result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]
    monkeypatch.setattr(PIIRedactor, "redact", real)
    redact_file(src, out, columns=["text"], redactor=redactor(), overwrite=True)
    assert "<EMAIL_ADDRESS>" in out.read_text(encoding="utf-8")


# -- the commands ---------------------------------------------------------------------------
def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors exit from inside the parser
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_redact_command_writes_output_and_a_summary_without_values(tmp_path, capsys):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table().to_csv(src, index=False)
    code, stdout, stderr = _cli(["redact", str(src), "--out", str(out), "--columns", "text", "notes",
                                 "--operator", "mask", "--engine", "pattern", "--entities", "EMAIL_ADDRESS",
                                 "CREDIT_CARD", "--no-progress"], capsys)
    assert code == 0, stderr
    assert "Redacted 4 value(s) in column(s) text, notes" in stdout and "EMAIL_ADDRESS 4" in stdout
    assert not [v for v in [*EMAILS, CARD] if v in stdout + stderr + out.read_text(encoding="utf-8")]
    code, stdout, _ = _cli(["redact", str(src), "--out", str(tmp_path / "enc.csv"), "--columns", "text",
                            "--operator", "encrypt", "--key", KEY, "--engine", "pattern", "--no-progress"], capsys)
    assert code == 0 and KEY not in stdout


@pytest.mark.parametrize(("case", "expected"), [
    ("missing column", "Column(s) ['body'] are not in"),
    ("unknown entity", "Unknown entity type(s) ['E_MAIL']"),
    ("unknown operator", "argument --operator: invalid choice: 'shred'"),
    ("encrypt without key", "The encrypt operator needs a key"),
    ("short key", "The encrypt key must be 16, 24 or 32 bytes"),
    ("empty file", "is empty"),
    ("not utf-8", "is not valid UTF-8"),
    ("output exists", "already exists. Pass --overwrite"),
])
def test_redact_command_bad_input_is_one_stderr_line_and_exit_2(case, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(redact_module.KEY_ENV, raising=False)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table().to_csv(src, index=False)
    args = ["redact", str(src), "--out", str(out), "--columns", "text", "--engine", "pattern", "--no-progress"]
    if case == "missing column":
        args[5] = "body"
    elif case == "unknown entity":
        args += ["--entities", "E_MAIL"]
    elif case == "unknown operator":
        args += ["--operator", "shred"]
    elif case == "encrypt without key":
        args += ["--operator", "encrypt"]
    elif case == "short key":
        args += ["--operator", "encrypt", "--key", "abc"]
    elif case == "empty file":
        src.write_bytes(b"")
    elif case == "not utf-8":
        src.write_bytes("text\nJos\xe9 Garc\xeda\n".encode("latin-1"))
    elif case == "output exists":
        out.write_text("keep me\n", encoding="utf-8")
    code, stdout, stderr = _cli(args, capsys)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("rai-audit: error: ") and expected in stderr, stderr
    assert out.exists() == (case == "output exists")
    if case == "output exists":
        assert out.read_text(encoding="utf-8") == "keep me\n"


def test_scan_pii_command_exit_code_and_json(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    table().to_json(src, orient="records", lines=True)
    report = tmp_path / "scan.json"
    code, stdout, _ = _cli(["scan-pii", str(src), "--columns", "text", "notes", "--engine", "pattern",
                            "--entities", "EMAIL_ADDRESS", "--json-file", str(report), "--examples", "2", "--no-progress"], capsys)
    assert code == 1 and "Personal data found in 3 value(s) (2 row(s))" in stdout
    saved = json.loads(report.read_text(encoding="utf-8"))
    assert saved["entity_counts"] == {"EMAIL_ADDRESS": 4} and saved["rows"] == 4
    code, printed, _ = _cli(["scan-pii", str(src), "--columns", "text", "notes", "--engine", "pattern",
                             "--entities", "EMAIL_ADDRESS", "--json", "--examples", "2", "--no-progress"], capsys)
    assert code == 1 and {k: v for k, v in json.loads(printed).items() if k != "duration_s"} == \
        {k: v for k, v in saved.items() if k != "duration_s"}  # --json: the same summary on stdout, as in run
    assert not [e for e in EMAILS if e in stdout or e in report.read_text(encoding="utf-8")]
    clean = tmp_path / "clean.csv"
    clean.write_text("text\nhello\nworld\n", encoding="utf-8")
    code, stdout, _ = _cli(["scan-pii", str(clean), "--columns", "text", "--engine", "pattern", "--no-progress"], capsys)
    assert code == 0 and "Personal data found in 0 value(s)" in stdout
