"""The HTML card laid out by headless Chromium: on a phone the summary and gates keep every column on
screen, and on paper no table cell lies off the page.

Print is checked by applying the card's own ``@media print`` rules as screen rules at an A4 text
width (Chromium's command line cannot switch the media type); skipped where Chromium is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from audit import AuditConfig, Auditor, load_target
from reports import write_reports
from tests.tiny import make_tiny_model

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")

# Reports the cells whose right edge lies beyond the viewport, into the DOM that --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  if (%(print)s) {
    for (const sheet of document.styleSheets) for (const rule of sheet.cssRules)
      if (rule.media && rule.media.mediaText === "print")
        for (const inner of rule.cssRules) sheet.insertRule(inner.cssText, sheet.cssRules.length);
  }
  const width = document.documentElement.clientWidth;
  const off = [...document.querySelectorAll(%(cells)s)].filter(c => c.getBoundingClientRect().right > width + 1)
    .map(c => (c.getAttribute("data-label") || c.textContent).trim().slice(0, 40));
  parent.postMessage("OFF-PAGE:" + JSON.stringify(off) + ":WIDTH:" + width, "*");
});
</script>"""
# Headless Chromium's window is at least 500 px wide: the card is laid out in a frame of the wanted width.
FRAME = """<html><body style="margin:0"><iframe src="%(src)s" width="%(width)d" height="900" style="border:0"></iframe>
<script>window.addEventListener("message", e => {
  const out = document.createElement("pre"); out.textContent = e.data; document.body.appendChild(out); });</script>
</body></html>"""


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    model = make_tiny_model("encoder", root / "model")
    config = AuditConfig(select=["seat"], probes={"seat": {
        "params": {"tests": ["weat6", "weat7"], "n_samples": 500, "n_boot": 100},
        "gates": {"mean_abs_effect_size": {"max": 0.0}, "max_abs_effect_size": {"tolerance": 0.1}}}})
    results = Auditor(config).run(load_target(model, progress=False))
    # a finding with a long unbreakable run (a file path, a token list), as real cards have
    long = results.results[0].model_copy(update={"summary": "see " + "/very/long/path" * 12 + " for the word lists"})
    write_reports(results.model_copy(update={"results": [long, _wide_probe()]}), root / "report")
    return (root / "report" / "model_card.html").read_text()


def _wide_probe():
    """A probe result with per-probe tables much wider than a phone, as the counterfactual probe writes."""
    from audit.probe import Metric, ProbeResult, Table

    columns = [f"column {i} with a long name" for i in range(14)]
    rows = [[f"group{r}", *(round(0.1234567 * (r + c), 6) for c in range(12)), "term, " * 8] for r in range(40)]
    return ProbeResult(
        probe="wide_plugin", status="warned", summary="A third-party probe with wide tables.",
        metrics={f"gap[{axis}]": Metric(value=0.1, ci=(0.05, 0.15), p_value=0.01, direction="lower_is_better",
                                        description="largest gap between any two groups on this axis, in points")
                 for axis in ("gender", "race", "age", "religion")},
        tables=[Table(title="Gaps between groups", columns=columns, rows=rows)],
        examples=[{"text": "a fairly long example sentence that the probe used " * 3, "score": 0.5, "flip": True}],
    )


# Reports the page's overflow and every element that sticks out of the viewport without being inside a
# scrolling container that itself fits.
PHONE = """<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const scroller = el => { for (let p = el.parentElement; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX; if (o === "auto" || o === "scroll") return p; } return null; };
  const off = [], scrolled = [];
  for (const el of document.body.querySelectorAll("*")) {
    const r = el.getBoundingClientRect();
    if (r.right <= width + 1) continue;
    const box = scroller(el);
    if (box && box.getBoundingClientRect().right <= width + 1) { if (el.tagName === "TABLE") scrolled.push(box.className); }
    else off.push(el.tagName + ":" + (el.textContent || "").trim().slice(0, 30));
  }
  parent.postMessage("PHONE:" + JSON.stringify({page: document.documentElement.scrollWidth, width, off, scrolled}), "*");
});
</script>"""


def _off_page(card: str, tmp_path, *, width: int, print_rules: bool, cells: str = "th, td") -> list[str]:
    page = tmp_path / f"card-{width}.html"
    page.write_text(card.replace("</body>", PROBE % {"print": "true" if print_rules else "false", "cells": json.dumps(cells)} + "</body>"))
    frame = tmp_path / f"frame-{width}.html"
    frame.write_text(FRAME % {"src": page.name, "width": width})
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", "--window-size=1000,1000", "--virtual-time-budget=8000",
                           "--dump-dom", frame.as_uri()],
                          capture_output=True, text=True, timeout=120)
    found = re.search(r"OFF-PAGE:(\[.*?\]):WIDTH:(\d+)", proc.stdout)
    assert found, f"Chromium gave no layout report: {proc.stderr[-500:]}"
    assert int(found.group(2)) <= width
    return json.loads(found.group(1))


def test_phone_layout_keeps_summary_and_gate_columns_on_screen(card, tmp_path):
    # The summary and gate tables stack their cells on a phone; the per-probe tables scroll sideways.
    assert _off_page(card, tmp_path, width=375, print_rules=False, cells="#summary td") == []


def test_print_layout_wraps_instead_of_clipping(card, tmp_path):
    # A4 at 96 dpi minus Chromium's default 1 cm margins: about 718 px of text width.
    assert _off_page(card, tmp_path, width=718, print_rules=True) == []


def _chromium_frame(page, tmp_path, width: int) -> str:
    frame = tmp_path / f"frame-{width}-{page.stem}.html"
    frame.write_text(FRAME % {"src": page.name, "width": width})
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--allow-file-access-from-files", "--window-size=1000,1000", "--virtual-time-budget=8000",
                           "--dump-dom", frame.as_uri()],
                          capture_output=True, text=True, timeout=120)
    return proc.stdout


def test_phone_wide_tables_scroll_inside_their_own_box(card, tmp_path):
    """At 375 px the page itself never scrolls sideways: a wide per-probe table scrolls in its .table-wrap."""
    import html as html_module

    page = tmp_path / "phone.html"
    page.write_text(card.replace("</body>", PHONE + "</body>"))
    found = re.search(r"PHONE:(\{.*?\})</pre>", _chromium_frame(page, tmp_path, 375), re.S)
    assert found, "Chromium gave no layout report"
    report = json.loads(html_module.unescape(found.group(1)))
    assert report["width"] <= 375
    assert report["page"] <= report["width"], f"the page scrolls sideways: {report}"
    assert report["off"] == [], report["off"]
    assert "table-wrap" in report["scrolled"], "the wide table should overflow (and scroll inside) its box"


def printed_pages(html_path) -> int:
    pdf = html_path.with_suffix(".pdf")
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-pdf-header-footer",
                    f"--print-to-pdf={pdf}", html_path.as_uri()], capture_output=True, timeout=120, check=False)
    assert pdf.exists(), "Chromium printed no PDF"
    return len(re.findall(rb"/Type\s*/Page[^s]", pdf.read_bytes()))


def test_printed_card_is_short(card, tmp_path):
    """Regression: table-layout: fixed gave every column the same width on paper, so text columns wrapped a
    few characters a line: this card printed 11 A4 pages (8 now), a full classifier audit 111 (23 now)."""
    page = tmp_path / "print.html"
    page.write_text(card)
    pages = printed_pages(page)
    assert 1 <= pages <= 9, pages
