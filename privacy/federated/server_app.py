"""The Flower ``ServerApp`` (Message API): initial model, strategy loop, final weights and history.

The server loads the base model with a classification head for the run's labels (initialised from
the seed), hands it to Flower's FedAvg or FedProx (:mod:`privacy.federated.strategy`), and writes
``global.safetensors`` (the latest aggregated global weights, after every round) and
``history.json`` (rounds, clients, failures, the round the weights are from) into the run's
output directory, for :class:`~privacy.federated.FederatedFineTuner`
to turn into a model directory and a training record.

``app`` reads its settings from the Flower run config (deployment: ``flwr run``);
:func:`build_server_app` binds settings directly (simulation: ``run_simulation``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from audit._io import write_json_atomic
from privacy.federated.strategy import WARM_UP, RecordingMixin, build_strategy, central_dp
from privacy.federated.task import Settings, float_state, json_safe, load_model

__all__ = ["GLOBAL_WEIGHTS", "HISTORY", "PROGRESS_PREFIX", "app", "build_server_app", "run_server"]

GLOBAL_WEIGHTS = "global.safetensors"
HISTORY = "history.json"
PROGRESS_PREFIX = "rai-audit federate: "


def _say(line: str) -> None:
    sys.stderr.write(PROGRESS_PREFIX + line + "\n")
    sys.stderr.flush()


def run_server(grid: Grid, settings: Settings) -> None:
    """Run the whole federation on ``grid`` and write the outputs into ``settings.output_dir``.

    The round loop is this function's, with Flower's strategy hooks (``configure_train``,
    ``aggregate_train``, ``configure_evaluate``, ``aggregate_evaluate``) doing the sampling and
    aggregation, so that a lost node cannot stall the run:

    - before round 1 the server waits up to ``round_timeout`` for all ``num_clients`` nodes, before
      later rounds only until ``min_nodes`` are connected; a round that cannot reach ``min_nodes``
      is recorded as failed (not aggregated) and the next round is tried;
    - each phase waits up to ``round_timeout`` for replies and goes on with those that came;
    - while it waits, a progress line every ``progress_interval`` seconds says which round and how
      many clients answered;
    - after every round the latest aggregated model (``global.safetensors``) and the history
      (``history.json``, with ``checkpoint_round``) are written atomically, so a run stopped later
      still leaves the last good model and says which round it is from.
    """
    started = time.perf_counter()
    out = Path(settings.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(settings.model, settings.labels, seed=settings.seed)
    arrays = ArrayRecord(float_state(model))
    del model
    say = _say if settings.progress else None
    strategy = build_strategy(settings.strategy, num_clients=settings.num_clients, num_rounds=settings.num_rounds,
                              fraction_train=settings.fraction_train,
                              min_completed_fraction=settings.min_completed_fraction, min_nodes=settings.min_nodes,
                              proximal_mu=settings.proximal_mu, progress=say)
    hooks: Any = strategy  # the object whose configure/aggregate hooks run: the strategy or a DP wrapper of it
    if settings.central_dp:
        hooks = central_dp(strategy, side=settings.central_dp, noise_multiplier=settings.central_noise_multiplier,
                           clipping_norm=settings.central_clipping_norm)
    if say is not None:
        say(f"{settings.strategy} with {settings.num_clients} clients for {settings.num_rounds} round(s) "
            f"({settings.engine} engine, at least {settings.min_nodes} per round); waiting for the clients")
    checkpoint_round = 0
    _write_history(out, strategy, started, checkpoint_round, finished=False, warm_up=None)
    warm_up = _warm_up(grid, settings, say)
    for server_round in range(1, settings.num_rounds + 1):
        label = f"round {server_round}/{settings.num_rounds}"
        wanted = settings.num_clients if server_round == 1 else settings.min_nodes
        connected = _wait_for_nodes(grid, wanted=wanted, timeout=settings.round_timeout,
                                    interval=settings.progress_interval, say=say, label=label,
                                    total=settings.num_clients)
        if connected < settings.min_nodes:
            info = strategy.rounds.setdefault(server_round, {"round": server_round})
            info.update(aggregated=False, asked_train=0, completed_train=0, connected=connected,
                        note=f"only {connected} of {settings.num_clients} clients were connected after "
                             f"{settings.round_timeout:.0f} s (at least {settings.min_nodes} needed): the round "
                             "did not run and the global model was kept")
            strategy._report(server_round)
            _write_history(out, strategy, started, checkpoint_round, finished=False, warm_up=warm_up)
            continue
        strategy.rounds.setdefault(server_round, {"round": server_round})["connected"] = connected
        messages = hooks.configure_train(server_round, arrays, ConfigRecord(), grid)
        replies = _exchange(grid, messages, timeout=settings.round_timeout, interval=settings.progress_interval,
                            say=say, label=f"{label} training", sent=strategy.sent)
        new_arrays, _ = hooks.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
            checkpoint_round = server_round
            _save_weights(out, arrays)
        messages = hooks.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
        replies = _exchange(grid, messages, timeout=settings.round_timeout, interval=settings.progress_interval,
                            say=say, label=f"{label} evaluation", sent=strategy.sent)
        hooks.aggregate_evaluate(server_round, replies)
        _write_history(out, strategy, started, checkpoint_round, finished=False, warm_up=warm_up)
    if checkpoint_round == 0:
        _save_weights(out, arrays)  # the initial weights: the trainer refuses them (no round aggregated)
    _write_history(out, strategy, started, checkpoint_round, finished=True, warm_up=warm_up)


def _warm_up(grid: Grid, settings: Settings, say: Callable[[str], None] | None) -> dict[str, Any]:
    """Ask every connected client to load its model before round 1 (``query.warm_up``): how long it
    took and how many clients were ready, failed (with the error types) or did not answer.

    Waits for the clients as round 1 would, then for their replies at most ``round_timeout`` (so a
    client that hangs costs that once more); a client that fails or does not answer is asked again by
    round 1, which records what happens, and the start-up line says so now. The message's
    ``server-round`` is 0: before any round.
    """
    begun = time.perf_counter()
    _wait_for_nodes(grid, wanted=settings.num_clients, timeout=settings.round_timeout,
                    interval=settings.progress_interval, say=say, label="start-up", total=settings.num_clients)
    messages = [Message(content=RecordDict({"config": ConfigRecord({"server-round": 0})}), message_type=WARM_UP,
                        dst_node_id=node)
                for node in grid.get_node_ids()]
    replies = _exchange(grid, messages, timeout=settings.round_timeout, interval=settings.progress_interval, say=say,
                        label="start-up: clients loading the model")
    summary = _warm_up_summary(messages, replies)
    summary["seconds"] = time.perf_counter() - begun
    if say is not None and (summary["failed"] or summary["no_reply"]):
        errors = ", ".join(summary["errors"]) or "no error named"
        say(f"start-up: {summary['ready']} of {summary['asked']} clients loaded the model; {summary['failed']} failed "
            f"({errors}) and {summary['no_reply']} did not answer in {settings.round_timeout:.0f} s. Round 1 asks "
            "them again and records what happens.")
    return summary


def _warm_up_summary(messages: list[Message], replies: list[Message]) -> dict[str, Any]:
    """Counts of the warm-up's replies: ready, failed (Flower error or the client's own), unanswered."""
    ready, errors = 0, []
    for reply in replies:
        if reply.has_error():
            errors.append(f"Flower error {reply.error.code}")
            continue
        content = reply.content
        if "metrics" in content and int(content["metrics"].get("ready", 0)) == 1:
            ready += 1
        else:
            errors.append(str(content["warm-up"].get("error") or "unknown") if "warm-up" in content else "unknown")
    return {"asked": len(messages), "ready": ready, "failed": len(errors), "no_reply": len(messages) - len(replies),
            "errors": sorted(set(errors))}


def _save_weights(out: Path, arrays: ArrayRecord) -> None:
    """``global.safetensors``, replaced atomically (a reader never sees half a checkpoint)."""
    import os

    from safetensors.torch import save_file

    partial = out / (GLOBAL_WEIGHTS + ".partial")
    save_file({k: v.contiguous() for k, v in arrays.to_torch_state_dict().items()}, str(partial))
    os.replace(partial, out / GLOBAL_WEIGHTS)


def _write_history(out: Path, strategy: RecordingMixin, started: float, checkpoint_round: int, *,
                   finished: bool, warm_up: dict[str, Any] | None) -> None:
    history = strategy.history()
    history["duration_s"] = time.perf_counter() - started
    # Clients loading the model before round 1 (None until it has run).
    history["warm_up_s"] = warm_up["seconds"] if warm_up is not None else None
    history["warm_up"] = warm_up
    history["aggregated_rounds"] = sum(1 for r in history["rounds"] if r.get("aggregated"))
    history["checkpoint_round"] = checkpoint_round
    history["finished"] = finished
    write_json_atomic(out / HISTORY, json_safe(history))


def _wait_for_nodes(grid: Grid, *, wanted: int, timeout: float, interval: float, say: Callable[[str], None] | None,
                    label: str, total: int) -> int:
    """Wait up to ``timeout`` s until ``wanted`` nodes are connected; the number connected at the end."""
    deadline = time.monotonic() + timeout
    next_line = time.monotonic() + interval
    while True:
        connected = len(list(grid.get_node_ids()))
        now = time.monotonic()
        if connected >= wanted or now >= deadline:
            return connected
        if say is not None and now >= next_line:
            say(f"{label}: waiting for clients, {connected} of {total} connected after "
                f"{timeout - (deadline - now):.0f} s (round timeout {timeout:.0f} s)")
            next_line += interval
        time.sleep(min(1.0, max(0.05, deadline - now)))


def _exchange(grid: Grid, messages: Iterable[Message], *, timeout: float, interval: float,
              say: Callable[[str], None] | None, label: str, sent: dict[str, int] | None = None) -> list[Message]:
    """Flower's send-and-receive, with a progress line every ``interval`` s while replies are missing.

    ``sent`` collects each pushed message's id -> destination node: the SuperLink's own error
    replies (a node that stopped sending heartbeats) come from the SuperLink, not from the node.
    """
    messages = list(messages)
    ids = list(grid.push_messages(messages))
    if sent is not None:
        sent.update(zip(ids, (int(m.metadata.dst_node_id) for m in messages), strict=True))
    pending = set(ids)
    asked = len(pending)
    replies: list[Message] = []
    begun = time.monotonic()
    next_line = begun + interval
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        now = time.monotonic()
        if not pending or now - begun >= timeout:
            break
        if say is not None and now >= next_line:
            say(f"{label}: {asked - len(pending)} of {asked} clients answered after {now - begun:.0f} s "
                f"(round timeout {timeout:.0f} s)")
            next_line += interval
        time.sleep(0.5)
    return replies


def build_server_app(settings: Settings | None = None) -> ServerApp:
    """A ``ServerApp`` for ``settings`` (``None``: read them from the run config)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, settings if settings is not None else Settings.from_run_config(context.run_config))

    return server


app = build_server_app()
