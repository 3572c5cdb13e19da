"""Flower's FedAvg and FedProx, with a record of every client's result and every failure.

The strategies are Flower's own (``flwr.serverapp.strategy``, Message API); the base class owns
the round loop. :class:`RecordingMixin` adds behaviour through the documented hooks only:

``configure_train`` / ``configure_evaluate``
    remember which nodes were asked, so a node that never answers (crashed, timed out) is
    recorded as a failure and not silently dropped;
``aggregate_train``
    aggregates the clients that completed when at least ``min_completed_fraction`` of those asked
    did; otherwise the round's update is discarded and the global model stays as it was;
``aggregate_evaluate``
    keeps each client's accuracy and per-group counts, and reports the round's progress.

FedAvg: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": the new global model is the average of the client models weighted by their
number of training examples. FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous
Networks": the same server step; the clients add ``(mu / 2) * ||w - w_global||^2`` to their loss
(Flower sends ``mu`` as ``"proximal-mu"`` in the train config).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx

from privacy.federated.task import group_metrics, merge_groups

__all__ = [
    "CENTRAL_DP",
    "FAILURE_KEY",
    "STRATEGIES",
    "FederatedAveraging",
    "FederatedProximal",
    "RecordingMixin",
    "build_strategy",
    "central_dp",
    "name_order",
    "weighted_metrics",
]

#: Message type of the start-up query that has each client load its model before round 1.
WARM_UP = "query.warm_up"
FAILURE_KEY = "failure"  # a reply's ConfigRecord in which a ClientApp reports its own error, with its name

STRATEGY_DESCRIPTIONS = {
    "fedavg": "FedAvg (McMahan et al. 2017): the global model is the average of the client models, "
              "weighted by each client's number of training examples.",
    "fedprox": "FedProx (Li et al. 2020): FedAvg's weighted average on the server; each client adds the "
               "proximal term (mu/2)*||w - w_global||^2 to its loss, which keeps heterogeneous clients "
               "close to the global model.",
}


def weighted_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Average every metric over the replies, weighted by ``weighted_by_key``; zero-weight replies ignored.

    Flower's default aggregation divides by the total weight; a round in which every client held
    no evaluation rows would divide by zero, so such rounds give an empty record instead.
    """
    rows = [next(iter(r.metric_records.values())) for r in records]
    rows = [m for m in rows if float(m.get(weighted_by_key, 0)) > 0]
    total = sum(float(m[weighted_by_key]) for m in rows)
    out = MetricRecord()
    if not rows or total <= 0:
        return out
    for key in rows[0]:
        if key == weighted_by_key:
            continue
        values = [(float(m[weighted_by_key]), float(m[key])) for m in rows if isinstance(m.get(key), (int, float))]
        values = [(w, v) for w, v in values if math.isfinite(v)]
        weight = sum(w for w, _ in values)
        if weight > 0:
            out[key] = sum(w * v for w, v in values) / weight
    return out


def _client_of(message: Message) -> tuple[str | None, dict[str, Any]]:
    """The client name and details a reply carries in its ``"client"`` ConfigRecord."""
    content = message.content
    if "client" not in content:
        return None, {}
    record = content["client"]
    details = json.loads(str(record["details"])) if "details" in record else {}
    return str(record["name"]), details


def name_order(name: str) -> tuple[int, int | str]:
    """Sort key of client names: numbers in numeric order first, then names, then unnamed ``node <id>``."""
    if name.lstrip("-").isdigit():
        return (0, int(name))
    return (2, name) if name.startswith("node ") else (1, name)


def _train_key(metric: str) -> str:
    """The round-record key of an aggregated training metric: ``train-loss`` -> ``train_loss`` (never ``train_train_loss``)."""
    name = metric.replace("-", "_")
    return name if name.startswith("train_") else f"train_{name}"


def _short(reason: str) -> str:
    # Flower wraps a ClientApp's exception as "<class ...>:<'\nException ClientAppException occurred. Message: ...'>"
    text = " ".join(str(reason).split())
    for marker in ("Message: ", "Exception: "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip("'<> ")[:300]


class RecordingMixin:
    """Hooks that record clients and failures, and tolerate failed clients; mix in before a Flower strategy.

    Parameters
    ----------
    min_completed_fraction : float, default=0.5
        Share of the clients asked in a round that must return an update for the round to be
        aggregated.
    min_nodes : int, default=1
        Fewest clients whose updates a round may aggregate, however few were asked.
    num_rounds : int
        For progress messages.
    progress : callable, optional
        Called with one line of text at the end of every round.
    """

    def __init__(self, *args: Any, min_completed_fraction: float = 0.5, min_nodes: int = 1, num_rounds: int = 0,
                 progress: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_completed_fraction = min_completed_fraction
        self.min_nodes = int(min_nodes)
        self.num_rounds = num_rounds
        self.progress = progress
        self.rounds: dict[int, dict[str, Any]] = {}
        self.client_rounds: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.node_names: dict[int, str] = {}
        self.client_info: dict[str, dict[str, Any]] = {}
        self._asked: dict[tuple[str, int], list[int]] = {}
        self._started: dict[int, float] = {}
        self.sent: dict[str, int] = {}  # message id -> destination node, filled by the server loop

    # -- bookkeeping ---------------------------------------------------------------------------
    def _round(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(server_round, {"round": server_round})

    def _sort(self, phase: str, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Valid replies; every error reply and every node that did not answer becomes a failure."""
        replies = list(replies)
        ok: list[Message] = []
        answered: set[int] = set()
        for msg in replies:
            # The node the message went to: an error reply the SuperLink writes itself (the node
            # missed its heartbeats) names the SuperLink as its source, not the node.
            node = self.sent.get(msg.metadata.reply_to_message_id, int(msg.metadata.src_node_id))
            answered.add(node)
            if msg.has_error():
                self.failures.append({"round": server_round, "phase": phase, "node_id": node,
                                      "reason": _short(msg.error.reason)})
                continue
            name, details = _client_of(msg)
            if name is not None:
                self.node_names[node] = name
                self.client_info.setdefault(name, {}).update(details)
            if FAILURE_KEY in msg.content:  # the ClientApp caught its own error and said who it is
                reason = msg.content[FAILURE_KEY].get("reason", "the client reported a failure")
                self.failures.append({"round": server_round, "phase": phase, "node_id": node,
                                      "reason": _short(str(reason))})
                continue
            ok.append(msg)
        for node in self._asked.get((phase, server_round), []):
            if node not in answered:
                self.failures.append({"round": server_round, "phase": phase, "node_id": node,
                                      "reason": "no reply within the round timeout (node crashed, stalled or left)"})
        self._round(server_round)[f"{phase}_nodes"] = [int(m.metadata.src_node_id) for m in ok]
        return ok

    def _record_clients(self, phase: str, server_round: int, replies: list[Message]) -> None:
        for msg in replies:
            name, _ = _client_of(msg)
            metrics = dict(next(iter(msg.content.metric_records.values())))
            row = {"round": server_round, "phase": phase, "client": name, "node_id": int(msg.metadata.src_node_id)}
            row.update({k.replace("-", "_"): v for k, v in metrics.items()})
            if phase == "evaluate" and "client" in msg.content and "groups" in msg.content["client"]:
                row["group_counts"] = json.loads(str(msg.content["client"]["groups"]))
            self.client_rounds.append(row)

    # -- Flower hooks --------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's sampling and messages; the asked nodes are remembered."""
        self._started[server_round] = time.perf_counter()
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        self._asked[("train", server_round)] = [int(m.metadata.dst_node_id) for m in messages]
        self._round(server_round)["asked_train"] = len(messages)
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the completed clients if enough completed; record the rest as failures."""
        ok = self._sort("train", server_round, replies)
        asked = len(self._asked.get(("train", server_round), []))
        needed = max(1, self.min_nodes, math.ceil(self.min_completed_fraction * asked - 1e-9))
        info = self._round(server_round)
        info.update(completed_train=len(ok), failed_train=asked - len(ok), needed_train=needed)
        self._record_clients("train", server_round, ok)
        if len(ok) < needed:
            info["aggregated"] = False
            info["note"] = (f"only {len(ok)} of {asked} clients asked completed (at least {needed} needed): "
                            "the round's update was discarded and the global model kept")
            return None, None
        arrays, metrics = super().aggregate_train(server_round, ok)  # type: ignore[misc]
        info["aggregated"] = arrays is not None
        if metrics is not None:
            info.update({_train_key(k): v for k, v in metrics.items()})
        return arrays, metrics

    def discard_train(self, server_round: int, replies: Iterable[Message], note: str) -> None:
        """Record a training round whose update is not used (``note`` says why)."""
        ok = self._sort("train", server_round, replies)
        asked = len(self._asked.get(("train", server_round), []))
        self._round(server_round).update(completed_train=len(ok), failed_train=asked - len(ok), aggregated=False,
                                         note=note)
        self._record_clients("train", server_round, ok)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Flower's sampling and messages; the asked nodes are remembered."""
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        self._asked[("evaluate", server_round)] = [int(m.metadata.dst_node_id) for m in messages]
        self._round(server_round)["asked_evaluate"] = len(messages)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Keep every client's evaluation; the round's metrics are the weighted mean (union of held-out rows)."""
        ok = self._sort("evaluate", server_round, replies)
        info = self._round(server_round)
        info.update(completed_evaluate=len(ok),
                    failed_evaluate=len(self._asked.get(("evaluate", server_round), [])) - len(ok))
        self._record_clients("evaluate", server_round, ok)
        metrics = super().aggregate_evaluate(server_round, ok) if ok else None  # type: ignore[misc]
        if metrics is not None:
            info.update({k.replace("-", "_"): v for k, v in metrics.items()})
        rows = [r for r in self.client_rounds if r["round"] == server_round and r["phase"] == "evaluate"]
        accs = [r["accuracy"] for r in rows if r.get("num_examples", 0) > 0 and isinstance(r.get("accuracy"), float)]
        if accs:
            info["client_accuracy_min"], info["client_accuracy_max"] = min(accs), max(accs)
        info["eval_rows"] = sum(int(r.get("num_examples", 0) or 0) for r in rows)
        merged = merge_groups([r["group_counts"] for r in rows if r.get("group_counts")])
        if merged:
            info["fairness"] = group_metrics(merged)
        info["duration_s"] = time.perf_counter() - self._started.get(server_round, time.perf_counter())
        self._report(server_round)
        return metrics

    def _report(self, server_round: int) -> None:
        if self.progress is None:
            return
        info = self.rounds.get(server_round, {})
        asked = info.get("asked_train", 0)
        done = info.get("completed_train", 0)
        line = f"round {server_round}/{self.num_rounds}: {done}/{asked} clients trained"
        failed = sorted({self.client_name(f["node_id"]) for f in self.failures if f["round"] == server_round})
        if failed:
            line += f", failed or missing: {', '.join(failed)}"
        if info.get("aggregated") is False:
            line += ", update discarded"
        if isinstance(info.get("accuracy"), float):
            line += f"; accuracy {info['accuracy']:.3f}"
            if "client_accuracy_min" in info:
                line += f" (clients {info['client_accuracy_min']:.3f}-{info['client_accuracy_max']:.3f})"
        line += f"; {info.get('duration_s', 0.0):.1f} s"
        self.progress(line)

    def client_name(self, node: int) -> str:
        """The client's name as it reported it, or ``node <id>`` for a node that never replied with one."""
        return self.node_names.get(int(node), f"node {int(node)}")

    def history(self) -> dict[str, Any]:
        """Plain data: rounds (with the clients in each phase), per-client rows, failures, clients.

        A node that never replied successfully is named ``node <id>`` in failures and round lists,
        so a site that failed every round is still in the record.
        """
        failures = [dict(f, client=self.client_name(f["node_id"])) for f in self.failures]
        rounds = []
        for number in sorted(self.rounds):
            info = dict(self.rounds[number])
            for phase in ("train", "evaluate"):
                asked = self._asked.get((phase, number), [])
                done = info.pop(f"{phase}_nodes", [])
                info[f"{phase}_clients"] = sorted((self.client_name(n) for n in done), key=name_order)
                info[f"{phase}_missing"] = sorted((self.client_name(n) for n in asked if n not in done), key=name_order)
            rounds.append(info)
        nodes = sorted({n for asked in self._asked.values() for n in asked} | set(self.node_names))
        return {"rounds": rounds, "client_rounds": self.client_rounds, "failures": failures,
                "clients": self.client_info, "nodes": {str(n): self.client_name(n) for n in nodes}}


class FederatedAveraging(RecordingMixin, FedAvg):
    """Flower's :class:`~flwr.serverapp.strategy.FedAvg` (McMahan et al. 2017) with :class:`RecordingMixin`."""


class FederatedProximal(RecordingMixin, FedProx):
    """Flower's :class:`~flwr.serverapp.strategy.FedProx` (Li et al. 2020) with :class:`RecordingMixin`."""


STRATEGIES: dict[str, type[RecordingMixin]] = {"fedavg": FederatedAveraging, "fedprox": FederatedProximal}

CENTRAL_DP = {
    "server": "central DP with server-side fixed clipping (Flower's DifferentialPrivacyServerSideFixedClipping; "
              "McMahan et al. 2018, DP-FedAvg): the server clips each client's update to the clipping norm, averages "
              "them with equal weights and adds Gaussian noise to the average",
    "client": "central DP with client-side fixed clipping (Flower's DifferentialPrivacyClientSideFixedClipping with "
              "fixedclipping_mod at every client): each client clips its own update, the server averages them with "
              "equal weights and adds Gaussian noise to the average",
}
CENTRAL_DP_INCOMPLETE = ("central DP: only {ok} of the {asked} clients asked returned an update; the noise is calibrated "
                         "to every client asked, so the round's update was discarded and the global model kept")


def central_dp(recorder: RecordingMixin, *, side: str, noise_multiplier: float, clipping_norm: float) -> Any:
    """Flower's fixed-clipping central-DP wrapper around ``recorder``, sound when clients are lost.

    The wrapper is Flower's own; three things are added. The number of sampled clients (which
    scales the noise, ``noise_multiplier * clipping_norm / k``) is set each round to the clients
    actually asked, so a lost node cannot leave the noise calibrated to clients that are not
    there; a round in which any client asked does not return an update is discarded (a mean over
    fewer clients would have a larger sensitivity than the noise covers) and recorded; and the
    noise comes from a generator seeded by the operating system, never from the run's seed.
    """
    import numpy as np
    from flwr.app import Array
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    base = {"server": DifferentialPrivacyServerSideFixedClipping,
            "client": DifferentialPrivacyClientSideFixedClipping}[side]

    class Wrapped(base):  # type: ignore[misc, valid-type]
        def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                            grid: Grid) -> Iterable[Message]:
            messages = list(super().configure_train(server_round, arrays, config, grid))
            self.num_sampled_clients = max(1, len(messages))
            return messages

        def aggregate_train(self, server_round: int,
                            replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
            replies = list(replies)
            asked = len(recorder._asked.get(("train", server_round), []))
            good = [m for m in replies if not m.has_error() and FAILURE_KEY not in m.content]
            if len(good) < asked:
                recorder.discard_train(server_round, replies, CENTRAL_DP_INCOMPLETE.format(ok=len(good), asked=asked))
                return None, None
            arrays, metrics = super().aggregate_train(server_round, good)
            if arrays is not None:
                recorder._round(server_round).update(
                    central_dp_noise_std=self.noise_multiplier * self.clipping_norm / self.num_sampled_clients,
                    central_dp_clients=self.num_sampled_clients)
            return arrays, metrics

        def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
            rng = np.random.default_rng()  # operating-system entropy: the noise never follows from a recorded seed
            std = self.noise_multiplier * self.clipping_norm / self.num_sampled_clients
            noisy = {k: Array(np.asarray(v + rng.normal(0.0, std, size=np.shape(v)).astype(np.asarray(v).dtype)))
                     for k, v in zip(aggregated_arrays.keys(), aggregated_arrays.to_numpy_ndarrays(), strict=True)}
            return ArrayRecord(noisy)

    return Wrapped(recorder, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm,
                   num_sampled_clients=1)


def build_strategy(name: str, *, num_clients: int, num_rounds: int, fraction_train: float = 1.0,
                   min_completed_fraction: float = 0.5, min_nodes: int = 1, proximal_mu: float = 0.0,
                   progress: Callable[[str], None] | None = None) -> RecordingMixin:
    """The strategy for ``name`` (``"fedavg"`` or ``"fedprox"``).

    Every connected client evaluates the global model after every round; ``fraction_train`` of them
    train (Flower's sampling, at least one). The strategy never waits for nodes itself (Flower's
    ``min_available_nodes`` is 1): :func:`privacy.federated.server_app.run_server` waits, with a
    deadline, for ``min_nodes`` of the ``num_clients`` before each round.
    """
    if name not in STRATEGIES:
        from audit.errors import ConfigError

        raise ConfigError(f"Unknown strategy {name!r}. Use one of {sorted(STRATEGIES)}.")
    kwargs: dict[str, Any] = dict(
        fraction_train=fraction_train, fraction_evaluate=1.0, min_train_nodes=1,
        min_evaluate_nodes=1, min_available_nodes=1,
        train_metrics_aggr_fn=weighted_metrics, evaluate_metrics_aggr_fn=weighted_metrics,
        min_completed_fraction=min_completed_fraction, min_nodes=min_nodes, num_rounds=num_rounds,
        progress=progress,
    )
    if name == "fedprox":
        kwargs["proximal_mu"] = proximal_mu
    return STRATEGIES[name](**kwargs)
