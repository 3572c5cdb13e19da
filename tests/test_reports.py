"""The model cards: self-contained, escaped, Hub-readable, never half-written."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from audit import AuditConfig, Auditor, ErrorInfo, Figure, Metric, ProbeResult
from audit.errors import OutputError
from reports import render_html_card, render_markdown_card, write_reports
from tests.tiny import write_seat_test

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def hostile_results(tiny_targets, tmp_path_factory):
    """An audit whose test words, categories, card text and a plugin's output carry markup."""
    root = tmp_path_factory.mktemp("hostile")
    test = write_seat_test(root / "xss.jsonl", [XSS, "he", "him", "his"], ["she", "her", "hers", "woman"],
                           ["doctor", "engineer", "<img src=x onerror=alert(2)>"], ["nurse", "teacher", "family"])
    config = AuditConfig(select=["seat"], probes={"seat": {"params": {"test_files": [str(test)], "n_samples": 500, "n_boot": 100}}},
                         card={"intended_use": f"Research only. {XSS}", "model_name": f"tiny {XSS}"})
    results = Auditor(config).run(tiny_targets["encoder"])
    plugin = ProbeResult(
        probe="third_party", status="errored", summary=f"Plugin said {XSS}.",
        metrics={f"m{XSS}": Metric(value=0.5, description=XSS)},
        figures=[Figure(title=XSS, svg=f"<svg xmlns='http://www.w3.org/2000/svg'>{XSS}</svg>")],
        examples=[{"text": XSS, "score": 1.0}],
        error=ErrorInfo(type="RuntimeError", message=XSS, traceback=XSS),
    )
    return results.model_copy(update={"results": [*results.results, plugin]})


def test_html_escapes_everything(hostile_results):
    html = render_html_card(hostile_results)
    assert "<script" not in html.lower()
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_html_loads_nothing_from_anywhere(hostile_results):
    html = render_html_card(hostile_results)
    assert not re.search(r"https?://", html)
    assert "<link" not in html and "@import" not in html
    for src in re.findall(r'src="([^"]*)"', html):
        assert src.startswith("data:image/svg+xml;base64,")


def test_html_readable_on_phone_and_print(hostile_results):
    html = render_html_card(hostile_results)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "@media print" in html and "@media (max-width: 640px)" in html
    for section in ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data",
                    "Quantitative analyses", "Ethical considerations", "Caveats and recommendations"):
        assert f">{section}</h2>" in html


def test_summary_table_shows_headline_with_interval(tiny_targets):
    config = AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat6"], "n_samples": 500, "n_boot": 200}}})
    results = Auditor(config).run(tiny_targets["encoder"])
    seat = results.results[0]
    html = render_html_card(results)
    summary = html.split('id="details"')[0]
    assert "mean_abs_effect_size" in summary and seat.status in summary
    d = seat.metrics["effect_size[weat6]"]
    assert f"[{d.ci[0]:.4g}, {d.ci[1]:.4g}]" in html


def test_markdown_card_is_hub_readable_and_escaped(hostile_results):
    from huggingface_hub import ModelCard

    text = render_markdown_card(hostile_results)
    card = ModelCard(text)
    assert "rai-audit" in card.data.tags
    assert card.data.to_dict()["rai_audit"]["fingerprint"] == hostile_results.manifest.fingerprint
    assert "<script" not in text and "&lt;script&gt;" in text


def test_write_reports_is_all_or_nothing(hostile_results, tmp_path, monkeypatch):
    import reports.model_card as mc

    def broken(_results):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr("reports.markdown_card.render_markdown_card", broken)
    with pytest.raises(OutputError, match="renderer failed") as caught:
        mc.write_reports(hostile_results, tmp_path / "out")
    # The finished audit is kept, alone: no card from an earlier audit beside it, no temporary file.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["results.json"]
    assert "\n" not in str(caught.value) and isinstance(caught.value.__cause__, RuntimeError)


def test_write_reports_writes_three_files(hostile_results, tmp_path):
    paths = write_reports(hostile_results, tmp_path / "out")
    assert sorted(p.name for p in paths.values()) == ["README.md", "model_card.html", "results.json"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_card_renders_in_headless_chromium(hostile_results, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the card's static checks ran above")
    page = tmp_path / "card.html"
    page.write_text(render_html_card(hostile_results), encoding="utf-8")
    shot = tmp_path / "card.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=390,2000",
                    f"--screenshot={shot}", page.as_uri()], check=True, timeout=60, capture_output=True)
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", page.as_uri()],
                         check=True, timeout=60, capture_output=True, text=True).stdout
    assert shot.stat().st_size > 10_000
    assert "<script>alert(1)</script>" not in dom and "Audit summary" in dom


def test_analyses_are_grouped_by_category(hostile_results):
    html = render_html_card(hostile_results)
    analyses = html.split('id="analyses"')[1]
    assert analyses.index("Bias and fairness") < analyses.index('id="probe-seat"')
    assert analyses.index("Other probes") < analyses.index('id="probe-third_party"')
    markdown = render_markdown_card(hostile_results)
    assert "### Bias and fairness" in markdown and "#### seat" in markdown


def test_interval_chart_draws_an_interval_that_excludes_its_value():
    """A percentile bootstrap of few resamples can lie beside its estimate; matplotlib refuses a
    negative error bar, which made group_fairness error with n_boot=2."""
    from audit.figures import interval_bar_chart

    svg = interval_bar_chart(["a", "b"], [0.30, 0.10], [(0.35, 0.50), (0.0, 0.2)], xlabel="rate")
    assert "<svg" in svg and "</svg>" in svg
