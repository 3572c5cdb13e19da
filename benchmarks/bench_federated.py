"""Simulated FedAvg (5 clients) against centralized training on the same rows and epochs.

Wall time of the whole federated fit (Ray start, actors, rounds) and of its rounds alone, against
training one model centrally on the union of the clients' training rows for ``num_rounds *
local_epochs`` epochs from the same initial weights; and the accuracy gap on the union of the
clients' held-out rows. IID and Dirichlet(0.5) non-IID splits, same data.
Run: ``.venv/bin/python benchmarks/bench_federated.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks._results import write_section  # noqa: E402
from privacy.federated import FederatedFineTuner  # noqa: E402
from tests.tiny import make_tiny_model  # noqa: E402

ROWS, CLIENTS, ROUNDS, LOCAL_EPOCHS, LR = 600, 5, 3, 2, 3e-3


def make_data(n: int, seed: int = 0) -> pd.DataFrame:
    """Sentiment over the tiny vocabulary (5% label noise), with a sensitive attribute."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        pronoun = ["he", "she"][int(rng.integers(2))]
        adjective = rng.choice(["good", "great", "happy", "love"] if label else ["bad", "terrible", "sad", "hate"])
        words = [pronoun, "said", "the", rng.choice(["movie", "film", "food", "office", "family"]), "was",
                 rng.choice(["very", "really", "so", ""]), adjective]
        if rng.random() < 0.05:
            label = 1 - label
        rows.append({"text": " ".join(w for w in words if w), "label": label, "sex": "m" if pronoun == "he" else "f"})
    return pd.DataFrame(rows)


def run(model: Path, data: Path, partition: str) -> dict:
    fed = FederatedFineTuner(num_clients=CLIENTS, num_rounds=ROUNDS, local_epochs=LOCAL_EPOCHS, learning_rate=LR,
                             batch_size=16, max_length=16, partition=partition, sensitive_features="sex",
                             baseline=True, num_cpus=min(2, os.cpu_count() or 1))
    start = time.perf_counter()
    fed.fit(model, data)
    total = time.perf_counter() - start
    rec = fed.record_
    central = rec["centralized"]
    return {"partition": partition, "federated_s": total - central["duration_s"], "rounds_s": fed.history_["duration_s"],
            "central_s": central["duration_s"], "federated_acc": rec["final"]["accuracy"],
            "central_acc": central["accuracy"], "gap": rec["best_worst_gap"]["gap"]}


def main() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        model = make_tiny_model("encoder", Path(tmp) / "model")
        data = Path(tmp) / "data.csv"
        make_data(ROWS).to_csv(data, index=False)
        results = [run(model, data, "iid"), run(model, data, "dirichlet:0.5")]
    lines = [
        "## Simulated FedAvg vs centralized training (`bench_federated.py`)",
        "",
        f"Tiny BERT (hidden 32, 2 layers) on CPU; {ROWS} generated rows (sentiment over a small vocabulary, 5% label "
        f"noise); {CLIENTS} clients, {ROUNDS} rounds x {LOCAL_EPOCHS} local epochs, AdamW lr {LR}, batch 16. "
        f"Centralized: one model, same initial weights, the union of the clients' training rows, "
        f"{ROUNDS * LOCAL_EPOCHS} epochs. Accuracy on the union of the clients' held-out rows (20% of each). "
        "Federated wall time is the whole fit (Ray start, one actor per CPU, every round with evaluation); "
        "rounds is the ServerApp's strategy loop alone. One run each.",
        "",
        "| split | federated wall time (s) | of which rounds (s) | centralized (s) | time ratio | federated accuracy | "
        "centralized accuracy | accuracy gap | best-worst client gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['partition']} | {r['federated_s']:.1f} | {r['rounds_s']:.1f} | {r['central_s']:.1f} | "
                     f"**{r['federated_s'] / r['central_s']:.1f}x** | {r['federated_acc']:.3f} | {r['central_acc']:.3f} | "
                     f"**{r['federated_acc'] - r['central_acc']:+.3f}** | {r['gap']:.3f} |")
    iid = results[0]
    lines += ["", f"- IID: federated accuracy is {abs(iid['federated_acc'] - iid['central_acc']) * 100:.1f} points from "
                  "centralized (aim: within 3).",
              f"- The rounds alone take {iid['rounds_s'] / iid['central_s']:.1f}x the centralized time (IID); the rest "
              "of the federated wall time is Ray and actor start-up (each actor imports torch and transformers)."]
    write_section("federated", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
