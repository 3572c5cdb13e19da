"""The Markdown model card (``README.md``) with the YAML front matter the Hugging Face Hub reads.

Built with huggingface_hub's :class:`~huggingface_hub.ModelCard` and
:class:`~huggingface_hub.ModelCardData`, without calling the Hub. Markdown on the Hub renders
inline HTML, so every value that a model, dataset or plugin can influence is escaped.
"""

from __future__ import annotations

import re

from huggingface_hub import ModelCard, ModelCardData

from audit.records import CHAIN_KEY
from audit.results import AuditResults
from reports.model_card import group_by_category
from reports.reliability import reliability_line

__all__ = ["md_escape", "render_markdown_card"]

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def md_escape(value: object) -> str:
    """Escape text for a Markdown table cell: HTML and Markdown syntax become literal, newlines spaces.

    Examples
    --------
    >>> from reports.markdown_card import md_escape
    >>> md_escape("<script>a|b</script>")
    '&lt;script&gt;a\\\\|b&lt;/script&gt;'
    """
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"\s+", " ", text)
    return _MD_SPECIAL.sub(lambda m: m.group(1) if m.group(1) in "<>" else "\\" + m.group(1), text).strip()


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5) else f"{value:.4g}"


def _dp_lines(record: dict) -> list[str]:
    """The DP record: the guarantee, or plainly that it no longer holds and why."""
    stated = (f"(epsilon = {_fmt(float(record['epsilon']))}, delta = {_fmt(float(record['delta']))}) differential "
              "privacy per training example")
    accountant = f", accountant {md_escape(record['accountant'])}" if isinstance(record.get("accountant"), str) else ""
    holds = record.get("guarantee_holds")
    if holds is False:
        reasons = [str(r) for r in record.get("void_reasons") or []] or ["a step in the training chain voided it"]
        lines = [f"- **dp: the privacy guarantee no longer holds.** The DP-SGD step gave {stated}{accountant}, but it "
                 f"does not hold for this model (voided by `{md_escape(record.get('voided_by') or 'unknown')}`):"]
        lines += [f"  - {md_escape(r)}." for r in reasons]
        lines.append("  - Nothing bounds what this model reveals about those rows: treat it as trained on them without "
                     "differential privacy.")
        return lines
    checked = ("checked against every step of the training chain" if holds is True
               else "not checked against the model's other training steps")
    lines = [f"- **dp**: {stated}{accountant}; {checked}."]
    lines += [f"  - {md_escape(c)}." for c in record.get("guarantee_caveats") or []]
    if record.get("private_stats"):
        lines.append(f"  - {md_escape(record['private_stats'])}")
    return lines


def _chain_line(chain: object) -> str:
    """The ordered training steps, each marked private or not."""
    steps = [e for e in chain if isinstance(e, dict)] if isinstance(chain, list) else []
    shown = "; ".join(f"{md_escape(e.get('step'))} ({md_escape(e.get('technique'))}, "
                      f"{'private' if e.get('private') else 'not private'}"
                      f"{'' if e.get('uses_user_data') else ', no user data'})" for e in steps)
    return f"- **training chain**, oldest first: {shown or 'empty'}"


def render_markdown_card(results: AuditResults) -> str:
    """Render ``README.md`` for the Hub: YAML metadata, audit summary, per-probe metrics, provenance."""
    m = results.manifest
    card = results.card
    data = ModelCardData(
        language=card.get("language") or None,
        license=card.get("license") or None,
        library_name="transformers",
        tags=["rai-audit", *(md_escape(t) for t in card.get("tags") or [])],
        model_name=md_escape(card.get("model_name") or m.model_id),
    )
    data.rai_audit = {
        "schema_version": results.schema_version,
        "fingerprint": m.fingerprint,
        "new_weights": list(m.new_weights),
        "seed": m.seed,
        "results": {r.probe: r.status for r in results.results},
    }
    lines = [
        f"# Model card: {md_escape(card.get('model_name') or m.model_id)}",
        "",
        f"Audited with rai-audit {md_escape(m.rai_audit_version)} on {md_escape(m.finished_at)}. "
        f"Kind: {md_escape(m.kind)}; {m.n_parameters:,} parameters; model fingerprint `{m.fingerprint}`.",
        "",
    ]
    for title, key in (("Model details", "model_details"), ("Intended use", "intended_use"),
                       ("Out-of-scope uses", "out_of_scope_use"), ("Factors", "factors"),
                       ("Training data", "training_data"), ("Evaluation data", "evaluation_data"),
                       ("Ethical considerations", "ethical_considerations"),
                       ("Caveats and recommendations", "caveats_and_recommendations")):
        value = card.get(key)
        lines += [f"## {title}", "", md_escape(value) if value else f"_Not provided: set `card.{key}` in the audit config._", ""]
    if m.records:
        lines += ["## Training records", ""]
        for section, record in m.records.items():
            scalars = {k: v for k, v in record.items() if isinstance(v, (str, int, float, bool))} if isinstance(record, dict) else {}
            if section == CHAIN_KEY:
                lines.append(_chain_line(record))
            elif section == "dp" and isinstance(scalars.get("epsilon"), (int, float)) and isinstance(scalars.get("delta"), (int, float)):
                lines += _dp_lines(record)
            else:
                shown = ", ".join(f"{md_escape(k)}: {md_escape(v)}" for k, v in list(scalars.items())[:8])
                lines.append(f"- **{md_escape(section)}**" + (f": {shown}" if shown else ""))
        lines += ["", "The full records are in `model_card.html` and `results.json`.", ""]
    lines += ["## Audit summary", ""]
    if m.new_weights:
        lines += [f"**Untrained head:** {len(m.new_weights)} tensor(s) were not in the checkpoint and were newly "
                  f"initialised from seed {m.seed} ({md_escape(', '.join(m.new_weights))}); every result below that "
                  "depends on them describes an untrained head, not a trained model.", ""]
    lines += ["| Probe | Status | Headline metric | Value [95% CI] | p | Finding |",
              "|---|---|---|---|---|---|"]
    for r in results.results:
        hm = r.headline_metric
        value = ""
        if hm is not None:
            value = _fmt(hm.value) + (f" [{_fmt(hm.ci[0])}, {_fmt(hm.ci[1])}]" if hm.ci else "")
        p = _fmt(hm.p_value) if hm is not None and hm.p_value is not None else ""
        lines.append(f"| {md_escape(r.probe)} | {r.status} | {md_escape(r.headline or '')} | {value} | {p} | {md_escape(r.summary)} |")
    lines += ["", reliability_line(r.probe for r in results.results)]
    if results.gates:
        lines += ["", "### Gates", "", "| Probe | Metric | Bound | Value | Passed |", "|---|---|---|---|---|"]
        for g in results.gates:
            lines.append(f"| {md_escape(g.probe)} | {md_escape(g.metric)} | {g.bound} {_fmt(g.threshold)} | {_fmt(g.value)} | {'yes' if g.passed else 'no'} |")
    lines += ["", "## Quantitative analyses", ""]
    for _category, title, members in group_by_category(results):
        lines += [f"### {title}", ""]
        for r in members:
            lines += [f"#### {md_escape(r.probe)} ({r.status})", "", md_escape(r.summary), ""]
            if not r.metrics:
                continue
            lines += ["| Metric | Value | 95% CI | p | Meaning |", "|---|---|---|---|---|"]
            for name, metric in r.metrics.items():
                ci = f"[{_fmt(metric.ci[0])}, {_fmt(metric.ci[1])}]" if metric.ci else ""
                p = _fmt(metric.p_value) if metric.p_value is not None else ""
                lines.append(f"| {md_escape(name)} | {_fmt(metric.value)} | {ci} | {p} | {md_escape(metric.description)} |")
            lines.append("")
    lines += ["## Provenance", "", f"- Seed: {m.seed}", f"- Model fingerprint (weights, config, tokenizer, artefacts, record): `{m.fingerprint}`"]
    if m.dtypes:
        lines.append(f"- Parameter dtypes: {', '.join(m.dtypes)}")
    if m.new_weights:
        lines.append(f"- Newly initialised (untrained, seed {m.seed}): {md_escape(', '.join(m.new_weights))}")
    if m.data is not None:
        lines.append(f"- Data: {md_escape(m.data.path)} (`{m.data.fingerprint}`, {m.data.rows} rows)")
    lines += [f"- {md_escape(lib)}: {md_escape(v)}" for lib, v in m.library_versions.items()]
    lines += ["", "The full evidence is in `results.json` and `model_card.html` beside this file.", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return str(ModelCard(content, ignore_metadata_errors=True))
