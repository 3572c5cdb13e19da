"""``python -m benchmarks.calibration``: run the calibration suite and write its reports."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                     "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "MPLBACKEND": "Agg"}.items():
    os.environ.setdefault(_key, _value)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.calibration import suite

    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibration", description=__doc__)
    parser.add_argument("--runs", type=int, default=40, help="independent runs per condition (default 40)")
    parser.add_argument("--cases", nargs="*", help="probe names to run (default: all)")
    parser.add_argument("--seed", type=int, default=2026, help="base seed of the runs")
    parser.add_argument("--json", type=Path, default=suite.CALIBRATION_JSON,
                        help="where to write the machine-readable results (default: reports/calibration.json)")
    parser.add_argument("--no-write", action="store_true", help="print the table only; write nothing")
    parser.add_argument("--null-runs", type=int, default=1000,
                        help="most runs of each null condition (default 1000; each case caps its own, 200 for most)")
    parser.add_argument("--jobs", type=int, default=1, help="cases run in parallel worker processes (default 1)")
    parser.add_argument("--changed-only", action="store_true",
                        help="keep the results in --json of every case whose source digest is unchanged; re-run the rest")
    parser.add_argument("--mark-stale", action="store_true",
                        help="run nothing: mark each result in --json whose code has changed since it was measured "
                             "as stale, and rewrite the reports")
    args = parser.parse_args(argv)
    if args.mark_stale:
        return _mark_stale(args.json)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # Tiny models on a shared machine: one thread is faster than two threads contending.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cases = suite.select(suite.all_cases(), args.cases)
        previous = None
        if args.changed_only and args.json.is_file():
            previous = json.loads(args.json.read_text(encoding="utf-8"))
        full = not args.cases and args.runs >= 40
        write = not args.no_write and (full or args.json != suite.CALIBRATION_JSON)

        def update(run: dict) -> None:
            if write:  # after every case, so a run cut short still leaves its finished cases on disk
                suite.write_outputs(suite.to_json(run), json_path=args.json, results_md=full)

        data = suite.to_json(suite.run_suite(cases, runs=args.runs, base_seed=args.seed, jobs=args.jobs,
                                             null_runs=args.null_runs,
                                             previous=previous, on_update=update))
    finally:
        torch.set_num_threads(threads)
    print(suite.render_markdown(data))
    if not args.no_write and not write:
        print("A partial run (fewer cases or runs than the full suite) does not replace reports/calibration.json "
              "or RESULTS.md; pass --json PATH to keep it.", file=sys.stderr)
    elif write:
        suite.write_outputs(data, json_path=args.json, results_md=full)
        print(f"wrote {args.json}" + (" and benchmarks/RESULTS.md" if full else ""))
    return 0


def _mark_stale(path: Path) -> int:
    from benchmarks.calibration import suite

    data = json.loads(path.read_text(encoding="utf-8"))
    digests = {suite.case_key(c): suite.source_digest(c) for c in suite.all_cases()}
    for entries in data["probes"].values():
        for entry in entries:
            current = digests.get(f"{entry['probe']}:{entry['verdict']}")
            if entry.get("changed_during_run") or current != entry.get("source_digest"):
                entry["stale"] = True
                print(f"stale: {entry['probe']}: {entry['verdict']}")
    suite.write_outputs(data, json_path=path, results_md=path == suite.CALIBRATION_JSON)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
