"""DP-SGD step time and peak memory on the MiniLM classifier: ghost clipping and per-example hooks
against non-private training, in one run on one machine.

Every parameter of all-MiniLM-L6-v2 plus a new 2-class head is trained (22.7M parameters), with the
inputs ``DPFineTuner`` uses (explicit ``token_type_ids`` and ``position_ids`` at full batch size).
Each configuration runs in its own process, so its peak resident memory is its own. A second pair
of rows freezes the embedding tables, a common choice in DP fine-tuning, to show where the time goes.
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
# One thread by default: on a shared CPU two OpenMP threads per process spin against each other
# (measured here: 3x slower per step under load). BENCH_THREADS overrides it.
THREADS = int(os.environ.get("BENCH_THREADS", "1"))
CONFIGS = {  # name: (grad_sample_mode or None for non-private, train the embedding tables)
    "non-private": (None, True),
    "DP, ghost clipping": ("ghost", True),
    "DP, per-example hooks": ("hooks", True),
    "non-private, embeddings frozen": (None, False),
    "DP, ghost clipping, embeddings frozen": ("ghost", False),
}
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

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    mode, train_embeddings = CONFIGS[name]
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
    if mode is not None:
        import warnings

        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        warnings.filterwarnings("ignore")
        engine = PrivacyEngine(accountant="rdp")
        loader = DataLoader(TensorDataset(ids, mask, labels), batch_size=BATCH)
        # Fixed-size batches: the time of one step, not of Poisson's varying batch sizes.
        prepared = engine.make_private(module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
                                       noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                                       grad_sample_mode=mode)
        if mode == "ghost":
            model, optimizer, criterion, _ = prepared
        else:
            model, optimizer, _ = prepared
    setup_rss = _rss_mib()
    times = []
    for _ in range(WARMUP + STEPS):
        start = time.perf_counter()
        loss = criterion(model(**inputs).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"name": name, "step_s": statistics.median(times[WARMUP:]), "steps": STEPS, "tokens": width,
            "trainable": sum(p.numel() for p in params), "setup_rss_mib": setup_rss, "peak_rss_mib": peak}


def main() -> None:
    from benchmarks._results import write_section

    load_before = os.getloadavg()
    rows = []
    for name in CONFIGS:
        done = subprocess.run([sys.executable, __file__, "--worker", name], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{name}: {rows[-1]['step_s']:.3f} s/step, peak {rows[-1]['peak_rss_mib']:.0f} MiB", flush=True)
    load_after = os.getloadavg()
    by_name = {r["name"]: r for r in rows}
    base_full, base_frozen = by_name["non-private"]["step_s"], by_name["non-private, embeddings frozen"]["step_s"]
    ghost_ratio = by_name["DP, ghost clipping"]["step_s"] / base_full
    lines = [
        "## DP-SGD fine-tuning: step time and memory (`bench_dp.py`)",
        "",
        f"Model: bundled all-MiniLM-L6-v2 with a new 2-class head, fully trainable; one batch of {BATCH} sentences "
        f"({rows[0]['tokens']} tokens after padding), AdamW, noise multiplier 1.0, clipping norm 1.0, fixed-size batches; "
        f"CPU, {THREADS} thread(s); median of {STEPS} steps after {WARMUP} warm-up steps; each row in its own process. "
        f"Load average {load_before[0]:.1f} before and {load_after[0]:.1f} after the run (the machine is shared).",
        "",
        "| configuration | trainable parameters | time per step (s) | vs non-private | peak RSS (MiB) | RSS growth while training (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = base_full if "frozen" not in r["name"] else base_frozen
        lines.append(f"| {r['name']} | {r['trainable']:,} | {r['step_s']:.3f} | {r['step_s'] / base:.2f}x | "
                     f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['setup_rss_mib']:.0f} |")
    verdict = "met" if ghost_ratio <= 2 else "not met"
    lines += [
        "",
        f"- Ghost clipping against non-private, fully trainable: **{ghost_ratio:.2f}x** (aim: at most 2x, {verdict}).",
        f"- Ghost clipping against per-example hooks: **{by_name['DP, per-example hooks']['step_s'] / by_name['DP, ghost clipping']['step_s']:.2f}x** faster.",
        "- Frozen rows are compared with the non-private run with the same embeddings frozen.",
    ]
    write_section("dp", "\n".join(lines))
    print(f"ghost/non-private {ghost_ratio:.2f}x; wrote benchmarks/RESULTS.md ({platform.machine()})")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2])))
    else:
        main()
