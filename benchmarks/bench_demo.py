"""`make demo` cold and warm: wall time and peak memory of `rai-audit demo`, each in a fresh process.

Cold: an empty output directory (trains both models, runs every probe). Warm: the same directory
again (every model and probe result comes from the cache; the demo reports the hits, and this
script refuses to call a run warm unless it did). Peak memory is the largest resident set of the
demo process and its children (``ru_maxrss`` of the children, Linux kilobytes). The issue's goals:
under 3 minutes cold, under 30 s warm, under 2 GiB.

Run on an idle machine: ``.venv/bin/python benchmarks/bench_demo.py`` (``--threads N`` pins torch's
threads; the default is what the demo gets from ``make demo``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import write_section

GOALS = {"cold_s": 180.0, "warm_s": 30.0, "peak_gib": 2.0}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1",
           "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0",
           "FLWR_TELEMETRY_ENABLED": "0"}
# A one-shot child per run: its ru_maxrss is that run's peak alone, not the largest seen so far.
_CHILD = ("import resource, subprocess, sys, json, time; t = time.perf_counter(); "
          "code = subprocess.call(sys.argv[1:]); w = time.perf_counter() - t; "
          "print(json.dumps({'code': code, 'wall_s': w, "
          "'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def measure(out: Path, env: dict[str, str]) -> dict[str, float]:
    rai_audit = Path(sys.executable).with_name("rai-audit")
    done = subprocess.run([sys.executable, "-c", _CHILD, str(rai_audit), "demo", "--out", str(out)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_demo: the demo failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if row["code"] != 0:
        raise SystemExit(f"bench_demo: `rai-audit demo` exited {row['code']}:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "demo.json").read_text(encoding="utf-8"))
    return {"wall_s": row["wall_s"], "peak_gib": row["peak_kib"] / 2**20, "cache": _cache(summary)}


def _cache(summary: dict) -> dict[str, object]:
    steps = summary["steps"]
    audits = [steps[k] for k in ("encoder", "classifier", "classifier_fairness", "classifier_threshold")]
    return {"models_reused": [steps[k]["cache"] == "hit" for k in ("train_dp", "debias")],
            "probes_cached": sum(a["cached_probes"] for a in audits), "probes": sum(a["n_probes"] for a in audits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="OMP/MKL threads for the demo process")
    args = parser.parse_args()
    env = {**os.environ, **OFFLINE}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory(prefix="rai-bench-demo-") as tmp:
        out = Path(tmp) / "audit-report"
        cold = measure(out, env)
        warm = measure(out, env)
    if not all(warm["cache"]["models_reused"]) or warm["cache"]["probes_cached"] != warm["cache"]["probes"]:
        raise SystemExit(f"bench_demo: the second run did not reuse the cache ({warm['cache']}); it is not a warm run.")
    peak = max(cold["peak_gib"], warm["peak_gib"])
    rows = [("cold (empty output directory)", cold), ("warm (same directory again)", warm)]
    body = ["## `make demo`: cold and warm (`bench_demo.py`)", "",
            f"`rai-audit demo` in a fresh process, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch threads: {args.threads or 'default'}. Peak memory: largest resident set of the demo process.", "",
            "| run | wall time | goal | peak memory | goal | probes from cache |", "|---|---|---|---|---|---|"]
    for (name, r), goal in zip(rows, ("cold_s", "warm_s")):
        body.append(f"| {name} | {r['wall_s']:.0f} s | < {GOALS[goal]:.0f} s | {r['peak_gib']:.2f} GiB | "
                    f"< {GOALS['peak_gib']:.0f} GiB | {r['cache']['probes_cached']}/{r['cache']['probes']} |")
    met = cold["wall_s"] < GOALS["cold_s"] and warm["wall_s"] < GOALS["warm_s"] and peak < GOALS["peak_gib"]
    body += ["", f"Goals {'met' if met else 'NOT met'}."]
    write_section("demo", "\n".join(body))
    print("\n".join(body))


if __name__ == "__main__":
    main()
