"""Federated fine-tuning with Flower: partitions, aggregation, FedProx, fault tolerance, both engines, CLI, card."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from audit.cli import main as cli_main
from tests.tiny import make_tiny_model

POSITIVE = ["good", "great", "happy", "love"]
NEGATIVE = ["bad", "terrible", "sad", "hate"]
NOUNS = ["movie", "film", "food", "office", "family"]


def make_texts(n: int, *, seed: int = 0, noise: float = 0.05) -> pd.DataFrame:
    """A learnable sentiment task over the tiny vocabulary, with a sensitive attribute (he/she)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(2))
        pronoun = ["he", "she"][int(rng.integers(2))]
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        adverb = rng.choice(["very", "really", "so", ""])
        text = " ".join(w for w in [pronoun, "said", "the", rng.choice(NOUNS), "was", adverb, adjective] if w)
        if rng.random() < noise:
            label = 1 - label
        rows.append({"text": text, "label": label, "sex": "m" if pronoun == "he" else "f"})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fed_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("federated")
    model = make_tiny_model("encoder", root / "model")
    (model / "rai_audit_record.json").write_text(json.dumps({"dp": {"epsilon": 8.0, "delta": 1e-5}}), encoding="utf-8")
    data = root / "data.csv"
    make_texts(240).to_csv(data, index=False)
    small = root / "small.csv"
    make_texts(4).to_csv(small, index=False)
    return {"root": root, "model": model, "data": data, "small": small}


# -- partitions ---------------------------------------------------------------------------------


def _check_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and set(joined.tolist()) == set(range(n))


def test_iid_partition_is_a_balanced_disjoint_cover() -> None:
    from privacy.federated.partition import iid_partition

    parts = iid_partition(103, 5, seed=3)
    _check_disjoint_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [20, 20, 21, 21, 21]
    assert [p.tolist() for p in parts] == [p.tolist() for p in iid_partition(103, 5, seed=3)]


def test_dirichlet_skew_follows_alpha() -> None:
    from privacy.federated.partition import dirichlet_partition

    labels = np.repeat(["a", "b", "c", "d"], 250)

    def mean_top_share(alpha: float) -> float:
        parts = dirichlet_partition(labels, 10, alpha=alpha, seed=1)
        _check_disjoint_cover(parts, len(labels))
        return float(np.mean([pd.Series(labels[p]).value_counts(normalize=True).iloc[0] for p in parts]))

    # Each class's shares over clients are Dirichlet(alpha): with alpha=1000 every client holds each
    # class at about 1/4; with alpha=0.05 a client's rows come mostly from one class.
    assert mean_top_share(1000.0) < 0.35
    assert mean_top_share(0.05) > 0.8


def test_group_partition_gives_each_site_its_own_population() -> None:
    from privacy.federated.partition import group_partition

    groups = np.array(["f"] * 60 + ["m"] * 30 + ["x"] * 10)
    parts = group_partition(groups, 5, seed=0)
    _check_disjoint_cover(parts, len(groups))
    served = [set(groups[p].tolist()) for p in parts]
    assert all(len(s) == 1 for s in served)
    # Clients shared out in proportion to group size: f gets 3 (or 2), m 1-2, x 1.
    counts = pd.Series([next(iter(s)) for s in served]).value_counts().to_dict()
    assert sum(counts.values()) == 5 and counts["x"] == 1 and counts["f"] >= counts["m"]
    many = group_partition(np.array(list("abcdefg") * 3), 3, seed=0)
    _check_disjoint_cover(many, 21)
    owners = {g: {i for i, p in enumerate(many) if g in set(np.array(list("abcdefg") * 3)[p])} for g in "abcdefg"}
    assert all(len(o) == 1 for o in owners.values())  # whole groups go to one client each


def test_split_rows_is_stratified_and_keeps_a_training_row_per_class() -> None:
    from privacy.federated.partition import split_rows

    labels = ["a"] * 50 + ["b"] * 10 + ["c"]
    train, held = split_rows(labels, 0.2, seed=0)
    assert set(train) | set(held) == set(range(61)) and not set(train) & set(held)
    held_labels = [labels[i] for i in held]
    assert held_labels.count("a") == 10 and held_labels.count("b") == 2 and "c" not in held_labels


# -- settings, proximal term, aggregation --------------------------------------------------------------


def test_settings_survive_the_flower_run_config() -> None:
    from privacy.federated.task import Settings

    settings = Settings(model="/m", data="/d.csv", text_column="t", label_column="y", labels=("0", "1"),
                        num_clients=4, num_rounds=2, sensitive_features=("sex", "age"), pos_label="1",
                        strategy="fedprox", proximal_mu=0.1, target_epsilon=None, target_delta=1e-5)
    config = settings.to_run_config()
    assert all(isinstance(v, (str, int, float, bool)) for v in config.values())
    assert Settings.from_run_config(config) == settings


def test_proximal_term_is_the_squared_distance_to_the_global_model() -> None:
    from privacy.federated.task import proximal_term

    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    w = [torch.tensor(rng.normal(size=s), dtype=torch.float32, requires_grad=True) for s in shapes]
    g = [torch.tensor(rng.normal(size=s), dtype=torch.float32) for s in shapes]
    value = proximal_term(w, g)
    expected = sum(float(np.sum((a.detach().numpy() - b.numpy()) ** 2)) for a, b in zip(w, g))
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)
    mu = 0.3
    ((mu / 2) * value).backward()
    for a, b in zip(w, g):  # d/dw (mu/2)||w - g||^2 = mu (w - g)
        np.testing.assert_allclose(a.grad.numpy(), mu * (a.detach().numpy() - b.numpy()), rtol=1e-5, atol=1e-7)


def _instruction(node: int, server_round: int, message_type: str = "train"):
    from flwr.app import ConfigRecord, Message, Metadata, RecordDict

    metadata = Metadata(run_id=1, message_id=f"m-{node}-{server_round}", src_node_id=0, dst_node_id=node,
                        reply_to_message_id="", group_id="", created_at=time.time(), ttl=3600.0,
                        message_type=message_type)
    return Message(content=RecordDict({"config": ConfigRecord({"server-round": server_round})}), metadata=metadata)


def _reply(instruction, arrays: dict[str, np.ndarray], n: int, name: str):
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    content = RecordDict({"arrays": ArrayRecord({k: _array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n, "train-loss": float(n) / 10}),
                          "client": ConfigRecord({"name": name, "details": json.dumps({"rows": n})})})
    return Message(content=content, reply_to=instruction)


def _array(values: np.ndarray):
    from flwr.app import Array

    return Array(np.asarray(values, dtype=np.float32))


def test_aggregation_is_the_example_weighted_average_and_failures_are_recorded() -> None:
    from flwr.app import Error, Message

    from privacy.federated.strategy import build_strategy

    rng = np.random.default_rng(7)
    strategy = build_strategy("fedavg", num_clients=5, num_rounds=1, min_completed_fraction=0.5)
    nodes = [11, 12, 13, 14, 15]
    strategy._asked[("train", 1)] = nodes  # what configure_train records when it samples the grid
    sizes = {11: 10, 12: 30, 13: 5}
    weights = {node: {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)} for node in sizes}
    replies = [_reply(_instruction(node, 1), weights[node], n, str(i)) for i, (node, n) in enumerate(sizes.items())]
    replies.append(Message(Error(code=0, reason="<class 'RuntimeError'>:<'\nException ClientAppException occurred. "
                                                "Message: disk full'>"), reply_to=_instruction(14, 1)))
    arrays, metrics = strategy.aggregate_train(1, replies)  # node 15 never answers
    total = sum(sizes.values())
    for key in ("w", "b"):
        expected = sum(weights[node][key].astype(np.float32).astype(np.float64) * n / total for node, n in sizes.items())
        np.testing.assert_allclose(arrays[key].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert metrics["train-loss"] == pytest.approx(sum(n / 10 * n for n in sizes.values()) / total)
    history = strategy.history()
    assert [(f["node_id"], f["round"]) for f in history["failures"]] == [(14, 1), (15, 1)]
    assert history["failures"][0]["reason"] == "disk full"
    assert "no reply" in history["failures"][1]["reason"]
    assert history["rounds"][0]["aggregated"] is True and history["rounds"][0]["completed_train"] == 3

    strict = build_strategy("fedavg", num_clients=5, num_rounds=1, min_completed_fraction=0.8)
    strict._asked[("train", 1)] = nodes
    assert strict.aggregate_train(1, replies) == (None, None)  # 3 of 5 < 80%: the update is discarded
    assert strict.history()["rounds"][0]["aggregated"] is False


def test_group_counts_give_fairlearn_metrics() -> None:
    from fairlearn.metrics import MetricFrame, equal_opportunity_difference, selection_rate, true_positive_rate

    from privacy.federated.task import group_metrics

    rng = np.random.default_rng(2)
    y_true = rng.integers(2, size=200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, 1 - y_true)
    groups = rng.choice(["a", "b", "c"], size=200)
    counts = {}
    for g in "abc":
        m = groups == g
        counts[g] = {"n": int(m.sum()), "correct": int((y_pred[m] == y_true[m]).sum()),
                     "predicted_positive": int((y_pred[m] == 1).sum()), "actual_positive": int((y_true[m] == 1).sum()),
                     "true_positive": int(((y_pred[m] == 1) & (y_true[m] == 1)).sum())}
    ours = group_metrics(counts)
    frame = MetricFrame(metrics={"accuracy": lambda t, p: float(np.mean(t == p)), "selection_rate": selection_rate,
                                 "true_positive_rate": true_positive_rate},
                        y_true=y_true, y_pred=y_pred, sensitive_features=groups)
    for g in "abc":
        for metric in ("accuracy", "selection_rate", "true_positive_rate"):
            assert ours["groups"][g][metric] == pytest.approx(frame.by_group.loc[g, metric])
    assert ours["selection_rate_gap"] == pytest.approx(frame.difference()["selection_rate"])
    assert ours["true_positive_rate_gap"] == pytest.approx(
        equal_opportunity_difference(y_true, y_pred, sensitive_features=groups))


# -- bad input: one line on stderr, exit 2, before any engine starts ----------------------------------


@pytest.mark.parametrize(("extra", "data_key", "message"), [
    (["--num-clients", "5"], "small", "more clients (5) than examples (4)"),
    (["--partition", "dirichlet:0"], "data", "Dirichlet alpha must be a positive finite number, got 0.0"),
    (["--partition", "dirichlet:-1"], "data", "Dirichlet alpha must be a positive finite number, got -1.0"),
    (["--partition", "by:region"], "data", "Partition column 'region' (partition='by:region') is not in"),
    (["--num-rounds", "0"], "data", "num_rounds must be a positive integer, got 0"),
    (["--strategy", "fedavg", "--mu", "0.1"], "data", "proximal_mu=0.1 applies to strategy='fedprox' only"),
])
def test_bad_input_is_one_line_and_exit_2(fed_setup, capsys, tmp_path, extra, data_key, message) -> None:
    argv = ["federate", "--model", str(fed_setup["model"]), "--data", str(fed_setup[data_key]),
            "--num-clients", "3", "--num-rounds", "2", "--out", str(tmp_path / "out"), *extra]
    code = cli_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_estimator_rejects_bad_settings_before_training(fed_setup) -> None:
    from audit.errors import ConfigError, DataError, NotFittedError
    from privacy.federated import FederatedFineTuner

    with pytest.raises(ConfigError, match="Unknown partition spec 'random'"):
        FederatedFineTuner(partition="random").fit(fed_setup["model"], fed_setup["data"])
    with pytest.raises(DataError, match=r"Column 'gender' \(sensitive_features\) is not in"):
        FederatedFineTuner(sensitive_features="gender").fit(fed_setup["model"], fed_setup["data"])
    with pytest.raises(ConfigError, match=r"Client-side DP .* works with strategy='fedavg' only"):
        FederatedFineTuner(strategy="fedprox", target_epsilon=8.0).fit(fed_setup["model"], fed_setup["data"])
    with pytest.raises(NotFittedError, match="Call fit"):
        FederatedFineTuner().save(fed_setup["root"] / "never")


# -- client-side DP through privacy.dp.DPFineTuner ---------------------------------------------------


def test_client_side_dp_noise_is_calibrated_for_all_rounds(fed_setup) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
    from opacus.accountants import PRVAccountant

    from privacy.federated.client_app import handle_train
    from privacy.federated.task import Settings, float_state, load_client_data, load_model
    from privacy.federated.trainer import _dp_summary

    pytest.importorskip("privacy.dp").DPFineTuner  # noqa: B018 - the DP trainer must exist
    settings = Settings(model=str(fed_setup["model"]), data=str(fed_setup["data"]), text_column="text",
                        label_column="label", labels=("0", "1"), num_clients=2, num_rounds=3, target_epsilon=4.0,
                        local_epochs=1, batch_size=16, learning_rate=1e-3, max_length=16)
    initial = float_state(load_model(fed_setup["model"], settings.labels))
    message = _instruction(7, 1)
    message.content = RecordDict({"arrays": ArrayRecord(initial), "config": ConfigRecord({"server-round": 1})})
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config={})
    reply = handle_train(message, context, settings)
    metrics = reply.content["metrics"]
    n_train = len(load_client_data(settings, context.node_config).train_y)
    batches = math.ceil(n_train / 16)
    assert metrics["num-examples"] == n_train
    assert metrics["dp-sample-rate"] == pytest.approx(1 / batches) and metrics["dp-steps"] == batches
    trained = reply.content["arrays"].to_torch_state_dict()
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 0
    # Independently: Opacus' PRV accountant over every round's steps at that noise stays within the budget,
    # and the calibration is tight (a noise multiplier for one round only would overshoot it).
    prv = PRVAccountant()
    prv.history = [(metrics["dp-noise-multiplier"], metrics["dp-sample-rate"], 3 * batches)]
    epsilon = prv.get_epsilon(delta=metrics["dp-delta"])
    assert 3.5 < epsilon <= 4.0 + 0.02
    rows = [{"phase": "train", "client": "0", **{k.replace("-", "_"): v for k, v in metrics.items()}}] * 3
    assert _dp_summary(settings, rows)["epsilon_max"] == pytest.approx(epsilon, abs=0.02)


# -- the card's section ----------------------------------------------------------------------------


def test_federated_template_shows_rounds_clients_gap_and_failures_escaped() -> None:
    from reports.model_card import _environment

    record = {
        "strategy": "fedavg", "strategy_description": "FedAvg (McMahan et al. 2017).", "num_clients": 2,
        "num_rounds": 2, "rounds_aggregated": 2, "engine": "simulation", "framework": "Flower 1.41.0",
        "min_completed_fraction": 0.5, "partitioning": {"description": "IID"},
        "final": {"accuracy": 0.8125, "evaluation": "weighted"}, "centralized": {"accuracy": 0.84375},
        "rounds": [{"round": 1, "accuracy": 0.6, "loss": 0.7, "clients_asked": 2, "clients_completed": 1, "failures": 1,
                    "aggregated": True, "client_accuracy_min": 0.5, "client_accuracy_max": 0.7},
                   {"round": 2, "accuracy": 0.8125, "loss": 0.5, "clients_asked": 2, "clients_completed": 2,
                    "failures": 0, "aggregated": True, "client_accuracy_min": 0.75, "client_accuracy_max": 0.875}],
        "clients": [{"client": "<script>x</script>", "train_rows": 40, "eval_rows": 10, "label_counts": {"0": 20},
                     "accuracy": 0.875, "accuracy_gap": 0.25, "rounds_trained": 1, "failures": 1},
                    {"client": "1", "train_rows": 40, "eval_rows": 10, "accuracy": 0.75, "rounds_trained": 2,
                     "failures": 0}],
        "best_worst_gap": {"best_client": "<script>x</script>", "best": 0.875, "worst_client": "1", "worst": 0.75,
                           "gap": 0.125},
        "failures": [{"round": 1, "phase": "train", "client": "<script>x</script>", "reason": "boom <b>"}],
        "dataset": {"sensitive_features": ["sex"]},
    }
    html = _environment().get_template("records/federated.html.j2").render(record=record)
    assert "<script>" not in html and "&lt;script&gt;" in html and "boom &lt;b&gt;" in html
    assert "0.8125" in html and "0.8438" in html and "0.125" in html and "Gap between them" in html
    assert html.count("<polyline") == 1
    fallback = _environment().get_template("records/federated.html.j2").render(record={"odd": 1})
    assert "odd" in fallback and "Accuracy per round" not in fallback


def test_model_card_shows_the_federated_section() -> None:
    from audit.results import AuditResults, Manifest
    from reports.model_card import render_html_card

    record = {"strategy": "fedprox", "num_clients": 2, "num_rounds": 1, "rounds_aggregated": 1,
              "rounds": [{"round": 1, "accuracy": 0.7}], "clients": [{"client": "site-a", "accuracy": 0.7}],
              "failures": []}
    manifest = Manifest(rai_audit_version="0", model_id="m", model_path="/m", fingerprint="sha256:0",
                        kind="sequence-classification", n_parameters=1, device="cpu", max_length=16, seed=0,
                        started_at="t0", finished_at="t1", duration_s=0.0, library_versions={},
                        records={"federated": record})
    html = render_html_card(AuditResults(manifest=manifest, results=[]))
    assert "Training record: federated" in html and "Federated fine-tuning." in html and "site-a" in html


# -- simulation engine ------------------------------------------------------------------------------


def _client_datasets(fed_setup, record: dict, *, partition: str, num_clients: int):
    """The clients' rows recomputed from the public partition functions, for independent checks."""
    from privacy.federated.task import Settings, build_client_data, select_client_rows

    frame = pd.read_csv(fed_setup["data"], keep_default_na=False)
    settings = Settings(model=str(fed_setup["model"]), data=str(fed_setup["data"]), text_column="text",
                        label_column="label", labels=tuple(record["labels"]), num_clients=num_clients, num_rounds=1,
                        sensitive_features=("sex",), partition=partition, eval_fraction=record["eval_fraction"],
                        seed=record["seed"])
    return [build_client_data(frame, select_client_rows(frame, settings, i, num_clients, "data"), settings,
                              name=str(i), partition_id=i, source="data") for i in range(num_clients)]


@pytest.mark.slow
def test_simulated_fedavg_matches_centralized_training_and_records_fairness(fed_setup, tmp_path) -> None:
    from fairlearn.metrics import MetricFrame, selection_rate
    from sklearn.metrics import accuracy_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from audit.target import load_target
    from privacy.federated import FederatedFineTuner

    fed = FederatedFineTuner(num_clients=3, num_rounds=3, local_epochs=2, learning_rate=3e-3, batch_size=16,
                             max_length=16, sensitive_features="sex", baseline=True, num_cpus=2)
    fed.fit(fed_setup["model"], fed_setup["data"])
    out = fed.save(tmp_path / "fed")
    records = json.loads((out / "rai_audit_record.json").read_text(encoding="utf-8"))
    assert records["dp"] == {"epsilon": 8.0, "delta": 1e-5}  # the input model's sections are kept
    rec = records["federated"]
    assert rec["rounds_aggregated"] == 3 and rec["failures"] == [] and len(rec["rounds"]) == 3

    # Independent scoring of the saved model on each client's held-out rows.
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    clients = _client_datasets(fed_setup, rec, partition="iid", num_clients=3)
    all_true, all_pred = [], []
    for client, row in zip(clients, rec["clients"]):
        with torch.no_grad():
            enc = tokenizer(client.eval_texts, padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).numpy()
        assert row["client"] == client.name and row["eval_rows"] == len(client.eval_y)
        assert row["accuracy"] == pytest.approx(accuracy_score(client.eval_y, pred))
        frame = MetricFrame(metrics={"acc": accuracy_score, "sel": selection_rate}, y_true=np.array(client.eval_y),
                            y_pred=pred, sensitive_features=np.array(client.eval_groups))
        assert row["accuracy_gap"] == pytest.approx(frame.difference()["acc"])
        assert row["selection_rate_gap"] == pytest.approx(frame.difference()["sel"])
        all_true.extend(client.eval_y)
        all_pred.extend(pred.tolist())
    federated = accuracy_score(all_true, all_pred)
    assert rec["final"]["accuracy"] == pytest.approx(federated)
    accs = [c["accuracy"] for c in rec["clients"]]
    assert rec["best_worst_gap"]["gap"] == pytest.approx(max(accs) - min(accs))

    central = rec["centralized"]
    assert central["epochs"] == 6 and central["train_rows"] == sum(len(c.train_y) for c in clients)
    assert federated > 0.75, "the task is learnable: the federated model must beat chance clearly"
    assert abs(federated - central["accuracy"]) <= 0.03, (federated, central["accuracy"])

    target = load_target(out, progress=False, device="cpu")
    assert target.records["federated"]["strategy"] == "fedavg" and target.kind == "sequence-classification"
    assert Path(fed_setup["model"] / "model.safetensors").stat().st_size > 0  # the input model is untouched


def _crash(server_round: int, partition_id: int):
    """A Flower mod that makes one client raise in one training round."""

    def mod(msg, context, call_next):
        if (msg.metadata.message_type == "train" and int(context.node_config["partition-id"]) == partition_id
                and int(msg.content["config"]["server-round"]) == server_round):
            raise RuntimeError(f"injected failure at client {partition_id}")
        return call_next(msg, context)

    return mod


@pytest.mark.slow
def test_failed_client_is_recorded_and_rounds_aggregate_the_others_exactly(fed_setup) -> None:
    from privacy.federated import FederatedFineTuner
    from privacy.federated.task import client_seed, float_state, load_model, load_tokenizer, set_state, train_local

    mu = 0.5
    fed = FederatedFineTuner(num_clients=3, num_rounds=2, partition="dirichlet:0.5", strategy="fedprox",
                             proximal_mu=mu, local_epochs=1, learning_rate=3e-3, max_length=16, baseline=True,
                             num_cpus=2, client_mods=[_crash(server_round=2, partition_id=1)])
    fed.fit(fed_setup["model"], fed_setup["data"])
    rec = fed.record_
    assert rec["rounds_aggregated"] == 2
    assert [(f["round"], f["phase"], f["client"]) for f in rec["failures"]] == [(2, "train", "1")]
    assert "injected failure at client 1" in rec["failures"][0]["reason"]
    assert rec["rounds"][1]["clients_completed"] == 2 and rec["failures_per_round"] == {"1": 0, "2": 1}
    assert {c["client"]: c["rounds_trained"] for c in rec["clients"]} == {"0": 2, "1": 1, "2": 2}
    # Non-IID result, reported beside the centralized one (no bound asserted: it is what we report).
    assert isinstance(rec["final"]["accuracy"], float) and isinstance(rec["centralized"]["accuracy"], float)

    # Recompute the federation by hand: FedProx local training, then the example-weighted average.
    clients = _client_datasets(fed_setup, rec, partition="dirichlet:0.5", num_clients=3)
    tokenizer = load_tokenizer(fed_setup["model"])
    model = load_model(fed_setup["model"], tuple(rec["labels"]), seed=0)
    global_state = {k: v.double() for k, v in float_state(model).items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the one-CPU Ray actors, so local training is bit-for-bit the same
    for server_round, members in ((1, [0, 1, 2]), (2, [0, 2])):
        updates, sizes = [], []
        for i in members:
            set_state(model, {k: v.float() for k, v in global_state.items()})
            train_local(model, tokenizer, clients[i].train_texts, clients[i].train_y, epochs=1, batch_size=16,
                        learning_rate=3e-3, max_length=16, proximal_mu=mu, seed=client_seed(0, server_round, i))
            updates.append({k: v.double() for k, v in float_state(model).items()})
            sizes.append(len(clients[i].train_y))
        unweighted = {k: sum(u[k] for u in updates) / len(updates) for k in global_state}
        global_state = {k: sum(u[k] * n for u, n in zip(updates, sizes)) / sum(sizes) for k in global_state}
    torch.set_num_threads(threads)
    final = float_state(fed.model_)
    # Attention key biases get no true gradient (softmax ignores a constant shift), so what Adam does
    # with them is float rounding noise scaled to the learning rate; every other weight must agree.
    checked = [k for k in final if not k.endswith("attention.self.key.bias")]
    assert len(checked) > 20 and sizes[0] != sizes[1]

    def distance(state: dict) -> float:
        return max(float((final[k].double() - state[k]).abs().max()) for k in checked)

    # Float32 training in two processes rounds differently in the last bits (seen up to 4e-5 after two
    # rounds of Adam); the example-weighted mean must be far closer than the unweighted one.
    weighted_gap, unweighted_gap = distance(global_state), distance(unweighted)
    assert weighted_gap < 1e-4, weighted_gap
    assert unweighted_gap > 10 * max(weighted_gap, 1e-5)  # an unweighted mean would be caught


# -- deployment engine -----------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


@pytest.mark.slow
def test_deployment_superlink_and_two_supernodes_on_loopback(fed_setup, tmp_path, capsys) -> None:
    from privacy.federated.runner import OFFLINE_ENV, _children

    bindir = Path(sys.executable).parent
    env = dict(os.environ, **OFFLINE_ENV, FLWR_HOME=tempfile.mkdtemp(prefix="flwr-home-", dir=tmp_path),
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    port = _free_port()
    logs = []
    procs: list[subprocess.Popen] = []

    def start(name: str, argv: list[str]) -> None:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))

    pids: list[int] = []
    try:
        start("superlink", [str(bindir / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port)])
        for i in range(2):
            start(f"supernode-{i}", [str(bindir / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                     "--host", "127.0.0.1", "--port", str(_free_port()),
                                     "--node-config", f"partition-id={i} num-partitions=2"])
        code = cli_main(["federate", "--model", str(fed_setup["model"]), "--data", str(fed_setup["data"]),
                         "--num-clients", "2", "--num-rounds", "2", "--engine", "deployment",
                         "--superlink", f"127.0.0.1:{port}", "--learning-rate", "3e-3", "--max-length", "16",
                         "--sensitive-feature", "sex", "--timeout", "400", "--out", str(tmp_path / "out")])
        captured = capsys.readouterr()
        assert code == 0, captured.err[-3000:]
    finally:
        for proc in procs:  # stop what we started, by process id, children (SuperExec, app processes) included
            pids.extend([*_children(proc.pid), proc.pid])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for log in logs:
            log.close()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in pids if _alive(pid)]
    assert "rai-audit federate: round 1/2" in captured.err and "rai-audit federate: round 2/2" in captured.err
    rec = json.loads((tmp_path / "out" / "rai_audit_record.json").read_text(encoding="utf-8"))["federated"]
    assert rec["engine"] == "deployment" and rec["superlink"] == f"127.0.0.1:{port}"
    assert rec["rounds_aggregated"] == 2 and rec["failures"] == []
    assert sorted(c["client"] for c in rec["clients"]) == ["0", "1"]
    assert all(math.isfinite(c["accuracy"]) and c.get("groups") for c in rec["clients"])
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["privacy.federated.partition", "privacy.federated.task"])
def test_docstring_examples_run(name) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
