"""``rai-audit demo``: the whole product on the bundled all-MiniLM-L6-v2, offline, in a few minutes.

Registered in the ``rai_audit.commands`` entry-point group. Every step goes through the product's
public command line (``rai-audit run``, ``train-dp``, ``debias``, ``compare``), so the demo is also
an end-to-end test of them:

1. audit the encoder (SEAT, attention);
2. fine-tune it into a sentiment classifier with DP-SGD under a target epsilon, on the dataset
   :mod:`rai_audit.demo_data` builds from the VADER lexicon and the project's word lists;
3. audit the classifier on held-out rows with every probe that applies to it (membership
   inference on the training rows against the held-out ones);
4. debias it with group thresholds (fairlearn's ``ThresholdOptimizer``), audit that model the same
   way and compare the two;
5. write ``index.html`` linking the cards, and ``demo.json`` with what the demo found.

What it trains is cached under ``OUT/models`` keyed by the sha256 of its inputs (the base model's
files, the data, every option and rai-audit's version); the audits reuse their own probe cache, so
a second run retrains nothing and recomputes no probe, and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from audit._validate import seed_arg
from audit.errors import AuditError

__all__ = ["CLASSIFIER_PROBES", "DemoCommand", "run_demo"]

CLASSIFIER_PROBES = ("seat", "attention", "counterfactual", "group_fairness", "robustness", "attribution",
                     "faithfulness", "decision_path", "pii_data", "membership_inference")
ENCODER_PROBES = ("seat", "attention")
# Group thresholds change decisions only: these are the probes that read them (the others would repeat
# the DP model's numbers, since the weights and probabilities are the same).
THRESHOLD_PROBES = ("counterfactual", "group_fairness", "robustness")
TARGET_EPSILON = 8.0
# Only the classification head trains: DP noise grows with the number of trained parameters, and the
# frozen encoder's pooled output already separates the classes. Its features are small (|x| ~ 0.05),
# so the head needs a large learning rate; at 2e-2 the noise wins and the head predicts one class.
# No held-out share inside train-dp: every training row is a member for the membership-inference
# probe, and the test split measures utility.
TRAIN_OPTIONS = ("--target-epsilon", str(TARGET_EPSILON), "--epochs", "3", "--batch-size", "64",
                 "--max-length", "64", "--learning-rate", "0.2", "--max-grad-norm", "1.0",
                 "--trainable-layers", "head", "--eval-fraction", "0")
DEBIAS_OPTIONS = ("--technique", "threshold", "--constraints", "demographic_parity")
RAN = ("passed", "warned", "failed")
STEP_FAILED = ("Demo step {step!r} failed: `rai-audit {command}` exited {code}. The lines above say why; "
               "rerun `rai-audit demo` once it is fixed (finished steps are reused).")
SILENT_PROBES = ("Demo: in the {audit} audit, probe(s) {names} did not run ({statuses}); the demo needs every "
                 "one of {expected} to run. See {card}.")


def _cli(argv: Sequence[str]) -> int:
    from audit.cli import main

    return main(list(argv))


def _tree_digest(path: Path) -> str:
    """sha256 of a file, or over every file below a directory (relative name and contents)."""
    from audit.provenance import file_digest

    if path.is_file():
        return file_digest(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file_digest(file).encode())
    return digest.hexdigest()


class _Demo:
    def __init__(self, *, out: Path, seed: int, cache: bool, stream: TextIO) -> None:
        self.out = out
        self.seed = seed
        self.cache = cache
        self.stream = stream
        self.summary: dict[str, Any] = {"out": str(out), "seed": seed, "steps": {}}

    def say(self, step: int, text: str) -> None:
        self.stream.write(f"[demo {step}/5] {text}\n")
        self.stream.flush()

    def call(self, step: str, argv: Sequence[str], *, ok: tuple[int, ...] = (0,)) -> int:
        code = _cli(argv)
        if code not in ok:
            raise AuditError(STEP_FAILED.format(step=step, command=" ".join(argv[:1]), code=code))
        return code

    def data(self) -> dict[str, Path]:
        from rai_audit.demo_data import make_splits

        folder = self.out / "data"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, frame in make_splits(seed=self.seed).items():
            paths[name] = folder / f"{name}.csv"
            text = frame.to_csv(index=False)
            if not paths[name].is_file() or paths[name].read_text(encoding="utf-8") != text:
                paths[name].write_text(text, encoding="utf-8")
        return paths

    def trained(self, name: str, argv: list[str], inputs: dict[str, Any]) -> tuple[Path, bool]:
        """Run a training command into ``models/name`` unless a model from the same inputs is there."""
        from audit._version import version as _version

        model = self.out / "models" / name
        key_file = self.out / "models" / f"{name}.inputs.json"
        key = hashlib.sha256(json.dumps({**inputs, "argv": argv, "rai_audit": _version()},
                                        sort_keys=True).encode()).hexdigest()
        if self.cache and key_file.is_file() and model.is_dir():
            stored = json.loads(key_file.read_text(encoding="utf-8"))
            if stored.get("key") == key and stored.get("model_digest") == _tree_digest(model):
                return model, True
        model.parent.mkdir(parents=True, exist_ok=True)
        key_file.unlink(missing_ok=True)
        self.call(name, [*argv, "--out", str(model), "--overwrite", "--seed", str(self.seed)])
        key_file.write_text(json.dumps({"key": key, "model_digest": _tree_digest(model)}, indent=2), encoding="utf-8")
        return model, False

    def audit(self, name: str, argv: list[str], expected: Sequence[str]) -> dict[str, Any]:
        from audit.results import AuditResults

        out = self.out / name
        self.call(name, ["run", *argv, "--out", str(out), "--seed", str(self.seed), "--no-progress",
                         *(() if self.cache else ("--no-cache",))], ok=(0, 1))
        results = AuditResults.load(out / "results.json")
        statuses = {r.probe: r.status for r in results.results}
        silent = [p for p in expected if statuses.get(p) not in RAN]
        if silent:
            raise AuditError(SILENT_PROBES.format(
                audit=name, names=silent, statuses=", ".join(f"{p}: {statuses.get(p, 'absent')}" for p in silent),
                expected=list(expected), card=out / "model_card.html"))
        counts = {s: sum(1 for v in statuses.values() if v == s) for s in RAN}
        return {"card": str(out / "model_card.html"), "results": str(out / "results.json"), "statuses": statuses,
                "counts": counts, "probes_ran": sum(counts.values()),
                "cached_probes": sum(1 for r in results.results if r.cached), "n_probes": len(results.results),
                "headlines": {r.probe: _headline(r) for r in results.results}, "records": results.manifest.records}


def _headline(result: Any) -> dict[str, Any]:
    metric = result.headline_metric
    if metric is None:
        return {"metric": None, "value": None, "ci": None, "p_value": None, "summary": result.summary}
    return {"metric": result.headline, "value": metric.value, "ci": list(metric.ci) if metric.ci else None,
            "p_value": metric.p_value, "summary": result.summary}


def _metric(results_path: str, probe: str, name: str) -> dict[str, Any] | None:
    from audit.results import AuditResults

    for result in AuditResults.load(results_path).results:
        if result.probe == probe and name in result.metrics:
            m = result.metrics[name]
            return {"value": m.value, "ci": list(m.ci) if m.ci else None}
    return None


def _accuracy(results_path: str, test: Path) -> dict[str, Any] | None:
    """group_fairness' held-out accuracy, with a Wilson 95% interval over the test rows (it reports none)."""
    from audit.stats import wilson_interval

    accuracy = _metric(results_path, "group_fairness", "accuracy")
    if accuracy is None:
        return None
    rows = sum(1 for _ in test.open(encoding="utf-8")) - 1
    if accuracy["ci"] is None:
        low, high = wilson_interval(round(accuracy["value"] * rows), rows)
        accuracy["ci"] = [low, high]
        accuracy["interval"] = "Wilson 95% over the held-out rows"
    return {**accuracy, "rows": rows}


def _classifier_config(path: Path, *, model: Path, data: dict[str, Path], title: str,
                       probes: Sequence[str], seed: int) -> Path:
    import yaml

    config = {
        "model": str(model.resolve()),
        "seed": seed,
        # one probe cache for every classifier audit: the fairness re-audit of the DP model is free
        "cache_dir": str((path.parent / ".cache").resolve()),
        "max_length": 64,
        "data": {"path": str(data["test"].resolve()), "text_column": "text", "label_column": "label",
                 "sensitive_features": ["gender"]},
        "select": list(probes),
        "probes": {
            "group_fairness": {"params": {"positive_label": "positive"}},
            "membership_inference": {"params": {"members": str(data["train"].resolve()),
                                                "non_members": str(data["test"].resolve()),
                                                "label_column": "label"}},
        },
        "card": {
            "model_name": title,
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "intended_use": "A demonstration of rai-audit; not for any decision about people.",
            "training_data": "rai-audit's demo sentences (VADER-lexicon adjectives in templates about people "
                             "named from the project's word lists). The training labels carry a planted bias: "
                             "some positive rows naming a woman were relabelled negative.",
            "evaluation_data": "Held-out demo sentences from the same generator, with VADER's labels "
                               "(no planted bias); never trained on.",
        },
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def run_demo(out: str | Path = "audit-report", *, seed: int = 0, cache: bool = True,
             stream: TextIO | None = None) -> dict[str, Any]:
    """Run the demo into ``out`` and return what it found (also written to ``out/demo.json``).

    Parameters
    ----------
    out : path, default="audit-report"
        Output directory: one sub-directory per audit, ``models/``, ``data/``, ``comparison/``,
        ``index.html`` and ``demo.json``.
    seed : int, default=0
        Seed of the dataset, the audits and everything the training commands let a seed fix.
    cache : bool, default=True
        Reuse models trained from the same inputs and the audits' finished probe results.
    stream : text stream, optional
        Where the progress lines go (default: stderr).

    Returns
    -------
    dict
        ``steps`` (per step: cards, probe statuses, cache hits), ``held_out_accuracy``,
        ``epsilon``, ``index``.
    """
    from audit.target import default_model_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    demo = _Demo(out=out, seed=seed, cache=cache, stream=stream or sys.stderr)
    base = default_model_path()
    steps = demo.summary["steps"]

    demo.say(1, f"Auditing the encoder {base.name} (SEAT, attention)")
    probes = [arg for p in ENCODER_PROBES for arg in ("--probe", p)]
    steps["encoder"] = demo.audit("encoder", ["--model", str(base), *probes], ENCODER_PROBES)

    data = demo.data()
    demo.say(2, f"Fine-tuning a sentiment classifier with DP-SGD (target epsilon {TARGET_EPSILON:g}) on "
                f"{data['train']} ({sum(1 for _ in data['train'].open(encoding='utf-8')) - 1} rows)")
    train_argv = ["train-dp", "--model", str(base), "--data", str(data["train"]), "--label-column", "label",
                  *TRAIN_OPTIONS, "--no-progress"]
    dp_model, hit = demo.trained("classifier-dp", train_argv, {"base": _tree_digest(base),
                                                               "data": _tree_digest(data["train"])})
    record = json.loads((dp_model / "rai_audit_record.json").read_text(encoding="utf-8"))["dp"]
    steps["train_dp"] = {"model": str(dp_model), "cache": "hit" if hit else "miss", "epsilon": record["epsilon"],
                         "delta": record["delta"], "steps": record["steps"], "epochs": record["epochs"]}
    demo.say(2, ("cache hit: reusing " if hit else "trained ") + f"{dp_model} (epsilon={record['epsilon']:.3g}, "
                f"delta={record['delta']:.2g})")

    demo.say(3, "Auditing the classifier on held-out rows with 10 probes")
    config = _classifier_config(out / "classifier-audit.yaml", model=dp_model, data=data,
                                title="MiniLM sentiment classifier, DP-SGD (demo)", probes=CLASSIFIER_PROBES,
                                seed=seed)
    steps["classifier"] = demo.audit("classifier", ["--config", str(config)], CLASSIFIER_PROBES)
    # the probes the thresholds change, on the DP model: read from the cache step 3 just filled
    config = _classifier_config(out / "classifier-fairness-audit.yaml", model=dp_model, data=data,
                                title="MiniLM sentiment classifier, DP-SGD (demo)", probes=THRESHOLD_PROBES,
                                seed=seed)
    steps["classifier_fairness"] = demo.audit("classifier-fairness", ["--config", str(config)], THRESHOLD_PROBES)
    demo.summary["held_out_accuracy"] = _accuracy(steps["classifier"]["results"], data["test"])
    demo.summary["epsilon"] = record["epsilon"]

    demo.say(4, "Debiasing with group thresholds (fairlearn ThresholdOptimizer) on the calibration rows, then "
                "auditing and comparing")
    debias_argv = ["debias", "--model", str(dp_model), "--data", str(data["calibration"]), "--label-column", "label",
                   "--sensitive-feature", "gender", *DEBIAS_OPTIONS]
    thr_model, hit = demo.trained("classifier-dp-threshold", debias_argv,
                                  {"base": _tree_digest(dp_model), "data": _tree_digest(data["calibration"])})
    steps["debias"] = {"model": str(thr_model), "cache": "hit" if hit else "miss", "technique": "threshold"}
    demo.say(4, ("cache hit: reusing " if hit else "debiased into ") + str(thr_model))
    config = _classifier_config(out / "classifier-threshold-audit.yaml", model=thr_model, data=data,
                                title="MiniLM sentiment classifier, DP-SGD + group thresholds (demo)",
                                probes=THRESHOLD_PROBES, seed=seed)
    steps["classifier_threshold"] = demo.audit("classifier-threshold", ["--config", str(config)], THRESHOLD_PROBES)
    demo.call("comparison", ["compare", steps["classifier_fairness"]["results"], steps["classifier_threshold"]["results"],
                             "--name", "DP-SGD", "--name", "DP-SGD + thresholds", "--out", str(out / "comparison")])
    comparison = json.loads((out / "comparison" / "comparison.json").read_text(encoding="utf-8"))
    steps["comparison"] = {"card": str(out / "comparison" / "comparison.html"),
                           "json": str(out / "comparison" / "comparison.json"),
                           "changes": [_change(e) for t in comparison["tradeoffs"]
                                       for e in t["fairness"] + t["performance"]]}

    demo.say(5, "Writing the index page")
    index = write_index(demo.summary, out / "index.html")
    demo.summary["index"] = str(index)
    (out / "demo.json").write_text(json.dumps(demo.summary, indent=2, default=str), encoding="utf-8")
    demo.say(5, f"Open {index} in a browser.")
    return demo.summary


def _change(entry: dict[str, Any]) -> str:
    """One comparison row as text: ``probe.metric before -> after`` and whether the change is significant."""
    mark = ""
    if entry["significant"]:
        mark = " (significantly better)" if entry["improved"] else " (significantly worse)"
    return f"{entry['probe']}.{entry['metric']} {entry['baseline']:.3g} -> {entry['value']:.3g}{mark}"


def _fmt(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "n/a"
    text = f"{entry['value']:.3g}"
    if entry.get("ci"):
        text += f" [{entry['ci'][0]:.3g}, {entry['ci'][1]:.3g}]"
    return text


def _rows(audit: dict[str, Any]) -> str:
    rows = []
    for probe, status in audit["statuses"].items():
        head = audit["headlines"][probe]
        metric = f"{head['metric']} {_fmt(head)}" if head["metric"] else ""
        rows.append(f"<tr><td>{html.escape(probe)}</td><td class='{html.escape(status)}'>{html.escape(status)}</td>"
                    f"<td>{html.escape(metric)}</td>"
                    f"<td>{html.escape(str(head.get('summary') or ''))}</td></tr>")
    return "\n".join(rows)


def _link(path: str, root: Path) -> str:
    return html.escape(Path(path).resolve().relative_to(root.resolve()).as_posix())


def write_index(summary: dict[str, Any], path: Path) -> Path:
    """One self-contained page linking the demo's cards, with each audit's probe statuses."""
    root = path.parent
    steps = summary["steps"]
    sections = []
    for key, title in (("encoder", "1. The encoder (all-MiniLM-L6-v2)"),
                       ("classifier", "3. The DP-SGD sentiment classifier, on held-out rows"),
                       ("classifier_threshold", "4. The same classifier with group thresholds")):
        audit = steps[key]
        counts = ", ".join(f"{n} {s}" for s, n in audit["counts"].items())
        sections.append(f"<h2>{html.escape(title)}</h2><p><a href='{_link(audit['card'], root)}'>model card</a> "
                        f"&middot; {audit['probes_ran']} probes ran ({html.escape(counts)})</p>"
                        f"<table><tr><th>probe</th><th>status</th><th>headline</th><th>finding</th></tr>"
                        f"{_rows(audit)}</table>")
    dp = steps["train_dp"]
    sections.insert(1, f"<h2>2. DP-SGD fine-tuning</h2><p>({dp['epsilon']:.3g}, {dp['delta']:.2g})-differential "
                       f"privacy per training row, {dp['steps']} steps ({dp['epochs']:.2f} epochs). Held-out "
                       f"accuracy: {html.escape(_fmt(summary.get('held_out_accuracy')))}. The training labels carry "
                       "a planted bias the audit should find: some positive rows naming a woman were relabelled "
                       "negative (the held-out rows keep VADER's labels). The guarantee and its "
                       f"conditions are in the <a href='{_link(steps['classifier']['card'], root)}'>classifier's "
                       "card</a>.</p>")
    changes = "".join(f"<li>{html.escape(c)}</li>" for c in steps["comparison"]["changes"])
    sections.append(f"<h2>Comparison</h2><p><a href='{_link(steps['comparison']['card'], root)}'>DP-SGD vs DP-SGD + "
                    "thresholds</a>: every shared probe side by side, with intervals and Holm-corrected "
                    f"significance.</p><ul>{changes}</ul>")
    page = ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>rai-audit demo</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'><style>"
            "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
            "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.3rem;"
            "text-align:left;vertical-align:top}.passed{color:#17692b}.warned{color:#8a5a00}.failed{color:#a31515}"
            "</style></head><body><h1>rai-audit demo</h1><p>The bundled all-MiniLM-L6-v2, audited, fine-tuned "
            "with DP-SGD into a sentiment classifier on generated data, audited again, debiased and compared. "
            "Everything was computed offline on this machine.</p>" + "".join(sections) + "</body></html>")
    path.write_text(page, encoding="utf-8")
    return path


class DemoCommand:
    """Walk through the product on the bundled model and write an index of the cards."""

    name = "demo"
    help = "audit the bundled MiniLM, fine-tune it with DP-SGD into a classifier, audit, debias and compare it"
    examples = ("rai-audit demo --out audit-report",)

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Five steps through the product, each with its public commands: audit the bundled all-MiniLM-L6-v2; "
            "fine-tune it with DP-SGD into a sentiment classifier on generated data; audit that classifier on "
            "held-out rows with every applicable probe; debias it with group thresholds and compare; write "
            "index.html linking the cards. A second run reuses what the first trained and computed."
        )
        parser.add_argument("--out", type=Path, default=Path("audit-report"), help="output directory")
        parser.add_argument("--seed", type=seed_arg, default=0, help="seed of the data and the audits")
        parser.add_argument("--no-cache", action="store_true", help="retrain and recompute everything")

    def run(self, args: argparse.Namespace) -> int:
        summary = run_demo(args.out, seed=args.seed, cache=not args.no_cache)
        print(summary_text(summary))
        return 0


def summary_text(summary: dict[str, Any]) -> str:
    """The few lines the command prints at the end (and the README quotes)."""
    steps = summary["steps"]
    clf, thr = steps["classifier"], steps["classifier_threshold"]
    counts = ", ".join(f"{n} {s}" for s, n in clf["counts"].items())
    lines = [
        f"Encoder: {steps['encoder']['probes_ran']} probes ran ({', '.join(f'{n} {s}' for s, n in steps['encoder']['counts'].items())}).",
        f"Classifier: DP-SGD epsilon={summary['epsilon']:.3g}, held-out accuracy {_fmt(summary['held_out_accuracy'])}; "
        f"{clf['probes_ran']} probes ran ({counts}).",
        f"With group thresholds: {', '.join(f'{n} {s}' for s, n in thr['counts'].items())}; "
        + ("; ".join(steps["comparison"]["changes"]) or "no shared headline metric") + ".",
        f"Index: {summary['index']}",
    ]
    return "\n".join(lines)
