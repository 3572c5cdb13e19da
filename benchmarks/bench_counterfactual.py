"""Benchmark: the counterfactual probe against a bare batched forward pass over the same inputs.

The model is the bundled all-MiniLM-L6-v2 with a (random) sequence-classification head. The probe
runs on the built-in gender, race and nationality axes (2,540 distinct inputs); the baseline tokenizes the
same texts in batches of 32 (padding to the longest text of each batch, in input order; and, for
reference, sorted by length as the probe's target does) and runs the model under
``torch.inference_mode``, nothing else. Both are timed in the same process,
in interleaved rounds (order rotated each round), after one warm-up each; the medians are compared. Each probe run gets a fresh target,
so no forward pass is served from the target's cache.

Run: ``python benchmarks/bench_counterfactual.py`` (about 2 minutes on 2 idle CPU cores). It rewrites
only its own section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                     "MPLBACKEND": "Agg"}.items():
    os.environ.setdefault(_key, _value)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from audit import load_target  # noqa: E402
from audit.context import AuditContext  # noqa: E402
from benchmarks._results import interleaved, load_record, write_section  # noqa: E402
from probes.counterfactual import CounterfactualProbe, builtin_axes, builtin_templates, fill_template  # noqa: E402

AXES = ["gender", "race", "nationality"]
BATCH = 32
REPEATS = 3


def inputs() -> list[str]:
    axes = builtin_axes()
    texts = [fill_template(t, term) for name in AXES for terms in axes[name].groups.values()
             for term in terms for t in builtin_templates()]
    return list(dict.fromkeys(texts))


def bare_forward(target, texts: list[str]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), BATCH):
            batch = target.tokenizer(texts[i: i + BATCH], padding=True, truncation=True, return_tensors="pt")
            torch.softmax(target.model(**batch).logits, dim=-1)
    return time.perf_counter() - start


def probe_run() -> tuple[float, float, str]:
    target = load_target(kind="sequence-classification", device="cpu", progress=False, batch_size=BATCH)
    probe = CounterfactualProbe(axes=AXES)
    forward = {"s": 0.0}
    original = target.predict_proba

    def timed(texts):
        t0 = time.perf_counter()
        out = original(texts)
        forward["s"] += time.perf_counter() - t0
        return out

    target.predict_proba = timed  # type: ignore[method-assign]
    start = time.perf_counter()
    result = probe.run(target, AuditContext(seed=0).for_probe("counterfactual"))
    return time.perf_counter() - start, forward["s"], result.status


def main() -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    texts = inputs()
    baseline_target = load_target(kind="sequence-classification", device="cpu", progress=False, batch_size=BATCH)
    bare_forward(baseline_target, texts[:256])  # warm-up
    probe_run()  # warm-up: imports (fairlearn, matplotlib, scipy) and first-call costs
    by_length = sorted(texts, key=lambda t: len(baseline_target.tokenizer.tokenize(t)))
    bare, bare_sorted, probe, forward = [], [], [], []
    statuses = []

    def run_probe() -> None:
        total, fwd, status = probe_run()
        probe.append(total)
        forward.append(fwd)
        statuses.append(status)

    variants = {"bare": lambda: bare.append(bare_forward(baseline_target, texts)),
                "sorted": lambda: bare_sorted.append(bare_forward(baseline_target, by_length)),
                "probe": run_probe}
    with load_record() as load:
        interleaved(variants, rounds=REPEATS, warmup=0)
    status = statuses[-1]
    b, p, f = statistics.median(bare), statistics.median(probe), statistics.median(forward)
    bs = statistics.median(bare_sorted)
    ratio = p / b
    # Other processes share the machine; each probe run is also compared with the bare run of its round.
    paired = [x / y for x, y in zip(probe, bare, strict=True)]
    lines = [
        "## Counterfactual probe vs a bare batched forward pass",
        "",
        f"MiniLM-L6 classifier (random head), {len(texts):,} counterfactual inputs (axes {', '.join(AXES)}), "
        f"batch size {BATCH}, CPU ({platform.processor() or platform.machine()}, torch threads "
        f"{torch.get_num_threads()}), median of {REPEATS} interleaved rounds (order rotated each round) after a warm-up.",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| bare batched forward pass (tokenize + model + softmax), texts in input order: **baseline** | {b:.2f} |",
        f"| the same, texts sorted by length (less padding) | {bs:.2f} |",
        f"| counterfactual probe, total | {p:.2f} |",
        f"| of which the model (`predict_proba`, length-sorted batches) | {f:.2f} |",
        f"| of which statistics, fairlearn, figures, report | {p - f:.2f} |",
        "",
        f"**Ratio probe / bare forward: {ratio:.3f}** (ratio of medians; aim: at most 1.15). Ratio of each probe run "
        f"to the input-order bare run of the same round: {', '.join(f'{r:.3f}' for r in paired)}. Against the length-sorted bare pass "
        f"(the probe sorts too, so this isolates its own overhead): {p / bs:.3f}. Probe status on this model: {status}.",
        f"All runs (bare / probe): {', '.join(f'{x:.2f}' for x in bare)} / {', '.join(f'{x:.2f}' for x in probe)}.",
    ]
    written = write_section("counterfactual", "\n".join(lines), load=load)
    print("\n".join(lines))
    if not written:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
