"""Shared helper: each benchmark rewrites only its own section of benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
HEADER = ("# Benchmark results\n\nWritten by the scripts in `benchmarks/`; each rewrites only its own section. "
          "Times are ratios against a baseline measured in the same run on the same machine.\n")


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- bench:{name} start -->", f"<!-- bench:{name} end -->"
    stamp = f"_Run {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()}, {platform.python_version()}._\n"
    block = f"{start}\n{body.rstrip()}\n\n{stamp}{end}"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text, encoding="utf-8")
