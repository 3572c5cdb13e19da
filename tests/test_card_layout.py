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
    write_reports(results.model_copy(update={"results": [long]}), root / "report")
    return (root / "report" / "model_card.html").read_text()


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
