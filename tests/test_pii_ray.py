"""Ray Data scanning and redaction against the local scanner, on a local Ray started here."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from privacy.pii import PIIScanner
from privacy.redact import PIIRedactor, redact_file

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

SETTINGS = {"engine": "pattern", "entities": ["EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "URL"]}


@pytest.fixture(scope="module")
def cluster():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=2, log_to_driver=False,
             configure_logging=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _rows(n: int) -> pd.DataFrame:
    cards = ["4111 1111 1111 1111", "5500 0000 0000 0004"]
    text = [f"row {i}: mail user{i}@example.org" if i % 3 == 0 else
            f"row {i}: card {cards[i % 2]}" if i % 3 == 1 else ("" if i % 10 == 2 else f"row {i} nothing") for i in range(n)]
    notes = [None if i % 7 == 0 else f"iban DE89 3704 0044 0532 0130 00 at {i}" if i % 5 == 0 else "ok" for i in range(n)]
    return pd.DataFrame({"id": range(n), "text": text, "notes": notes})


@pytest.mark.slow
def test_ray_scan_and_redaction_equal_the_local_ones(cluster, tmp_path):
    from privacy.pii_ray import ray_redact, ray_scan

    src = tmp_path / "rows.jsonl"
    frame = _rows(1_000)
    frame.to_json(src, orient="records", lines=True)
    local = PIIScanner(progress=False, **SETTINGS).scan_table(src, columns=["text", "notes"], n_examples=0)
    detections = tmp_path / "detections"
    remote = ray_scan(src, columns=["text", "notes"], scanner=PIIScanner(progress=False, **SETTINGS), address=cluster,
                      batch_size=128, detections_out=detections, fmt="jsonl")
    written = pd.concat([pd.read_json(f, lines=True, dtype=False) for f in sorted(detections.glob("part-*.jsonl"))])
    assert written["row"].tolist() == list(range(1_000))
    analyzer = PIIScanner(progress=False, **SETTINGS)
    for column in ("text", "notes"):
        expected = [json.loads(json.dumps([[d.entity_type, d.start, d.end, d.score] for d in f])) if isinstance(v, str)
                    and v.strip() else None for v, f in zip(frame[column], analyzer.analyze(frame[column]), strict=True)]
        got = [None if c is None or (isinstance(c, float) and pd.isna(c)) else json.loads(c) for c in written[column]]
        assert got == expected
    assert not any("example.org" in f.read_text() for f in detections.iterdir())
    drop = {"duration_s"}
    assert {k: v for k, v in remote.to_dict().items() if k not in drop} == \
        {k: v for k, v in local.to_dict().items() if k not in drop}
    assert local.entity_counts["EMAIL_ADDRESS"] == 334

    out = tmp_path / "redacted"
    summary = ray_redact(src, out, columns=["text", "notes"], redactor=PIIRedactor(**SETTINGS), address=cluster,
                         fmt="parquet", batch_size=128)
    redact_file(src, tmp_path / "local.jsonl", columns=["text", "notes"], redactor=PIIRedactor(**SETTINGS))
    expected = pd.read_json(tmp_path / "local.jsonl", lines=True)
    files = sorted(out.glob("*.parquet"))
    got = pd.concat([pd.read_parquet(f) for f in files]).sort_values("id").reset_index(drop=True)
    assert got["text"].tolist() == expected["text"].tolist()
    assert [None if pd.isna(v) else v for v in got["notes"]] == [None if pd.isna(v) else v for v in expected["notes"]]
    assert summary.entity_counts == local.entity_counts and summary.rows == 1_000
    assert not any("example.org" in v for v in got["text"])


@pytest.mark.slow
def test_cli_scan_with_ray_address_equals_the_local_scan(cluster, tmp_path, capsys):
    from audit.cli import main

    src = tmp_path / "rows.csv"
    _rows(200).to_csv(src, index=False)
    argv = ["scan-pii", str(src), "--columns", "text", "notes", "--engine", "pattern", "--entities",
            *SETTINGS["entities"], "--no-progress"]
    local, remote = tmp_path / "local.json", tmp_path / "remote.json"
    assert main([*argv, "--json-file", str(local)]) == 1
    assert main([*argv, "--json-file", str(remote), "--ray-address", cluster]) == 1
    read = [{k: v for k, v in __import__("json").loads(f.read_text()).items() if k != "duration_s"} for f in (local, remote)]
    assert read[0] == read[1]
    assert main([*argv, "--ray-address", cluster, "--examples", "2"]) == 2
    assert "Example rows are not collected on a Ray cluster" in capsys.readouterr().err
    assert main([*argv, "--ray-address", "10.9.9.9:6379"]) == 2
    assert "already connected to the Ray cluster" in capsys.readouterr().err
