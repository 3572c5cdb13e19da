"""The Markdown model card (``README.md``) with the YAML front matter the Hugging Face Hub reads.

Built with huggingface_hub's :class:`~huggingface_hub.ModelCard` and
:class:`~huggingface_hub.ModelCardData`, without calling the Hub. Markdown on the Hub renders
inline HTML, so every value that a model, dataset or plugin can influence is escaped.

Each probe's headline metric is a ``model-index`` result (:class:`~huggingface_hub.EvalResult`),
which the Hub shows on the model page. A probe whose data the config names as a Hub benchmark
(``card.benchmarks``) also gets a ``.eval_results/*.yaml`` file, the Hub's per-benchmark format
(:class:`~huggingface_hub.EvalResultEntry`, where the installed huggingface_hub has it), which puts
the score on that benchmark's leaderboard: only a declared benchmark, since the entry claims it.
"""

from __future__ import annotations

import html
import re
from pathlib import PurePath

import huggingface_hub
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from audit.records import CHAIN_KEY
from audit.results import AuditResults
from reports.reliability import reliability_line
from reports.sections import group_by_category, md_escape

__all__ = ["eval_result_files", "hub_eval_results", "hub_model_name", "md_escape", "render_markdown_card"]

# The Hub's pipeline tag for each model kind (https://huggingface.co/docs/hub/models-widgets#widget-types).
PIPELINE_TAGS = {"sequence-classification": "text-classification", "causal-lm": "text-generation",
                 "masked-lm": "fill-mask", "encoder": "feature-extraction", "seq2seq": "text2text-generation"}
_NOT_SCORED = ("errored", "skipped", "not_applicable")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EVAL_RESULTS_DIR = ".eval_results"

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
    audit = record.get("audit") if isinstance(record.get("audit"), dict) else {}
    bound = record.get("empirical_epsilon_lower_bound")
    if isinstance(bound, (int, float)):
        verdict = ("above the accountant's epsilon: the training did not deliver the claimed guarantee"
                   if bound > float(record["epsilon"]) else "consistent with the accountant's epsilon")
        lines.append(f"  - One-run audit (Steinke et al. 2023): epsilon >= {_fmt(float(bound))} at "
                     f"{_fmt(100 * float(audit.get('confidence', 0.95)))}% confidence vs accountant epsilon "
                     f"{_fmt(float(record['epsilon']))}, {verdict}. A bound far below epsilon is expected and is no "
                     "proof of privacy.")
    return lines


def _federated_lines(record: dict) -> list[str]:
    """The federated record in sentences: strategy, rounds, which clients the accuracy is over, failures, DP."""
    final = record.get("final") if isinstance(record.get("final"), dict) else {}
    rounds = [r for r in record.get("rounds") or [] if isinstance(r, dict)]
    line = (f"- **federated**: {md_escape(record.get('strategy') or 'unknown strategy')} over "
            f"{md_escape(record.get('num_clients'))} clients ({md_escape(record.get('engine') or 'unknown')} engine); "
            f"{md_escape(record.get('rounds_aggregated'))} of {md_escape(record.get('num_rounds'))} rounds aggregated")
    if isinstance(record.get("model_round"), int):
        line += f", model from round {record['model_round']}"
    accuracy = final.get("accuracy")
    if isinstance(accuracy, (int, float)):
        clients = [str(c) for c in final.get("clients") or []]
        scope = ("every client" if final.get("over_all_clients") else
                 f"{len(clients)} client(s) only ({md_escape(', '.join(clients))})")
        line += (f"; held-out accuracy {_fmt(float(accuracy))} over {scope}, "
                 f"{md_escape(final.get('eval_rows'))} rows")
    else:
        line += "; no client scored the final model"
    central = record.get("centralized")
    if isinstance(central, dict) and isinstance(central.get("accuracy"), (int, float)):
        line += f"; trained centrally instead: {_fmt(float(central['accuracy']))}"
    gap = record.get("best_worst_gap")
    if isinstance(gap, dict) and isinstance(gap.get("gap"), (int, float)):
        line += (f"; best-served client {md_escape(gap.get('best_client'))}, worst {md_escape(gap.get('worst_client'))}, "
                 f"gap {_fmt(float(gap['gap']))}")
    failures = record.get("failures") or []
    lines = [line + f"; {len(failures)} client failure(s) in {len(rounds)} round(s)."]
    lines += [f"  - {md_escape(w)}." for w in record.get("warnings") or []]
    dp = record.get("client_dp")
    if isinstance(dp, dict) and isinstance(dp.get("epsilon_max"), (int, float)):
        stated = (f"client-side DP-SGD, epsilon at most {_fmt(float(dp['epsilon_max']))} for any one client's rows "
                  f"(delta = {_fmt(dp.get('delta') if isinstance(dp.get('delta'), (int, float)) else None)}; "
                  "per client, never summed across clients)")
        if dp.get("guarantee_holds") is False:
            reasons = "; ".join(str(r) for r in dp.get("void_reasons") or []) or "a later step voided it"
            lines.append(f"  - **The {stated} no longer holds** (voided by `{md_escape(dp.get('voided_by') or 'unknown')}`: "
                         f"{md_escape(reasons)}).")
        else:
            checked = ("checked against every step of the training chain" if dp.get("guarantee_holds") is True
                       else "not checked against the model's other training steps")
            lines.append(f"  - {stated}; {checked}.")
            lines += [f"  - {md_escape(c)}." for c in dp.get("guarantee_caveats") or []]
    central = record.get("central_dp")
    if isinstance(central, dict) and isinstance(central.get("epsilon"), (int, float)):
        held = {True: "checked against every step of the training chain", False: "**no longer holds**"}.get(
            central.get("guarantee_holds"), "not checked against the model's other training steps")
        lines.append(f"  - central DP ({md_escape(central.get('side'))}-side clipping): epsilon = "
                     f"{_fmt(float(central['epsilon']))}, delta = {_fmt(central.get('delta'))} for everything one client "
                     f"contributed; {held}.")
    local = record.get("local_dp")
    if isinstance(local, dict) and isinstance(local.get("epsilon_max"), (int, float)):
        lines.append(f"  - local DP (Flower's LocalDpMod): epsilon = {_fmt(local.get('epsilon_per_round'))} per client per "
                     f"round, at most {_fmt(float(local['epsilon_max']))} (delta = {_fmt(local.get('delta'))}) for any one "
                     "client over its rounds; not checked against the model's other training steps.")
    return lines


def _chain_line(chain: object) -> str:
    """The ordered training steps, each marked private or not."""
    steps = [e for e in chain if isinstance(e, dict)] if isinstance(chain, list) else []
    shown = "; ".join(f"{md_escape(e.get('step'))} ({md_escape(e.get('technique'))}, "
                      f"{'private' if e.get('private') else 'not private'}"
                      f"{'' if e.get('uses_user_data') else ', no user data'})" for e in steps)
    return f"- **training chain**, oldest first: {shown or 'empty'}"


def _text(value: object) -> str:
    # Metadata values are shown by the Hub's widgets, not rendered as Markdown: one line, HTML escaped.
    return html.escape(re.sub(r"\s+", " ", str(value)).strip(), quote=False)


def hub_model_name(results: AuditResults) -> str:
    """The model's name on the Hub: ``card.model_name``, else its Hub id, else its directory's name.

    A local path (``./clf``, ``/data/models/clf``) is never a model name: it names a directory
    on the auditor's machine, which no reader of the card has.
    """
    from audit.target import DEFAULT_MODEL_ID  # here, not at import: audit.target loads torch

    m = results.manifest
    if results.card.get("model_name"):
        return _text(results.card["model_name"])
    local = (m.model_id.startswith((".", "/", "~", "\\")) or not _HUB_ID.match(m.model_id)
             or PurePath(m.model_path).name == PurePath(m.model_id).name)
    if m.model_id == DEFAULT_MODEL_ID or not local:
        return _text(m.model_id)
    return _text(PurePath(m.model_path).name or "model")


def _benchmark(results: AuditResults, probe: str) -> tuple[str, str] | None:
    declared = (results.card.get("benchmarks") or {}).get(probe)
    if not declared:
        return None
    dataset, _, task = declared.partition(":")
    return dataset, task or "default"


def _scored(results: AuditResults) -> list:
    return [r for r in results.results if r.status not in _NOT_SCORED
            and r.headline_metric is not None and r.headline_metric.value is not None]


def _interval(metric) -> str:
    return f"95% CI [{_fmt(metric.ci[0])}, {_fmt(metric.ci[1])}]" if metric.ci else "no interval"


def hub_eval_results(results: AuditResults) -> list[EvalResult]:
    """Each scored probe's headline metric as a ``model-index`` result the Hub displays."""
    task = PIPELINE_TAGS.get(results.manifest.kind, "other")
    out = []
    for r in _scored(results):
        metric, benchmark = r.headline_metric, _benchmark(results, r.probe)
        out.append(EvalResult(
            task_type=_text(results.card.get("pipeline_tag") or task),
            task_name=_text(f"rai-audit {r.probe} ({r.status})"),
            dataset_type=benchmark[0] if benchmark else _text(f"rai-audit-{r.probe}"),
            dataset_name=_text(benchmark[0] if benchmark else f"rai-audit {r.probe} probe inputs (see results.json)"),
            dataset_config=benchmark[1] if benchmark else None,
            metric_type=_text(r.headline),
            metric_name=_text(f"{r.headline}, {_interval(metric)}"),
            metric_value=float(metric.value),
        ))
    return out


def eval_result_files(results: AuditResults) -> dict[str, str]:
    """``.eval_results/rai-audit-<probe>.yaml`` texts for the probes whose data is a declared Hub benchmark.

    Empty when no probe is declared in ``card.benchmarks``, or when the installed huggingface_hub
    predates the format (it has no ``EvalResultEntry``).
    """
    entry_type = getattr(huggingface_hub, "EvalResultEntry", None)
    if entry_type is None:
        return {}
    files = {}
    for r in _scored(results):
        benchmark = _benchmark(results, r.probe)
        if benchmark is None:
            continue
        metric = r.headline_metric
        entry = entry_type(dataset_id=benchmark[0], task_id=benchmark[1], value=float(metric.value),
                           date=results.manifest.finished_at or None,
                           notes=_text(f"rai-audit {r.probe}: {r.headline}, {_interval(metric)}; status {r.status}"))
        text = yaml.safe_dump(huggingface_hub.eval_result_entries_to_yaml([entry]), sort_keys=False)
        files[f"{EVAL_RESULTS_DIR}/rai-audit-{r.probe}.yaml"] = text
    return files


def _hub_results_line(results: AuditResults) -> str:
    scored, files = _scored(results), eval_result_files(results)
    line = (f"Hub results: the headline metric of {len(scored)} probe(s) is in this card's `model-index`"
            if scored else "Hub results: no probe produced a headline metric, so `model-index` is empty")
    if files:
        return line + f"; {len(files)} declared benchmark(s) also in `{EVAL_RESULTS_DIR}/`."
    if not hasattr(huggingface_hub, "EvalResultEntry"):
        return line + f"; no `{EVAL_RESULTS_DIR}/` files (huggingface_hub {huggingface_hub.__version__} predates them)."
    return line + (f"; no `{EVAL_RESULTS_DIR}/` files: no probe's data is declared as a Hub benchmark "
                   "(set `card.benchmarks`).")


def render_markdown_card(results: AuditResults) -> str:
    """Render ``README.md`` for the Hub: YAML metadata, audit summary, per-probe metrics, provenance."""
    m = results.manifest
    card = results.card
    base_model = card.get("base_model")
    data = ModelCardData(
        base_model=([_text(b) for b in base_model] if isinstance(base_model, list) else _text(base_model))
        if base_model else None,
        datasets=[_text(d) for d in card.get("datasets") or []] or None,
        language=card.get("language") or None,
        license=card.get("license") or None,
        library_name="transformers",
        pipeline_tag=_text(card.get("pipeline_tag") or PIPELINE_TAGS.get(m.kind) or "") or None,
        tags=["rai-audit", *(md_escape(t) for t in card.get("tags") or [])],
        model_name=hub_model_name(results),
        eval_results=hub_eval_results(results) or None,
    )
    data.rai_audit = {
        "schema_version": results.schema_version,
        "fingerprint": m.fingerprint,
        "new_weights": list(m.new_weights),
        "seed": m.seed,
        "results": {r.probe: r.status for r in results.results},
    }
    lines = [
        f"# Model card: {md_escape(hub_model_name(results))}",
        "",
        f"Audited with rai-audit {md_escape(m.rai_audit_version)} on {md_escape(m.finished_at)}. "
        f"Kind: {md_escape(m.kind)}; {m.n_parameters:,} parameters; model fingerprint `{m.fingerprint}`.",
        "",
        f"**Verdict: {md_escape(results.verdict())}**",
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
            elif section == "federated" and isinstance(record, dict) and isinstance(record.get("rounds"), list):
                lines += _federated_lines(record)
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
    lines += ["", reliability_line(r.probe for r in results.results), "", _hub_results_line(results)]
    if results.gates:
        lines += ["", "### Gates", "", "| Probe | Metric | Bound | Value | Passed |", "|---|---|---|---|---|"]
        for g in results.gates:
            lines.append(f"| {md_escape(g.probe)} | {md_escape(g.metric)} | {g.bound} {_fmt(g.threshold)} | {_fmt(g.value)} | {'yes' if g.passed else 'no'} |")
    if results.gates_not_checked:
        lines += ["", "### Gates not checked", "", "| Probe | Metric | Bound | Why not checked |", "|---|---|---|---|"]
        lines += [f"| {md_escape(g.probe)} | {md_escape(g.metric)} | {g.bound} {_fmt(g.threshold)} | {md_escape(g.reason)} |"
                  for g in results.gates_not_checked]
    elif not results.gates:
        lines += ["", "No release gates configured: the verdict rests on the probes' own statuses only."]
    if results.probes_not_run:
        lines += ["", "### Probes not run", ""]
        lines += [f"- {md_escape(name)}: {md_escape(why)}" for name, why in results.probes_not_run.items()]
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
