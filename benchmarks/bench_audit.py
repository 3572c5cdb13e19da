"""The whole audit: ``rai-audit run`` on the bundled model with every applicable probe, wall time and peak memory.

Each run is a fresh process under ``/usr/bin/time -v`` (peak resident set size as the kernel
counts it), with ``--no-cache`` so no probe is read back from an earlier run. The first run also
pays for cold imports and cold file caches; the table shows every run. Per-probe times come from
the run's own ``results.json`` (``duration_s`` of each probe). Goals (issue 20): under 60 s and
under 2 GiB.

Run: ``.venv/bin/python benchmarks/bench_audit.py [--runs 3]`` on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import load_record, write_section

GOAL_S, GOAL_GIB = 60.0, 2.0
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0"}


def _cli() -> str:
    here = Path(sys.executable).with_name("rai-audit")
    return str(here) if here.exists() else "rai-audit"


def one_run(out: Path) -> dict[str, object]:
    """One ``rai-audit run --no-cache`` under ``/usr/bin/time -v``: wall s, peak RSS in MiB, per-probe seconds."""
    argv = ["/usr/bin/time", "-v", _cli(), "run", "--out", str(out), "--no-cache", "--no-progress", "--quiet"]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **ENV}, check=False)
    if done.returncode not in (0, 1):  # 1: a probe warned/failed, still a complete audit
        said = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("\t")]
        raise SystemExit(f"rai-audit run exited {done.returncode}: {said[-1] if said else done.stderr.strip()}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    if wall is None or rss is None:
        raise SystemExit("could not read /usr/bin/time -v output")
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    probes = {r["probe"]: (r["status"], float(r.get("duration_s") or 0.0)) for r in results["results"]}
    return {"wall_s": seconds, "rss_mib": int(rss.group(1)) / 1024, "probes": probes,
            "card_kib": (out / "model_card.html").stat().st_size / 1024}


def render(runs: list[dict[str, object]]) -> str:
    best = min(runs, key=lambda r: r["wall_s"])  # type: ignore[arg-type, return-value]
    peak = max(r["rss_mib"] for r in runs)  # type: ignore[type-var]
    lines = ["## Whole audit (`rai-audit run` on the bundled model)", "",
             f"{len(runs)} fresh processes, `--no-cache`, every probe that applies to the bundled encoder; "
             f"wall time and peak RSS from `/usr/bin/time -v`. Goals: under {GOAL_S:.0f} s and under {GOAL_GIB:g} GiB.",
             "", "| run | wall s | peak RSS MiB | card KiB |", "|---|---|---|---|"]
    lines += [f"| {i} | {r['wall_s']:.1f} | {r['rss_mib']:.0f} | {r['card_kib']:.0f} |" for i, r in enumerate(runs, 1)]
    met_t = best["wall_s"] <= GOAL_S  # type: ignore[operator]
    met_m = peak / 1024 <= GOAL_GIB  # type: ignore[operator]
    lines += ["", f"Fastest run {best['wall_s']:.1f} s ({'met' if met_t else 'NOT met'}); highest peak RSS "
                  f"{peak:.0f} MiB ({'met' if met_m else 'NOT met'}).", "",
              "Per probe (fastest run; from `results.json`):", "", "| probe | status | seconds |", "|---|---|---|"]
    probes = best["probes"]  # type: ignore[assignment]
    lines += [f"| {name} | {status} | {secs:.2f} |" for name, (status, secs) in probes.items()]  # type: ignore[union-attr]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    runs = []
    with load_record() as load, tempfile.TemporaryDirectory(prefix="rai-bench-audit-") as scratch:
        for i in range(args.runs):
            runs.append(one_run(Path(scratch) / f"run{i}"))
            print(f"run {i + 1}: {runs[-1]['wall_s']:.1f} s, {runs[-1]['rss_mib']:.0f} MiB", flush=True)
    body = render(runs)
    print(body)
    if not args.no_write:
        write_section("audit", body, load=load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
