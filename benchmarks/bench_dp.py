"""DP-SGD step time and peak memory on the MiniLM classifier: ghost clipping and per-example hooks
against non-private training, in one run on one machine.

Every parameter of all-MiniLM-L6-v2 plus a new 2-class head is trained (22.7M parameters), with the
inputs ``DPFineTuner`` uses (explicit ``token_type_ids`` and ``position_ids`` at full batch size).
Each configuration runs in its own process, so its peak resident memory is its own, once per round
in interleaved rounds. Opacus 1.6's options are compared: ghost clipping with the model wrapped in a
``GradSampleModule`` or with ``wrap_model=False`` (hooks on the transformers model itself), and
per-example gradients through hooks. The ghost run times Opacus' norm sampler of each layer type,
which shows which layers dominate the per-sample norms. A second pair of rows freezes the embedding
tables, a common choice in DP fine-tuning, to show what the embedding norms cost.
Run: ``.venv/bin/python benchmarks/bench_dp.py``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 32
WARMUP = 1
STEPS = 5
ROUNDS = 3  # each configuration runs once per round, the order rotated, so drift falls on all alike
# One thread by default: on a shared CPU two OpenMP threads per process spin against each other
# (measured here: 3x slower per step under load). BENCH_THREADS overrides it.
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
# name: Opacus grad_sample_mode (None: non-private), wrap_model, whether the embedding tables train
CONFIGS = {
    "non-private": {"mode": None, "wrap_model": True, "embeddings": True},
    "DP, ghost clipping": {"mode": "ghost", "wrap_model": True, "embeddings": True},
    "DP, ghost clipping, first pass without weight gradients (rai-audit's ghost_backward)": {
        "mode": "ghost", "wrap_model": True, "embeddings": True, "lean": True},
    "DP, ghost clipping, wrap_model=False (hooks on the model itself)": {"mode": "ghost", "wrap_model": False,
                                                                         "embeddings": True},
    "DP, per-example hooks": {"mode": "hooks", "wrap_model": True, "embeddings": True},
    "non-private, embeddings frozen": {"mode": None, "wrap_model": True, "embeddings": False},
    "DP, ghost clipping, embeddings frozen": {"mode": "ghost", "wrap_model": True, "embeddings": False},
}
OPACUS = "DP, ghost clipping"
PROFILED = "DP, ghost clipping, first pass without weight gradients (rai-audit's ghost_backward)"
WORDS = ["the", "a", "movie", "film", "food", "service", "was", "is", "very", "really", "not", "quite", "good",
         "great", "bad", "terrible", "happy", "sad", "slow", "fast", "staff", "room", "price", "value", "would",
         "again", "never", "always", "friendly", "rude", "clean", "dirty", "loud", "quiet"]
def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(name: str) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    from audit.target import default_model_path
    from privacy.dp import ghost_backward

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    config = CONFIGS[name]
    mode, train_embeddings = config["mode"], config["embeddings"]
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    if not train_embeddings:
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                module.weight.requires_grad_(False)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(8, 20)))) for _ in range(BATCH)]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = torch.as_tensor(rng.integers(0, 2, BATCH))
    width = ids.shape[1]
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
              "position_ids": torch.arange(width).unsqueeze(0).repeat(BATCH, 1)}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    norm_time: dict[str, float] = {}
    if mode is not None:
        import warnings

        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        warnings.filterwarnings("ignore")
        if name == PROFILED:
            _time_norm_samplers(norm_time)
        engine = PrivacyEngine(accountant="rdp")
        loader = DataLoader(TensorDataset(ids, mask, labels), batch_size=BATCH)
        # Fixed-size batches: the time of one step, not of Poisson's varying batch sizes.
        prepared = engine.make_private(module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
                                       noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                                       grad_sample_mode=mode, wrap_model=config["wrap_model"])
        wrapped = prepared[0]
        if config["wrap_model"]:
            model = wrapped  # the GradSampleModule; with wrap_model=False the hooks sit on the model itself
        optimizer = prepared[1]
        if mode == "ghost":
            criterion = prepared[2]
    phases: dict[str, float] = {}
    if name in (PROFILED, "non-private"):
        _time_phases(phases)
    setup_rss = _rss_mib()
    times = []
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            norm_time.clear()  # the profile covers the timed steps only
            phases.clear()
        start = time.perf_counter()
        begin = time.perf_counter()
        loss = criterion(model(**inputs).logits, labels)
        phases["forward (with the norm hooks' activation capture)"] = (
            phases.get("forward (with the norm hooks' activation capture)", 0.0) + time.perf_counter() - begin)
        if config.get("lean"):
            ghost_backward(loss)
        else:
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"name": name, "step_s": statistics.median(times[WARMUP:]), "steps": STEPS, "tokens": width,
            "trainable": sum(p.numel() for p in params), "setup_rss_mib": setup_rss, "peak_rss_mib": peak,
            "norm_s_per_step": {k: v / STEPS for k, v in norm_time.items()},
            "phase_s_per_step": {k: v / STEPS for k, v in phases.items()}}


def _time_phases(totals: dict[str, float]) -> None:
    """Time the parts of a step: the first (norm) pass, the second backward, the optimizer step
    and, inside it, Opacus' noise draw."""
    import torch

    def timed(owner, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, attribute, wrapper)

    timed(torch.autograd, "grad", "first pass: per-example norms (autograd.grad, no weight gradients)")
    timed(torch.Tensor, "backward", "backward (non-private) / second pass: clipped, summed gradient (DP)")
    timed(torch.optim.AdamW, "step", "AdamW update (for DP, inside the optimizer step above)")
    try:
        import opacus.optimizers.optimizer_fast_gradient_clipping as fast

        timed(fast.DPOptimizerFastGradientClipping, "step", "optimizer step (DP: noise, scaling, AdamW)")
        timed(fast, "_generate_noise", "  of which drawing the Gaussian noise")
    except ImportError:
        pass


def _time_norm_samplers(totals: dict[str, float]) -> None:
    """Wrap Opacus' ghost-clipping norm samplers so each layer type's per-sample norm time is summed."""
    import functools

    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping

    samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    for layer_type, sampler in list(samplers.items()):
        @functools.wraps(sampler)
        def timed(layer, activations, backprops, _sampler=sampler, _name=layer_type.__name__):
            start = time.perf_counter()
            out = _sampler(layer, activations, backprops)
            totals[_name] = totals.get(_name, 0.0) + time.perf_counter() - start
            return out

        samplers[layer_type] = timed


_PHASE_ORDER = ("forward", "first pass", "backward", "optimizer step", "  of which", "AdamW")


def _phase_rows(plain: dict[str, float], dp: dict[str, float]) -> list[tuple[str, float]]:
    """Each part of the step in the order a step runs them (the noise under the DP optimizer step)."""
    names = sorted(dict.fromkeys([*plain, *dp]),
                   key=lambda k: next((i for i, p in enumerate(_PHASE_ORDER) if k.startswith(p)), len(_PHASE_ORDER)))
    return [(k, dp.get(k, 0.0)) for k in names]


def _run_worker(name: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", name], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks._results import interleaved, load_record, write_section

    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    variants = {name: (lambda n=name: runs[n].append(_run_worker(n))) for name in CONFIGS}
    with load_record() as load:
        interleaved(variants, rounds=ROUNDS, warmup=0)
    rows = []
    for name, results in runs.items():
        step = statistics.median(r["step_s"] for r in results)
        rows.append({**results[-1], "step_s": step, "rounds": [r["step_s"] for r in results],
                     "peak_rss_mib": max(r["peak_rss_mib"] for r in results)})
        print(f"{name}: {step:.3f} s/step (rounds {', '.join(f'{r:.3f}' for r in rows[-1]['rounds'])}), "
              f"peak {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    by_name = {r["name"]: r for r in rows}
    base_full, base_frozen = by_name["non-private"]["step_s"], by_name["non-private, embeddings frozen"]["step_s"]
    ghost, opacus = by_name[PROFILED], by_name[OPACUS]
    ghost_ratio = ghost["step_s"] / base_full
    lines = [
        "## DP-SGD fine-tuning: step time and memory (`bench_dp.py`)",
        "",
        f"Model: bundled all-MiniLM-L6-v2 with a new 2-class head, fully trainable; one batch of {BATCH} sentences "
        f"({rows[0]['tokens']} tokens after padding), AdamW, noise multiplier 1.0, clipping norm 1.0, fixed-size batches; "
        f"CPU, {THREADS} thread(s); per configuration the median of {STEPS} steps after {WARMUP} warm-up step, each "
        f"in its own process, then the median over {ROUNDS} interleaved rounds (order rotated each round).",
        "",
        "| configuration | trainable parameters | time per step (s) | vs non-private | peak RSS (MiB) | "
        "RSS growth while training (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = base_full if "frozen" not in r["name"] else base_frozen
        lines.append(f"| {r['name']} | {r['trainable']:,} | {r['step_s']:.3f} | {r['step_s'] / base:.2f}x | "
                     f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['setup_rss_mib']:.0f} |")
    verdict = "met" if ghost_ratio <= 1.5 else "not met"
    norms = ghost["norm_s_per_step"]
    total_norm = sum(norms.values())
    lines += [
        "",
        f"- rai-audit's DP-SGD step (ghost clipping with the light first pass, `privacy.dp.ghost_backward`) against "
        f"non-private, fully trainable: **{ghost_ratio:.2f}x** (aim: at most 1.5x, {verdict}); Opacus' own ghost "
        f"clipping {opacus['step_s'] / base_full:.2f}x. Both give the same clipped gradients (tests/test_dp_ghost.py).",
        f"- Ghost clipping against per-example hooks: **{by_name['DP, per-example hooks']['step_s'] / ghost['step_s']:.2f}x** faster.",
        "- Frozen rows are compared with the non-private run with the same embeddings frozen.",
        "",
        f"Where ghost clipping's time goes (profiled run, per step of {ghost['step_s']:.3f} s): per-sample gradient "
        f"norms {total_norm:.3f} s ({total_norm / ghost['step_s']:.0%}), by layer type:",
        "",
        "| layer type | norm time per step (s) | share of the step |",
        "|---|---|---|",
        *(f"| {k} | {v:.3f} | {v / ghost['step_s']:.0%} |" for k, v in sorted(norms.items(), key=lambda kv: -kv[1])),
        "",
        "Each part of the step, per step (s), profiled run against the non-private run:",
        "",
        "| part | non-private | DP (rai-audit) |",
        "|---|---|---|",
        *(f"| {k} | {by_name['non-private']['phase_s_per_step'].get(k, 0.0):.3f} | {v:.3f} |"
          for k, v in _phase_rows(by_name["non-private"]["phase_s_per_step"], ghost["phase_s_per_step"])),
        "",
        "What remains over the non-private step is what two-pass ghost clipping needs: the norm pass (a backward "
        "through every layer for the output gradients the norms are made of, though no longer the weight "
        "gradients), the second backward for the clipped sum (the same work as the non-private backward), the "
        "Gaussian noise (one draw per trainable parameter, 22.7 million per step here) and the forward hooks "
        "keeping each layer's activations for the norms.",
    ]
    written = write_section("dp", "\n".join(lines), load=load)
    print(f"ghost/non-private {ghost_ratio:.2f}x; {'wrote' if written else 'did not write'} benchmarks/RESULTS.md "
          f"({platform.machine()})")
    if not written:
        raise SystemExit(1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2])))
    else:
        main()
