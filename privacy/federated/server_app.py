"""The Flower ``ServerApp`` (Message API): initial model, strategy loop, final weights and history.

The server loads the base model with a classification head for the run's labels (initialised from
the seed), hands it to Flower's FedAvg or FedProx (:mod:`privacy.federated.strategy`), and writes
``global.safetensors`` (the final global weights) and ``history.json`` (rounds, clients,
failures) into the run's output directory, for :class:`~privacy.federated.FederatedFineTuner`
to turn into a model directory and a training record.

``app`` reads its settings from the Flower run config (deployment: ``flwr run``);
:func:`build_server_app` binds settings directly (simulation: ``run_simulation``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from audit._io import write_json_atomic
from privacy.federated.strategy import build_strategy
from privacy.federated.task import Settings, float_state, json_safe, load_model

__all__ = ["GLOBAL_WEIGHTS", "HISTORY", "PROGRESS_PREFIX", "app", "build_server_app", "run_server"]

GLOBAL_WEIGHTS = "global.safetensors"
HISTORY = "history.json"
PROGRESS_PREFIX = "rai-audit federate: "


def _say(line: str) -> None:
    sys.stderr.write(PROGRESS_PREFIX + line + "\n")
    sys.stderr.flush()


def run_server(grid: Grid, settings: Settings) -> None:
    """Run the whole federation on ``grid`` and write the outputs into ``settings.output_dir``."""
    from safetensors.torch import save_file

    started = time.perf_counter()
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(settings.model, settings.labels, seed=settings.seed)
    initial = ArrayRecord(float_state(model))
    strategy = build_strategy(settings.strategy, num_clients=settings.num_clients, num_rounds=settings.num_rounds,
                              fraction_train=settings.fraction_train,
                              min_completed_fraction=settings.min_completed_fraction,
                              proximal_mu=settings.proximal_mu, progress=_say if settings.progress else None)
    if settings.progress:
        _say(f"{settings.strategy} with {settings.num_clients} clients for {settings.num_rounds} round(s) "
             f"({settings.engine} engine); waiting for the clients")
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=settings.num_rounds,
                            timeout=settings.round_timeout, train_config=ConfigRecord())
    final = result.arrays if len(result.arrays) else initial
    history = strategy.history()
    history["duration_s"] = time.perf_counter() - started
    history["aggregated_rounds"] = sum(1 for r in history["rounds"] if r.get("aggregated"))
    save_file({k: v.contiguous() for k, v in final.to_torch_state_dict().items()}, str(out / GLOBAL_WEIGHTS))
    write_json_atomic(out / HISTORY, json_safe(history))


def build_server_app(settings: Settings | None = None) -> ServerApp:
    """A ``ServerApp`` for ``settings`` (``None``: read them from the run config)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, settings if settings is not None else Settings.from_run_config(context.run_config))

    return server


app = build_server_app()
