"""The self-contained HTML model card (after Mitchell et al. 2019), rendered from plain results.

Python builds plain data; Jinja2 templates (``autoescape=True``) only present it. CSS is
inlined, figures are ``data:`` URIs, and nothing is loaded from anywhere: the file can be filed,
mailed and opened offline. Anything a model, dataset or plugin can influence is escaped.
"""

from __future__ import annotations

import base64
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, FunctionLoader, StrictUndefined
from markupsafe import Markup, escape

from audit._io import ensure_writable_dir, write_text_atomic, write_texts_atomic
from audit._validate import check_records
from audit.errors import OutputError
from audit.results import SCHEMA_VERSION, AuditResults
from reports.reliability import reliability_notes
from reports.sections import group_by_category

__all__ = ["render_html_card", "write_reports"]

_STATUS_ORDER = ("errored", "failed", "warned", "passed", "skipped", "not_applicable")


def _load_template(name: str) -> str | None:
    path = resources.files("reports") / "templates" / name
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value == 0:
            return "0"
        magnitude = abs(value)
        return f"{value:.3g}" if magnitude < 1e-3 or magnitude >= 1e5 else f"{value:.4g}"
    return str(value)


def _short(value: Any) -> str:
    """Two significant digits, for the value printed beside each token of a heat line."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return "0" if value == 0 else f"{value:.2g}"


def _pval(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2g}" if value < 1e-3 else f"{value:.3f}"


def _cell(value: Any) -> Markup:
    if value is None:
        return Markup('<td class="na">n/a</td>')
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Markup('<td class="num">{}</td>').format(_num(value))
    if isinstance(value, (dict, list)):
        return Markup("<td><code>{}</code></td>").format(json.dumps(value, ensure_ascii=False))
    return Markup("<td>{}</td>").format(_num(value))


def _svg_data_uri(svg: str) -> str:
    # An SVG referenced from <img> cannot run script, whatever a plugin put in it.
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _example_keys(examples: list[dict[str, Any]]) -> list[str]:
    keys: dict[str, None] = {}
    for example in examples:
        keys.update(dict.fromkeys(example))
    return list(keys)


def _text(value: str | None, key: str, inline: bool = False) -> Markup:
    if not value:
        hint = Markup('<span class="missing">Not provided: set <code>card.{}</code> in the audit config.</span>').format(key)
        return hint if inline else Markup("<p>{}</p>").format(hint)
    if inline:
        return escape(value)
    paragraphs = [p.strip() for p in str(value).split("\n\n") if p.strip()]
    return Markup("").join(Markup("<p>{}</p>").format(p) for p in paragraphs)


def _environment() -> Environment:
    env = Environment(
        loader=FunctionLoader(_load_template),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, short=_short, pval=_pval, cell=_cell, svg_data_uri=_svg_data_uri, example_keys=_example_keys)
    env.globals.update(text=_text)
    return env


def _overall(results: AuditResults) -> str:
    statuses = {r.status for r in results.results}
    if any(not g.passed for g in results.gates):
        statuses.add("failed")
    for status in _STATUS_ORDER:
        if status in statuses:
            return status
    return "passed"


def _caveats(results: AuditResults) -> list[str]:
    m = results.manifest
    notes = list(m.notes)
    for r in results.results:
        if r.status == "errored":
            notes.append(f"Probe {r.probe} errored, so the card says nothing about what it measures: {r.summary}")
        elif r.status == "skipped":
            notes.append(f"Probe {r.probe} was skipped: {r.summary}")
        elif r.status == "not_applicable":
            notes.append(f"Probe {r.probe} does not apply to this model: {r.summary}")
    if m.truncated_texts:
        notes.append(f"{m.truncated_texts} input text(s) were longer than {m.max_length} tokens and were truncated.")
    notes.append("Bias probes measure associations on specific word lists and templates; a low score on them "
                 "does not show that the model is free of bias on other groups, phrasings or tasks.")
    return notes + _dp_caveats(m.records)


def _dp_caveats(records: dict) -> list[str]:
    """What the card must say about a DP guarantee besides its own section."""
    dp = records.get("dp")
    if not isinstance(dp, dict):
        return []
    notes = []
    if dp.get("guarantee_holds") is False:
        reasons = "; ".join(str(r) for r in dp.get("void_reasons") or []) or "a step in the training chain voided it"
        notes.append(f"The differential-privacy guarantee of the training record no longer holds for this model "
                     f"(voided by {dp.get('voided_by') or 'an unknown step'}): {reasons}.")
    notes.append("The DP guarantee covers the released model, not this report: every statistic the audit computed "
                 "on its own data is an exact, non-private statistic of that data, so auditing on the DP training "
                 "rows reveals them outside the guarantee.")
    return notes


def _factors(results: AuditResults) -> list[str]:
    seen: dict[str, None] = {}
    for r in results.results:
        for table in r.tables:
            if table.title == "SEAT tests" and "targets x attributes" in table.columns:
                col = table.columns.index("targets x attributes")
                seen.update(dict.fromkeys(str(row[col]) for row in table.rows))
    if results.manifest.data and results.manifest.data.sensitive_features:
        seen.update(dict.fromkeys(f"Sensitive feature in the data: {c}" for c in results.manifest.data.sensitive_features))
    return list(seen)


def render_html_card(results: AuditResults) -> str:
    """Render the HTML model card for ``results`` as one self-contained string.

    Examples
    --------
    >>> from audit import Auditor, AuditConfig, load_target
    >>> from reports import render_html_card
    >>> res = Auditor(AuditConfig(select=["seat"], probes={"seat": {"params": {"tests": ["weat7"], "n_boot": 200}}})).run(load_target(progress=False))
    >>> html = render_html_card(res)
    >>> html.startswith("<!DOCTYPE html>") and "http://" not in html and "https://" not in html
    True
    """
    env = _environment()
    card = dict(results.card)
    card.setdefault("language", [])
    for key in ("model_name", "model_details", "developers", "license", "intended_use", "out_of_scope_use",
                "factors", "training_data", "evaluation_data", "ethical_considerations",
                "caveats_and_recommendations"):
        card.setdefault(key, None)
    partials = {r.probe: f"probes/{r.probe}.html.j2" for r in results.results
                if _load_template(f"probes/{r.probe}.html.j2") is not None}
    # A training step may ship a richer view of its record section (dp.html.j2, federated.html.j2, ...).
    record_templates = [name for name in results.manifest.records
                        if name.isidentifier() and _load_template(f"records/{name}.html.j2") is not None]
    return env.get_template("model_card.html.j2").render(
        m=results.manifest,
        results=results.results,
        gates=results.gates,
        card=card,
        model_name=card.get("model_name") or results.manifest.model_id,
        overall=_overall(results),
        verdict=results.verdict(),
        gates_not_checked=results.gates_not_checked,
        probes_not_run=results.probes_not_run,
        caveats=_caveats(results),
        factors=_factors(results),
        partials=partials,
        categories=group_by_category(results),
        record_templates=record_templates,
        reliability=reliability_notes(r.probe for r in results.results),
        schema_version=results.schema_version or SCHEMA_VERSION,
        config_json=json.dumps(results.manifest.config, indent=2, ensure_ascii=False),
    )


def write_reports(results: AuditResults, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``results.json``, ``model_card.html`` and ``README.md`` into ``out_dir``, as one set.

    Everything is rendered in memory first, then the three files are staged under temporary
    names and renamed together (:func:`audit._io.write_texts_atomic`): a full disk or any other
    failure leaves the earlier set as it was, never a new ``results.json`` beside an old card.
    If a card cannot be rendered, the finished audit is not thrown away: ``results.json`` is
    written alone (the earlier cards, which describe another audit, are removed; when the
    directory already holds these very results, nothing is touched) and a one-line
    :class:`~audit.errors.OutputError` says so and how to re-render.
    """
    from audit.target import RECORD_FILENAME
    from reports.markdown_card import EVAL_RESULTS_DIR, eval_result_files, render_markdown_card

    directory = ensure_writable_dir(out_dir)
    json_text = results.to_json() + "\n"
    files = {"results": directory / "results.json", "html": directory / "model_card.html",
             "markdown": directory / "README.md"}
    try:
        check_records(results.manifest.records,
                      source=str(Path(results.manifest.model_path) / RECORD_FILENAME))
        texts = {"html": render_html_card(results), "markdown": render_markdown_card(results)}
        eval_files = {directory / name: text for name, text in eval_result_files(results).items()}
    except Exception as exc:
        if not _same_text(files["results"], json_text):  # re-rendering the same results changes nothing
            write_text_atomic(files["results"], json_text)
            for stale in (files["html"], files["markdown"]):
                stale.unlink(missing_ok=True)
        raise OutputError(RENDER_FAILED.format(results=str(files["results"]), error=_one_line(exc))) from exc
    if eval_files:
        (directory / EVAL_RESULTS_DIR).mkdir(exist_ok=True)
    write_texts_atomic({files["results"]: json_text, files["html"]: texts["html"],
                        files["markdown"]: texts["markdown"], **eval_files})
    # Hub results of an earlier audit in this directory would be read as this model's.
    for stale in (directory / EVAL_RESULTS_DIR).glob("rai-audit-*.yaml"):
        if stale not in eval_files:
            stale.unlink()
    return files | {f"eval_results:{path.stem}": path for path in eval_files}


RENDER_FAILED = ("The audit finished but its cards could not be rendered ({error}); the results are in "
                 "{results!r} (earlier cards of other results removed). Fix the cause and re-render with "
                 "'rai-audit report {results}'.")


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
