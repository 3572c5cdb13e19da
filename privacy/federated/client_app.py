"""The Flower ``ClientApp`` (Message API): local fine-tuning and evaluation at one site.

``train``: load the global weights, fine-tune on this client's training rows (with FedProx's
proximal term when the server sends ``"proximal-mu"``, with DP-SGD when the run asks for it),
reply with the new weights and the number of training rows (the FedAvg weight).
``evaluate``: score the global weights on this client's held-out rows; reply with accuracy, loss
and per-group counts when the run names sensitive features.

``app`` reads its settings from the Flower run config (deployment: ``flwr run``);
:func:`build_client_app` binds settings directly (simulation: ``run_simulation``).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from privacy.federated.strategy import FAILURE_KEY
from privacy.federated.task import (
    ClientData,
    Settings,
    client_seed,
    evaluate,
    float_state,
    load_client_data,
    load_model,
    load_tokenizer,
    set_state,
    train_local,
)

__all__ = ["app", "build_client_app"]

_MODEL_CACHE: dict[tuple[Any, ...], tuple[Any, Any]] = {}


def _settings(bound: Settings | None, context: Context) -> Settings:
    return bound if bound is not None else Settings.from_run_config(context.run_config)


def _model(settings: Settings, context: Context) -> tuple[Any, Any]:
    """The model skeleton and tokenizer, cached per process (a simulation actor serves many messages)."""
    path = str(context.node_config.get("model-path", "") or settings.model)
    key = (path, settings.labels)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = (load_model(path, settings.labels, seed=settings.seed), load_tokenizer(path))
    return _MODEL_CACHE[key]


def _client_record(data: ClientData, **extra: Any) -> ConfigRecord:
    details = {"partition_id": data.partition_id, "rows": data.rows, "train_rows": len(data.train_y),
               "eval_rows": len(data.eval_y), "label_counts": data.label_counts, "group_counts": data.group_counts}
    return ConfigRecord({"name": data.name, "details": json.dumps(details), **extra})


def _train_dp(model: Any, tokenizer: Any, data: ClientData, settings: Settings, seed: int) -> tuple[Any, dict[str, float]]:
    """One round of DP-SGD on this client's rows through :class:`privacy.dp.DPFineTuner`.

    The noise multiplier is calibrated once for all rounds (``num_rounds * local_epochs`` epochs at
    this client's sampling rate), so the client's epsilon after the whole run stays within
    ``target_epsilon``; each round is one ``fit`` with that fixed noise.
    """
    import pandas as pd
    from opacus.accountants.utils import get_noise_multiplier

    from privacy.dp import DPFineTuner, default_delta

    with warnings.catch_warnings():
        # Opacus' accountants note when their largest RDP order is optimal; the bound stays valid.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        n = len(data.train_y)
        batches = math.ceil(n / settings.batch_size)
        sample_rate = 1.0 / batches
        delta = settings.target_delta if settings.target_delta is not None else default_delta(n)
        assert settings.target_epsilon is not None
        sigma = get_noise_multiplier(target_epsilon=settings.target_epsilon, target_delta=delta,
                                     sample_rate=sample_rate, steps=settings.num_rounds * settings.local_epochs * batches,
                                     accountant="prv", epsilon_tolerance=0.01)
        frame = pd.DataFrame({"text": data.train_texts, "label": [settings.labels[i] for i in data.train_y]})
        tuner = DPFineTuner(target_epsilon=settings.target_epsilon, target_delta=delta,
                            max_grad_norm=settings.max_grad_norm, epochs=settings.local_epochs,
                            batch_size=settings.batch_size, max_physical_batch_size=settings.batch_size,
                            learning_rate=settings.learning_rate, noise_multiplier=sigma, accountant="prv",
                            task="sequence-classification", text_column="text", label_column="label",
                            max_length=settings.max_length, eval_fraction=0.0, seed=seed, device=settings.device)
        tuner.fit(model, frame, tokenizer=tokenizer)
    return tuner.model_, {"loss": float(tuner.history_[-1]["loss"]) if tuner.history_ else math.nan,
                          "dp-steps": float(tuner.steps_), "dp-noise-multiplier": float(tuner.noise_multiplier_),
                          "dp-sample-rate": float(tuner.sample_rate_), "dp-delta": float(tuner.target_delta_)}


def _site_name(settings: Settings, node_config: Any) -> str:
    """This client's name as :func:`~privacy.federated.task.load_client_data` gives it, without reading data."""
    from pathlib import Path

    pid = node_config.get("partition-id")
    return str(node_config.get("site", "") or (pid if pid is not None and str(pid) != "" else
                                                Path(str(node_config.get("data-path", "") or settings.data)).stem))


def _failure_reply(msg: Message, settings: Settings, context: Context, exc: Exception) -> Message:
    """A reply that names this client and says what went wrong, so a site failing every round is still recorded."""
    name = _site_name(settings, context.node_config)
    reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    content = RecordDict({"client": ConfigRecord({"name": name, "details": json.dumps({})}),
                          FAILURE_KEY: ConfigRecord({"reason": reason})})
    return Message(content=content, reply_to=msg)


def handle_train(msg: Message, context: Context, bound: Settings | None = None) -> Message:
    """Fine-tune the received global model on this client's training rows (a failure is replied, named)."""
    settings = _settings(bound, context)
    try:
        return _train(msg, context, settings)
    except Exception as exc:  # any failure at this site becomes a named failure reply, not a lost node
        return _failure_reply(msg, settings, context, exc)


def handle_evaluate(msg: Message, context: Context, bound: Settings | None = None) -> Message:
    """Score the received global model on this client's held-out rows (a failure is replied, named)."""
    settings = _settings(bound, context)
    try:
        return _evaluate(msg, context, settings)
    except Exception as exc:  # as in handle_train
        return _failure_reply(msg, settings, context, exc)


def _train(msg: Message, context: Context, settings: Settings) -> Message:
    started = time.perf_counter()
    data = load_client_data(settings, context.node_config)
    model, tokenizer = _model(settings, context)
    set_state(model, msg.content["arrays"].to_torch_state_dict())
    config = msg.content.get("config", {})
    server_round = int(config.get("server-round", 0))
    mu = float(config.get("proximal-mu", 0.0))
    seed = client_seed(settings.seed, server_round, data.partition_id if data.partition_id is not None else data.name)
    metrics: dict[str, float]
    if settings.target_epsilon is not None:
        trained, metrics = _train_dp(model, tokenizer, data, settings, seed)
        state = float_state(trained)
    else:
        stats = train_local(model, tokenizer, data.train_texts, data.train_y, epochs=settings.local_epochs,
                            batch_size=settings.batch_size, learning_rate=settings.learning_rate,
                            max_length=settings.max_length, proximal_mu=mu, seed=seed, device=settings.device)
        metrics = {"loss": stats["loss"], "proximal": stats["proximal"]}
        state = float_state(model)
    loss = metrics.pop("loss")
    # Under central DP every client's (clipped) update weighs the same: the noise covers one client's
    # update in an equal-weight mean, not in a mean weighted by the clients' row counts.
    weight = 1 if settings.central_dp else len(data.train_y)  # (local DP keeps FedAvg's weights: each update is noised)
    reply_metrics: dict[str, float] = {"num-examples": weight, "train-rows": len(data.train_y),
                                       "duration-s": time.perf_counter() - started, **metrics}
    private = settings.target_epsilon is not None or bool(settings.central_dp) or settings.local_dp_epsilon > 0
    if not private or settings.record_private_stats:
        # Under client-side DP the training loss is a statistic of the private rows that the DP-SGD
        # guarantee does not cover: it is sent only when the user asks (record_private_stats).
        reply_metrics["train-loss"] = loss
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(reply_metrics),
                          "client": _client_record(data)})
    return Message(content=content, reply_to=msg)


def handle_warm_up(msg: Message, context: Context, bound: Settings | None = None) -> Message:
    """Load this client's model, tokenizer and rows and run one small forward pass, before round 1.

    In a simulation this starts the Ray actor and imports torch; everywhere it loads the weights
    into the process cache that the rounds reuse, so round 1 times training like every later round
    and the start-up is reported on its own. Nothing private is replied: the time it took, whether it
    worked and, if not, the error's type (the server counts failures at start-up; round 1 records
    the same failure with its reason).
    """
    import torch

    started = time.perf_counter()
    settings = _settings(bound, context)
    try:
        data = load_client_data(settings, context.node_config)
        model, tokenizer = _model(settings, context)
        with torch.inference_mode():
            model(**tokenizer(list(data.train_texts[:2]), padding=True, truncation=True,
                              max_length=settings.max_length, return_tensors="pt"))
        ok, error = 1, ""
    except Exception as exc:  # counted by the server now; the round that follows reports it in full
        ok, error = 0, type(exc).__name__
    content = RecordDict({"metrics": MetricRecord({"ready": ok, "duration-s": time.perf_counter() - started}),
                          "warm-up": ConfigRecord({"error": error})})
    return Message(content=content, reply_to=msg)


def _evaluate(msg: Message, context: Context, settings: Settings) -> Message:
    data = load_client_data(settings, context.node_config)
    model, tokenizer = _model(settings, context)
    set_state(model, msg.content["arrays"].to_torch_state_dict())
    pos_index = settings.labels.index(settings.pos_label) if settings.pos_label is not None else None
    stats = evaluate(model, tokenizer, data.eval_texts, data.eval_y, groups=data.eval_groups, pos_index=pos_index,
                     max_length=settings.max_length, device=settings.device)
    metrics = {"num-examples": stats.n, "accuracy": stats.accuracy if stats.n else 0.0,
               "loss": stats.loss if stats.n else 0.0}
    content = RecordDict({"metrics": MetricRecord(metrics),
                          "client": _client_record(data, groups=json.dumps(stats.groups))})
    return Message(content=content, reply_to=msg)


def _central_clipping_mod(bound: Settings | None) -> Any:
    """Flower's ``fixedclipping_mod`` on training messages when the run uses client-side clipping central DP."""

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        settings = _settings(bound, context)
        if settings.central_dp != "client" or msg.metadata.message_type != "train":
            return call_next(msg, context)
        from flwr.clientapp.mod import fixedclipping_mod

        return fixedclipping_mod(msg, context, call_next)

    return mod


LOCAL_DP_SENSITIVITY = 2.0  # x the clipping norm: two updates clipped to norm C around the same model differ by <= 2C


def _local_dp_mod(bound: Settings | None) -> Any:
    """Flower's ``LocalDpMod`` on training messages when the run asks for local DP.

    The sensitivity given to it is twice the clipping norm (any two clipped updates around the
    same global model differ by at most ``2 C``), and numpy's global generator, which Flower's
    noise uses, is reseeded from the operating system first, so the noise never follows from a
    seed anyone recorded.
    """

    def mod(msg: Message, context: Context, call_next: Any) -> Message:
        settings = _settings(bound, context)
        if settings.local_dp_epsilon <= 0 or msg.metadata.message_type != "train":
            return call_next(msg, context)
        import numpy as np
        from flwr.clientapp.mod import LocalDpMod

        np.random.seed()  # Flower's LocalDpMod draws from numpy's global generator: reseed it from the OS
        local = LocalDpMod(clipping_norm=settings.local_dp_clip,
                           sensitivity=LOCAL_DP_SENSITIVITY * settings.local_dp_clip,
                           epsilon=settings.local_dp_epsilon, delta=settings.local_dp_delta)
        return local(msg, context, call_next)

    return mod


def build_client_app(settings: Settings | None = None, *, mods: Sequence[Any] = ()) -> ClientApp:
    """A ``ClientApp`` for ``settings`` (``None``: read them from the run config).

    Parameters
    ----------
    settings : Settings, optional
    mods : sequence of Flower client mods
        Wrap every message handler (Flower's ``Mod`` hook), e.g. to add logging or to inject faults
        in a test.
    """
    client = ClientApp(mods=[_central_clipping_mod(settings), _local_dp_mod(settings), *mods])

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, settings)

    @client.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, settings)

    @client.query("warm_up")
    def warm_up(msg: Message, context: Context) -> Message:
        return handle_warm_up(msg, context, settings)

    return client


app = build_client_app()
