"""Sizes of the written reports, and the printed card's page count: the demo audit and a full audit.

The demo audit is ``rai-audit run`` with no arguments (the bundled all-MiniLM-L6-v2 and every
probe that applies to it); the full audit is a tiny random BERT classifier with a labelled
dataset and a sensitive feature, so every classifier probe runs. Sizes and pages are not timings:
this section is written whatever the machine's load. Pages are counted in the PDF headless
Chromium prints (A4, default margins), when Chromium is installed.
Run: ``.venv/bin/python benchmarks/bench_card_size.py`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "MPLBACKEND": "Agg"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEMO_LIMIT = 300 * 1024  # bytes of model_card.html, issue 19's targets
FULL_LIMIT = 1024 * 1024
FILES = ("model_card.html", "README.md", "results.json")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


def demo_audit(out: Path) -> Path:
    """``rai-audit run --out OUT``: the bundled model, every applicable probe."""
    from audit.cli import main

    code = main(["run", "--out", str(out), "--no-progress", "--no-cache", "--quiet"])
    if code not in (0, 1):
        raise SystemExit(f"the demo audit exited {code}")
    return out


def full_classifier_audit(root: Path) -> Path:
    """Every classifier probe on a tiny random BERT classifier with 80 labelled rows and a sensitive feature."""
    from audit.cli import main
    from tests.tiny import make_tiny_model

    model = make_tiny_model("sequence-classification", root / "clf")
    rows = [{"text": f"{who} {verb} the {thing}.", "label": i % 2, "gender": ("female", "male")[i % 2]}
            for i, (who, verb, thing) in enumerate(
                (w, v, t) for w in ("She", "He", "Mary", "John") for v in ("liked", "hated", "read", "wrote")
                for t in ("book", "film", "report", "song", "poem"))]
    data = root / "eval.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = root / "report"
    code = main(["run", "--model", str(model), "--data", str(data), "--label-column", "label",
                 "--sensitive-feature", "gender", "--allow-new-weights", "--out", str(out), "--no-progress",
                 "--no-cache", "--quiet"])
    if code not in (0, 1):
        raise SystemExit(f"the classifier audit exited {code}")
    return out


def sizes(report: Path) -> dict[str, int]:
    return {name: (report / name).stat().st_size for name in FILES}


def figure_bytes(html: str) -> int:
    return sum(len(m) for m in re.findall(r'src="(data:image/[^"]*)"', html))


def printed_pages(card: Path) -> int | None:
    """Pages of the card printed to PDF by headless Chromium (A4), or None without Chromium."""
    browser = chromium()
    if browser is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        pdf = Path(tmp) / "card.pdf"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                        f"--print-to-pdf={pdf}", card.resolve().as_uri()], capture_output=True, timeout=180, check=False)
        if not pdf.exists():
            return None
        return len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))


def _kib(n: int) -> str:
    return f"{n / 1024:,.0f} KiB"


def main() -> None:
    from benchmarks._results import load_record, write_section

    rows = []
    with tempfile.TemporaryDirectory() as tmp, load_record() as load:
        for label, limit, report in (
                ("demo audit (`rai-audit run`: bundled MiniLM, every applicable probe)", DEMO_LIMIT,
                 demo_audit(Path(tmp) / "demo")),
                ("full audit of a tiny BERT classifier (every classifier probe, 80 labelled rows)", FULL_LIMIT,
                 full_classifier_audit(Path(tmp) / "clf"))):
            size = sizes(report)
            html = (report / "model_card.html").read_text(encoding="utf-8")
            pages = printed_pages(report / "model_card.html")
            verdict = "met" if size["model_card.html"] < limit else "NOT met"
            rows.append(f"| {label} | {_kib(size['model_card.html'])} (aim: under {_kib(limit)}, {verdict}) | "
                        f"{_kib(figure_bytes(html))} | {_kib(size['README.md'])} | {_kib(size['results.json'])} | "
                        f"{'n/a (no Chromium)' if pages is None else pages} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        "## Report sizes and printed pages (`bench_card_size.py`)",
        "",
        "Figures are compact SVG (text as text, two-decimal geometry, heatmaps as one palette PNG per figure with a "
        "colour bar) inside the card as `data:` URIs. Pages: the HTML card printed to A4 by headless Chromium.",
        "",
        "| audit | model_card.html | of which figures | README.md | results.json | printed pages |",
        "|---|---|---|---|---|---|",
        *rows,
    ])
    write_section("card-sizes", body, load=load, timings=False)
    print(body)


if __name__ == "__main__":
    main()
