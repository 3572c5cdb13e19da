"""Simulated FedAvg against centralized training of the bundled MiniLM, with start-up shown on its own.

Workload where training dominates (issue 20): the bundled all-MiniLM-L6-v2 with a new
classification head, ``CLIENTS`` clients of ``ROWS_PER_CLIENT`` rows each (a sentiment task with
varied wording and 5% label noise), ``ROUNDS`` rounds of ``LOCAL_EPOCHS`` local epoch(s). The
centralized baseline trains one model from the same initial weights on the union of the clients'
training rows for ``ROUNDS * LOCAL_EPOCHS`` epochs and is scored on the union of their held-out
rows, as the federated model is.

What is timed, in interleaved runs (federated, centralized, centralized, federated, ...):

- **federated wall time**: the whole ``FederatedFineTuner.fit`` (Ray start, actors, every round
  with evaluation at every client, final scoring);
- **start-up**: that wall time minus the rounds (Ray and the ServerApp starting, the final
  model being built and scored), and **round 1** apart from the **later rounds**: round 1 also
  pays for each Ray actor importing torch and loading the model, which later rounds reuse
  (actors and loaded models stay warm across rounds: ``client_app._MODEL_CACHE`` and the data
  cache live in the actor process);
- **centralized**: training plus scoring, on all the cores the federated run may use.

The headline ratios are the federated rounds against the centralized time, both as measured
(round 1 included) and in the steady state (the later-round mean times the number of rounds:
what grows with the workload); the start-up, with and without round 1's warm-up, is reported beside them. The 1-minute load average is recorded
around the measurement; on a busy machine the section is not written (see ``benchmarks/_results.py``).
Run on an idle machine: ``.venv/bin/python benchmarks/bench_federated.py``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

for key, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0"}.items():
    os.environ.setdefault(key, value)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks._results import cores, interleaved, load_record, write_section  # noqa: E402

CLIENTS, ROWS_PER_CLIENT, ROUNDS, LOCAL_EPOCHS = 4, 300, 3, 1
LR, BATCH, MAX_LENGTH, RUNS = 5e-5, 16, 32, 2

SUBJECTS = ["the movie", "this film", "the food", "our hotel", "the service", "the book", "that show", "the app",
            "the staff", "this phone", "the concert", "the course"]
POSITIVE = ["was wonderful", "felt great", "made me happy", "is worth every penny", "exceeded my hopes",
            "was a delight", "works beautifully", "I would recommend to anyone"]
NEGATIVE = ["was awful", "felt like a waste", "made me angry", "is not worth it", "fell far short",
            "was a disappointment", "keeps breaking", "I would warn everyone about"]
FILLERS = ["honestly", "to be fair", "after two weeks", "on the whole", "as expected", "surprisingly", "", ""]


def make_data(n: int, seed: int = 0) -> pd.DataFrame:
    """A two-class sentiment task over varied phrasings, with 5% label noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        words = [rng.choice(FILLERS), rng.choice(["he said", "she said", "they said"]), rng.choice(SUBJECTS),
                 rng.choice(POSITIVE if label else NEGATIVE)]
        if rng.random() < 0.05:
            label = 1 - label
        rows.append({"text": " ".join(w for w in words if w), "label": label})
    return pd.DataFrame(rows)


def federated(model: Path, data: Path) -> dict:
    from privacy.federated import FederatedFineTuner

    fed = FederatedFineTuner(num_clients=CLIENTS, num_rounds=ROUNDS, local_epochs=LOCAL_EPOCHS, learning_rate=LR,
                             batch_size=BATCH, max_length=MAX_LENGTH, num_cpus=min(cores(), CLIENTS), device="cpu")
    start = time.perf_counter()
    fed.fit(model, data)
    wall = time.perf_counter() - start
    rounds = [float(r["duration_s"]) for r in fed.record_["rounds"]]
    return {"wall": wall, "rounds": rounds, "startup": wall - sum(rounds), "warm_up": fed.record_.get("warm_up_s") or 0.0,
            "accuracy": fed.accuracy_,
            "complete": fed.record_["complete"]}


def centralized(model: Path, data: Path) -> dict:
    from privacy.federated.task import (
        Settings,
        build_client_data,
        client_seed,
        evaluate,
        load_model,
        load_tokenizer,
        select_client_rows,
        train_local,
    )

    start = time.perf_counter()
    frame = pd.read_csv(data, keep_default_na=False)
    settings = Settings(model=str(model), data=str(data), text_column="text", label_column="label",
                        labels=("0", "1"), num_clients=CLIENTS, num_rounds=ROUNDS)
    clients = [build_client_data(frame, select_client_rows(frame, settings, i, CLIENTS, "data"), settings,
                                 name=str(i), partition_id=i, source="data") for i in range(CLIENTS)]
    net = load_model(model, settings.labels, seed=settings.seed)  # the federated run's initial weights
    tokenizer = load_tokenizer(model)
    train_local(net, tokenizer, [t for c in clients for t in c.train_texts], [y for c in clients for y in c.train_y],
                epochs=ROUNDS * LOCAL_EPOCHS, batch_size=BATCH, learning_rate=LR, max_length=MAX_LENGTH,
                seed=client_seed(settings.seed, 0, "centralized"))
    acc = evaluate(net, tokenizer, [t for c in clients for t in c.eval_texts], [y for c in clients for y in c.eval_y],
                   max_length=MAX_LENGTH).accuracy
    return {"wall": time.perf_counter() - start, "accuracy": acc}


def main() -> None:
    from audit.target import default_model_path

    torch.set_num_threads(cores())  # the centralized trainer may use every core the federation may use
    model = Path(default_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.csv"
        make_data(CLIENTS * ROWS_PER_CLIENT).to_csv(data, index=False)
        with load_record() as load:
            times, last = interleaved({"federated": lambda: federated(model, data),
                                       "centralized": lambda: centralized(model, data)}, rounds=RUNS, warmup=0)
    fed, central = last["federated"], last["centralized"]
    fed_wall = float(np.median(times["federated"]))
    central_wall = float(np.median(times["centralized"]))
    rounds_s = sum(fed["rounds"])
    later = fed["rounds"][1:]
    later_mean = (sum(later) / len(later)) if later else float("nan")
    steady = later_mean * ROUNDS  # what the rounds cost once every actor has imported torch and loaded the model
    lines = [
        "## Simulated FedAvg vs centralized training, MiniLM (`bench_federated.py`)",
        "",
        f"Bundled all-MiniLM-L6-v2 with a new 2-class head, CPU; {CLIENTS} clients x {ROWS_PER_CLIENT} generated rows "
        f"(varied sentiment phrasings, 5% label noise; 20% of each client held out), {ROUNDS} rounds x "
        f"{LOCAL_EPOCHS} local epoch(s), AdamW lr {LR}, batch {BATCH}, max length {MAX_LENGTH}. Centralized: one "
        f"model from the same initial weights on the union of the clients' training rows, {ROUNDS * LOCAL_EPOCHS} "
        f"epoch(s), {cores()} thread(s). Federated: {min(cores(), CLIENTS)} Ray actor(s), one CPU each. Median of "
        f"{RUNS} interleaved runs each. Start-up = federated wall time minus its rounds: Ray, the ServerApp, "
        "final scoring and the warm-up before round 1, in which every client's Ray actor starts, imports torch and "
        "loads the model and its rows (`query.warm_up`), kept for the rounds.",
        "",
        "| measure | seconds | vs centralized |",
        "|---|---|---|",
        f"| federated, whole fit | {fed_wall:.1f} | {fed_wall / central_wall:.2f}x |",
        f"| federated, start-up only | {fed['startup']:.1f} | |",
        f"| of which the clients' warm-up (actors start, model loads) | {fed['warm_up']:.1f} | |",
        f"| federated, rounds only | {rounds_s:.1f} | **{rounds_s / central_wall:.2f}x** |",
        f"| round 1 | {fed['rounds'][0]:.1f} | |",
        f"| later rounds, mean | {later_mean:.1f} | |",
        f"| steady state: later-round mean x {ROUNDS} rounds | {steady:.1f} | **{steady / central_wall:.2f}x** |",
        f"| whole fit - steady state | {fed_wall - steady:.1f} | |",
        f"| centralized, training and scoring | {central_wall:.1f} | 1.00x |",
        "",
        f"Held-out accuracy: federated {fed['accuracy']:.3f}, centralized {central['accuracy']:.3f} "
        f"(difference {fed['accuracy'] - central['accuracy']:+.3f}); every round complete: {fed['complete']}.",
        "Goal (issue 20): federated rounds within 1.5x of centralized wall time on this workload.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("federated", text, load=load)


if __name__ == "__main__":
    main()
