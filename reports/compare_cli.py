"""The ``rai-audit compare`` command: a comparison card and JSON from several results files.

Registered in the ``rai_audit.commands`` entry-point group; the core CLI knows it only from there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["CompareCommand"]


class CompareCommand:
    """Compare audits against the first one (the baseline): side by side, with intervals."""

    name = "compare"
    help = "compare several results.json files against the first (the baseline) and write a comparison card"
    examples = (
        "rai-audit compare base/results.json thr/results.json cda/results.json --out comparison/",
    )

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Write comparison.json and comparison.html: every probe that ran on all inputs side by side, the "
            "change against the first file with an interval and its significance (Holm-Bonferroni), and the "
            "change in task performance beside each fairness gain."
        )
        parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS_JSON",
                            help="results.json files; the first is the baseline")
        parser.add_argument("--out", required=True, type=Path, help="output directory")
        parser.add_argument("--name", action="append", dest="names", metavar="LABEL",
                            help="label for each results file, in order (repeat once per file)")
        parser.add_argument("--allow-different-models", action="store_true",
                            help="compare models not derived from the baseline, or different probe sets")
        parser.add_argument("--alpha", type=float, default=0.05, help="family-wise significance level (default 0.05)")

    def run(self, args: argparse.Namespace) -> int:
        from audit.results import AuditResults
        from reports.compare import compare_results, write_comparison

        loaded = [AuditResults.load(path) for path in args.results]
        comparison = compare_results(loaded, names=args.names, allow_different_models=args.allow_different_models,
                                     alpha=args.alpha)
        paths = write_comparison(comparison, args.out)
        for note in comparison["warnings"]:
            print(f"warning: {note}")
        for t in comparison["tradeoffs"]:
            parts = [_describe(e) for e in t["fairness"] + t["performance"]]
            print(f"{t['name']}: " + ("; ".join(parts) if parts else "no shared headline or performance metric"))
        print(f"Comparison: {paths['html']} and {paths['json']}")
        return 0


def _describe(entry: dict) -> str:
    mark = ""
    if entry["significant"]:
        mark = " (significantly better)" if entry["improved"] else " (significantly worse)"
    return f"{entry['probe']}.{entry['metric']} {entry['baseline']:.4g} -> {entry['value']:.4g}{mark}"
