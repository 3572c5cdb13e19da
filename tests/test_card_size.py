"""Report sizes (issue 19): the demo card under 300 KB, a full audit's card under 1 MB, and a short print.

Both audits are the ones ``benchmarks/bench_card_size.py`` reports in RESULTS.md.
"""

from __future__ import annotations

import pytest

from benchmarks.bench_card_size import (
    DEMO_LIMIT,
    FULL_LIMIT,
    chromium,
    demo_audit,
    figure_bytes,
    full_classifier_audit,
    printed_pages,
    sizes,
)


@pytest.mark.slow
def test_demo_card_is_under_300_kb(tmp_path):
    """Regression: 1.0 MB, 96% of it base64 SVG with every glyph a path and one image per attention head."""
    report = demo_audit(tmp_path / "demo")
    size = sizes(report)
    html = (report / "model_card.html").read_text(encoding="utf-8")
    assert size["model_card.html"] < DEMO_LIMIT, size
    assert html.count("<figure>") >= 4  # the attention heatmaps and SEAT's chart are still there
    assert figure_bytes(html) < 0.8 * size["model_card.html"]


@pytest.mark.slow
def test_full_classifier_card_is_under_1_mb_and_prints_short(tmp_path):
    report = full_classifier_audit(tmp_path)
    size = sizes(report)
    assert size["model_card.html"] < FULL_LIMIT, size
    if chromium() is not None:
        pages = printed_pages(report / "model_card.html")
        assert pages is not None and pages <= 30, pages  # was 111 A4 pages with the fixed-layout print CSS
