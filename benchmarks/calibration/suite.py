"""The list of cases, the tiny real models they need, and the two reports the suite writes."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.calibration.core import Case, run_case

__all__ = ["NOT_CALIBRATED", "all_cases", "render_markdown", "run_suite", "source_digest", "to_json"]

#: Built-in probes the suite does not measure, and why; the card says "not calibrated" for them.
NOT_CALIBRATED = {
    "attention": "gives no verdict (its status is always passed); nothing to calibrate",
    "pii_data": "a detection count against a threshold, not a statistical test; detection quality is in the PII benchmark",
    "pii_generation": "a detection count against a threshold, not a statistical test; detection quality is in the PII benchmark",
    "canary_exposure": "an exact rank among all candidate secrets: under no memorisation a canary ranks first with "
                       "probability 1/|R| by construction; not measured by the suite",
}

CALIBRATION_JSON = Path(__file__).resolve().parents[2] / "reports" / "calibration.json"


def tiny_causal_lm(seed: int) -> Any:
    """A fresh random tiny GPT-2 (hidden 32, 2 layers) saved and loaded as an AuditTarget."""
    from audit import load_target
    from tests.tiny import make_tiny_model

    directory = Path(tempfile.mkdtemp(prefix="rai-calibration-lm-"))
    return load_target(make_tiny_model("causal-lm", directory, seed=seed % 2**31), progress=False, device="cpu")


def all_cases() -> list[Case]:
    from benchmarks.calibration.bias_cases import bias_cases
    from benchmarks.calibration.privacy_cases import privacy_cases

    cases = bias_cases(tiny_causal_lm) + privacy_cases() + __import__("benchmarks.calibration.qa_cases", fromlist=["qa_cases"]).qa_cases()
    try:
        from benchmarks.calibration.transparency_cases import transparency_cases
    except ImportError:
        return cases
    return cases + transparency_cases()


def select(cases: Sequence[Case], names: Sequence[str] | None) -> list[Case]:
    if not names:
        return list(cases)
    chosen = [c for c in cases if c.probe in names or f"{c.probe}:{c.verdict}" in names]
    if not chosen:
        raise SystemExit(f"no case matches {list(names)}; cases: {sorted({c.probe for c in cases})}")
    return chosen


#: Source files every case depends on besides its probe's own module.
_SHARED_MODULES = ("audit.stats", "audit.probe", "audit.context", "benchmarks.calibration.core",
                   "benchmarks.calibration.stand_ins")
_CASE_MODULES = {"bias": "benchmarks.calibration.bias_cases", "privacy": "benchmarks.calibration.privacy_cases",
                 "transparency": "benchmarks.calibration.transparency_cases"}
_PROBE_MODULES = {
    "seat": ("probes.seat",), "counterfactual": ("probes.counterfactual",),
    "group_fairness": ("probes.group_fairness", "probes.counterfactual"),
    "crows_pairs": ("probes.crows_pairs",), "stereoset": ("probes.stereoset", "probes.crows_pairs", "audit.target"),
    "generation": ("probes.generation", "probes.counterfactual"), "membership_inference": ("privacy.probes", "privacy.leakage"),
    "decision_path": ("probes.decision_path", "probes.attribution", "audit.target"),
    "faithfulness": ("probes.faithfulness", "probes.attribution", "audit.target"),
    "attribution": ("probes.attribution", "audit.target"),
    "bbq": ("probes.bbq", "probes.crows_pairs", "benchmarks.calibration.qa_cases"),
    "winogender": ("probes.winogender", "probes.bbq", "probes.crows_pairs", "benchmarks.calibration.qa_cases"),
    "robustness": ("probes.robustness", "benchmarks.calibration.qa_cases"),
}


def source_digest(case: Case) -> str:
    """sha256 over the code of the probe and of everything the case's measurement depends on, so
    a result is re-measured whenever the code that produced it changes.

    The code is each module's syntax tree without docstrings (:func:`code_text`): comments,
    docstrings and layout do not change behaviour, so they do not send a case back to be measured.
    """
    import hashlib
    from importlib.util import find_spec

    digest = hashlib.sha256()
    kind = "privacy" if case.probe == "membership_inference" else (
        "transparency" if case.probe in ("decision_path", "faithfulness", "attribution") else "bias")
    for module in sorted({*_PROBE_MODULES.get(case.probe, ()), *_SHARED_MODULES, _CASE_MODULES[kind]}):
        spec = find_spec(module)
        digest.update(module.encode())
        if spec is not None and spec.origin:
            digest.update(code_text(Path(spec.origin).read_text(encoding="utf-8")).encode())
    return "sha256:" + digest.hexdigest()[:16]


def code_text(source: str) -> str:
    """The syntax tree of ``source`` with docstrings removed, as text (the source itself if it does not parse).

    >>> code_text("def f():\\n    'Doc.'\\n    return 1  # note") == code_text("def f():\\n    return 1")
    True
    >>> code_text("x = 1") == code_text("x = 2")
    False
    """
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def case_key(case: Case) -> str:
    return f"{case.probe}:{case.verdict}"


def _run_one(key: str, runs: int, base_seed: int, null_runs: int | None = None) -> dict[str, Any]:
    """Run one case (by key) in this process: used directly and by worker processes."""
    import torch

    torch.set_num_threads(1)
    (case,) = [c for c in all_cases() if case_key(c) == key]
    started = _dt.datetime.now(_dt.timezone.utc)
    before = source_digest(case)
    result = run_case(case, runs=runs, base_seed=base_seed, null_runs=null_runs,
                      progress=lambda line: print(line, flush=True))
    out = result.to_json()
    # The digest is the code as it was when the case started (each case runs in a fresh process, so
    # its modules are imported then); code edited during the measurement makes the result stale.
    changed = source_digest(case) != before
    out.update(source_digest=before, measured=started.strftime("%Y-%m-%d %H:%M UTC"), runs_per_condition=runs,
               null_runs=result.null.runs if result.null else None, changed_during_run=changed)
    return out


def run_suite(cases: Sequence[Case], *, runs: int, base_seed: int = 2026, jobs: int = 1, null_runs: int | None = None,
              previous: dict[str, Any] | None = None,
              on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``cases``; with ``previous`` (an earlier JSON), keep each earlier case result whose source
    digest and run count still match instead of re-running it.

    ``on_update`` receives the run so far after each case finishes: cases not yet re-measured carry
    their earlier result marked ``stale`` (measured on other code), so a run cut short still leaves
    an honest file.
    """
    load_before = os.getloadavg()
    started = _dt.datetime.now(_dt.timezone.utc)
    kept: dict[str, dict[str, Any]] = {}
    if previous:
        for entries in previous.get("probes", {}).values():
            for entry in entries:
                kept[f"{entry['probe']}:{entry['verdict']}"] = entry
    todo, reused = [], {}
    for case in cases:
        old = kept.get(case_key(case))
        errored = old is not None and any(c.get("errors") for c in old.get("conditions", []))
        if (old and old.get("source_digest") == source_digest(case) and old.get("runs_per_condition") == runs
                and old.get("requested_null_runs") == null_runs and not errored and not old.get("changed_during_run")):
            reused[case_key(case)] = {**old, "stale": False}
            print(f"{case_key(case)}: source unchanged since {old.get('measured')}, result kept", flush=True)
        else:
            todo.append(case_key(case))
    fresh: dict[str, dict[str, Any]] = {}

    def snapshot() -> dict[str, Any]:
        results = []
        for c in cases:
            key = case_key(c)
            entry = fresh.get(key) or reused.get(key)
            if entry is None and key in kept:
                entry = {**kept[key], "stale": True}
            if entry is not None:
                results.append(entry)
        return {"results": results, "runs": runs, "null_runs": null_runs, "base_seed": base_seed, "started": started, "reused": sorted(reused),
                "finished": _dt.datetime.now(_dt.timezone.utc), "load_before": load_before,
                "load_after": os.getloadavg(), "pending": [k for k in todo if k not in fresh]}

    # Longest first, so parallel workers finish together.
    slow_first = ("group_fairness", "faithfulness", "stereoset", "attribution", "membership_inference",
                  "decision_path", "generation", "counterfactual")
    todo.sort(key=lambda k: slow_first.index(k.split(":")[0]) if k.split(":")[0] in slow_first else len(slow_first))
    if jobs > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # One fresh process per case, so each imports the probe code as it is when the case starts.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            futures = {pool.submit(_run_one, key, runs, base_seed, null_runs): key for key in todo}
            for future in as_completed(futures):
                entry = future.result()
                fresh[futures[future]] = {**entry, "stale": entry["changed_during_run"], "requested_null_runs": null_runs}
                if on_update:
                    on_update(snapshot())
    else:
        for key in todo:
            entry = _run_one(key, runs, base_seed, null_runs)
            fresh[key] = {**entry, "stale": entry["changed_during_run"], "requested_null_runs": null_runs}
            if on_update:
                on_update(snapshot())
    return snapshot()


def to_json(run: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.calibration import SUITE_VERSION

    probes: dict[str, list[dict[str, Any]]] = {}
    for result in run["results"]:
        probes.setdefault(result["probe"], []).append(result)
    return {
        "suite": "benchmarks/calibration", "suite_version": SUITE_VERSION,
        "date": run["started"].strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round((run["finished"] - run["started"]).total_seconds(), 1),
        "runs_per_condition": run["runs"], "null_runs": run.get("null_runs"), "base_seed": run["base_seed"], "reused_from_earlier_run": run["reused"],
        "not_yet_remeasured": run.get("pending", []),
        "load_average": {"before": [round(x, 2) for x in run["load_before"]],
                         "after": [round(x, 2) for x in run["load_after"]]},
        "machine": f"{platform.machine()}, Python {platform.python_version()}, {os.cpu_count()} CPUs",
        "targets": {"false_alarm_rate_max": 0.05, "false_alarm_upper_bound_max": 0.10, "coverage_min": 0.93,
                    "binomial_interval": "Clopper-Pearson 95%"},
        "probes": probes, "not_calibrated": NOT_CALIBRATED,
    }


def _rate(k: int, n: int, ci: Sequence[float] | None) -> str:
    if not n or ci is None:
        return "n/a"
    return f"{k}/{n} = {k / n:.1%} [{ci[0]:.1%}, {ci[1]:.1%}]"


def _mark(ok: bool | None, within_error: bool | None = None) -> str:
    if ok is None:
        return "n/a"
    return "**met**" if ok else ("**within sampling error of 5%**" if within_error else "**NOT met**")


def _first_error(case: dict[str, Any]) -> str:
    first = next(c["first_error"] for c in case["conditions"] if c["first_error"])
    return first.splitlines()[0].replace("`", "'")


def render_markdown(data: dict[str, Any]) -> str:
    lines = [
        "## Calibration",
        "",
        f"Suite `benchmarks/calibration` version {data['suite_version']}, run {data['date']} "
        f"({data['duration_s']:.0f} s; load average before {data['load_average']['before']}, after "
        f"{data['load_average']['after']}; {data['machine']}). {data['runs_per_condition']} independent runs per "
        f"condition, up to {data.get('null_runs') or data['runs_per_condition']} for the null; every run builds its model and data from its own seed and gives the probe a context seeded "
        "from the same run. Models with a known truth: a null (nothing planted) and planted effects of known size.",
        "",
        "Targets: false-alarm rate on the null at most 5% with the upper end of its 95% Clopper-Pearson interval "
        "at most 10% (which takes about 200 null runs for a test at 5%: with 40, only 0 alarms pass); 95% "
        "intervals cover the planted truth in at least 93% of all runs of the case (pooled over conditions, as 40 "
        "runs of one condition cannot resolve 93%; per-condition rates are shown too). Alarm = the verdict the row "
        "names (status warned or failed unless said otherwise). Rates: k/n = rate [95% Clopper-Pearson interval]. "
        "\"Within sampling error of 5%\": the point estimate is above 5%, the upper bound is at most 10%, and the "
        "count of alarms is not significantly above what a rate of exactly 5% gives (one-sided exact binomial "
        "p > 0.05). A test of exact size 5% lands there in about half of all measurements however many runs are "
        "made, so it is shown apart from \"met\", not counted as met.",
        "",
        "| probe | verdict | null false alarms | power: small / medium / large (truth) | interval coverage per condition "
        "(null / small / medium / large) | false-alarm target | coverage target |",
        "|---|---|---|---|---|---|---|",
    ]
    details = []
    for probe, cases in data["probes"].items():
        for case in cases:
            conds = {c["condition"]: c for c in case["conditions"]}
            null = conds.get("null")
            fa = _rate(null["alarms"], null["runs"], null["alarm_rate_ci95"]) if null else "n/a"
            power = []
            for name in ("small", "medium", "large"):
                c = conds.get(name)
                if c:
                    truth = f" ({c['mean_truth']:.3g})" if c.get("mean_truth") is not None else ""
                    power.append(f"{c['alarms']}/{c['runs']} = {c['alarm_rate']:.0%}{truth}" if c["runs"] else "n/a")
            names = sorted({n for c in case["conditions"] for n in c["coverage"]})
            pooled = case.get("pooled_coverage", {})
            coverage = "; ".join(
                f"{n}: " + " / ".join(f"{c['coverage'][n]['rate']:.0%}" if n in c["coverage"] else "-"
                                      for c in case["conditions"])
                + (f" (all runs: {pooled[n]['rate']:.1%} of {pooled[n]['runs']})" if n in pooled else "")
                for n in names)
            errors = sum(c["errors"] for c in case["conditions"])
            verdict = case["verdict"] + (f" ({errors} runs errored)" if errors else "")
            if case.get("stale"):
                verdict += " (STALE: measured on earlier code of this probe)"
            met = case["targets_met"]
            lines.append(f"| {probe} | {verdict} | {fa} | {' / '.join(power)} | {coverage or 'n/a'} | "
                         f"{_mark(met['false_alarm'], met.get('false_alarm_within_error'))} | {_mark(met['coverage'])} |")
            planted = ", ".join(f"{c['condition']} {c['effect']:g}" for c in case["conditions"])
            flag_names = sorted({n for c in case["conditions"] for n in c.get("flags", {})})
            flags = "; ".join(f"{n}: " + " / ".join(f"{c['flags'][n]['count']}/{c['flags'][n]['runs']}"
                                                    if n in c.get("flags", {}) else "-" for c in case["conditions"])
                              for n in flag_names)
            details.append(f"- **{probe}, {case['verdict']}** (measured {case.get('measured', '?')}, source "
                           f"`{case.get('source_digest', '?')}`). {case['description']} Effect unit: {case['effect_unit']}; "
                           f"planted {planted}. "
                           f"Interval checked: {case['interval']}. Settings: {case['settings'].get('probe params', '')}."
                           + (f" Per condition ({' / '.join(c['condition'] for c in case['conditions'])}): {flags}."
                              if flags else "")
                           + (f" First error: `{_first_error(case)}`" if errors else ""))
    lines += ["", "How each model was built:", "", *details, ""]
    lines += ["Not calibrated by this suite:", ""]
    lines += [f"- **{p}**: {why}" for p, why in data["not_calibrated"].items()]
    return "\n".join(lines) + "\n"


def write_outputs(data: dict[str, Any], *, json_path: Path = CALIBRATION_JSON, results_md: bool = True) -> None:
    json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if results_md:
        from benchmarks._results import write_section

        write_section("calibration", render_markdown(data), timings=False)  # rates, not timings (the load is stated)

