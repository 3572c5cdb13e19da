"""Federated records that say exactly what happened: names, contributors, lost nodes, checkpoints, the DP ledger.

Fast tests: the ServerApp's round loop runs against an in-process fake Flower grid, so lost and
silent nodes are exercised in seconds; the deployment and network tests are in
``tests/test_federated_deployment.py`` (slow).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.test_federated import _instruction, _reply, make_texts
from tests.tiny import make_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fedrec")
    model = make_tiny_model("encoder", root / "model")
    data = root / "data.csv"
    make_texts(120).to_csv(data, index=False)
    return {"root": root, "model": model, "data": data}


# -- train_loss under its own name (was stored as train_train_loss, read as train_loss) -------------------


def test_train_loss_is_recorded_under_the_name_the_record_reads() -> None:
    from privacy.federated.strategy import build_strategy

    strategy = build_strategy("fedavg", num_clients=2, num_rounds=1)
    strategy._asked[("train", 1)] = [1, 2]
    weights = {"w": np.ones((2, 2))}
    replies = [_reply(_instruction(node, 1), weights, n, str(i)) for i, (node, n) in enumerate([(1, 10), (2, 30)])]
    strategy.aggregate_train(1, replies)
    info = strategy.history()["rounds"][0]
    # _reply sends train-loss = n / 10: the example-weighted mean is (1*10 + 3*30) / 40
    assert info["train_loss"] == pytest.approx((1.0 * 10 + 3.0 * 30) / 40)
    assert "train_train_loss" not in info
    assert info["train_clients"] == ["0", "1"] and info["train_missing"] == []


# -- a fake grid: the ServerApp's own round loop, lost and silent nodes ----------------------------------


class FakeGrid:
    """Flower's Grid surface the ServerApp uses, with scripted nodes replying in-process.

    ``behaviour[node](phase, round)`` returns "ok", "silent" (never replies), "gone" (the node
    has left: it is no longer listed and does not reply) or "unavailable" (the SuperLink answers
    for it with Flower's Node Unavailable error, as a real SuperLink does once heartbeats stop).
    """

    def __init__(self, nodes: dict[int, str], behaviour, update=None) -> None:
        self.nodes = nodes
        self.behaviour = behaviour
        self.update = update  # (node, ArrayRecord) -> the ArrayRecord the node sends back
        self.replies: dict[str, object] = {}
        self.round, self.last_phase = 0, "evaluate"

    def get_node_ids(self):
        upcoming = self.round + (1 if self.last_phase == "evaluate" else 0)  # the round about to be configured
        return [n for n in self.nodes if self.behaviour(n, "listed", max(1, upcoming)) != "gone"]

    def push_messages(self, messages):
        from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

        from privacy.federated.strategy import WARM_UP

        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            server_round = int(msg.content["config"]["server-round"])
            self.round, self.last_phase = server_round, msg.metadata.message_type
            behaviour = self.behaviour(node, msg.metadata.message_type, server_round)
            if behaviour == "unavailable":
                from flwr.app import Error

                reply = Message(error=Error(code=5, reason="Error: Node Unavailable"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's own node id
                self.replies[msg.metadata.message_id] = reply
                continue
            if behaviour != "ok":
                continue
            name = self.nodes[node]
            client = ConfigRecord({"name": name, "details": json.dumps({"rows": 10, "train_rows": 8, "eval_rows": 2})})
            if msg.metadata.message_type == WARM_UP:  # as handle_warm_up replies
                content = RecordDict({"metrics": MetricRecord({"ready": 1, "duration-s": 0.1}),
                                      "warm-up": ConfigRecord({"error": ""})})
            elif msg.metadata.message_type == "train":
                arrays = msg.content["arrays"] if self.update is None else self.update(node, msg.content["arrays"])
                content = RecordDict({"arrays": arrays, "client": client,
                                      "metrics": MetricRecord({"num-examples": 8, "train-loss": 0.5})})
            else:
                content = RecordDict({"client": client, "metrics": MetricRecord(
                    {"num-examples": 2, "accuracy": 0.5 + 0.1 * (node % 3), "loss": 0.7})})
            reply = Message(content=content, reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node
            self.replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids):
        out = [self.replies.pop(i) for i in list(message_ids) if i in self.replies]
        return out


@pytest.fixture
def run_identity():
    """A run id for messages built outside a Flower runtime (Flower reads it from its task identity)."""
    from flwr.supercore.task_identity import TaskIdentity

    names = [n for n in vars(TaskIdentity) if n.startswith("_") and not n.startswith("__")
             and not callable(getattr(TaskIdentity, n))]
    saved = {n: getattr(TaskIdentity, n) for n in names}
    for n in names:
        setattr(TaskIdentity, n, 0 if n != "_run_id" else 1)
    yield
    for n, value in saved.items():
        setattr(TaskIdentity, n, value)


def _settings(setup, tmp_path, **kw):
    from privacy.federated.task import Settings

    base = dict(model=str(setup["model"]), data=str(setup["data"]), text_column="text", label_column="label",
                labels=("0", "1"), num_clients=3, num_rounds=3, min_nodes=2, round_timeout=2.0,
                progress_interval=0.5, output_dir=str(tmp_path / "out"), progress=True)
    base.update(kw)
    return Settings(**base)


def test_lost_node_rounds_go_on_with_the_others_and_a_checkpoint_follows_every_round(setup, tmp_path, capsys,
                                                                                     run_identity) -> None:
    from privacy.federated.server_app import GLOBAL_WEIGHTS, HISTORY, run_server

    def behaviour(node, phase, server_round):
        if node == 3 and server_round >= 2:  # node 3 answers round 1, stalls in round 2, then is dropped
            return "gone" if phase == "listed" and server_round >= 3 else "silent"
        return "ok"

    grid = FakeGrid({1: "a", 2: "b", 3: "c"}, behaviour)
    settings = _settings(setup, tmp_path)
    started = time.monotonic()
    run_server(grid, settings)
    assert time.monotonic() - started < 60  # the silent node costs a round timeout per phase, never a hang
    history = json.loads((tmp_path / "out" / HISTORY).read_text(encoding="utf-8"))
    assert history["finished"] is True and history["checkpoint_round"] == 3 and history["aggregated_rounds"] == 3
    assert (tmp_path / "out" / GLOBAL_WEIGHTS).is_file()
    rounds = history["rounds"]
    assert [r["train_clients"] for r in rounds] == [["a", "b", "c"], ["a", "b"], ["a", "b"]]
    assert rounds[1]["train_missing"] == ["c"] and rounds[2]["connected"] == 2
    failures = [(f["round"], f["phase"], f["client"]) for f in history["failures"]]
    assert failures == [(2, "train", "c"), (2, "evaluate", "c")]  # silent in round 2, not listed after it
    err = capsys.readouterr().err
    # periodic lines while a reply is missing: which round and how many answered
    assert "round 2/3 training: 2 of 3 clients answered after" in err
    assert "round 2/3: 2/3 clients trained, failed or missing: c" in err


def test_round_below_the_minimum_is_recorded_as_failed_and_the_last_model_kept(setup, tmp_path, run_identity) -> None:
    from privacy.federated.server_app import HISTORY, run_server

    def behaviour(node, phase, server_round):
        return "gone" if node in (2, 3) and server_round >= 2 else "ok"

    grid = FakeGrid({1: "a", 2: "b", 3: "c"}, behaviour)
    run_server(grid, _settings(setup, tmp_path, num_rounds=2))
    history = json.loads((tmp_path / "out" / HISTORY).read_text(encoding="utf-8"))
    assert history["checkpoint_round"] == 1 and history["aggregated_rounds"] == 1
    second = history["rounds"][1]
    assert second["aggregated"] is False and second["connected"] == 1 and "at least 2 needed" in second["note"]


def test_record_names_every_client_and_exactly_who_each_metric_is_over(setup) -> None:
    """A site that failed every round is in the clients table; the final accuracy names its clients."""
    from privacy.federated import FederatedFineTuner
    from privacy.federated.task import Settings

    history = {
        "rounds": [
            {"round": 1, "aggregated": True, "asked_train": 3, "completed_train": 2, "connected": 3, "accuracy": 0.75,
             "train_clients": ["0", "1"], "train_missing": ["node 99"], "evaluate_clients": ["0", "1"],
             "eval_rows": 40},
            {"round": 2, "aggregated": True, "asked_train": 2, "completed_train": 1, "connected": 2, "accuracy": 0.85,
             "train_clients": ["0"], "train_missing": ["1"], "evaluate_clients": ["0"], "eval_rows": 20},
        ],
        "client_rounds": [
            {"round": 1, "phase": "train", "client": "0"}, {"round": 1, "phase": "train", "client": "1"},
            {"round": 1, "phase": "evaluate", "client": "0", "num_examples": 20, "accuracy": 0.8},
            {"round": 1, "phase": "evaluate", "client": "1", "num_examples": 20, "accuracy": 0.7},
            {"round": 2, "phase": "train", "client": "0"},
            {"round": 2, "phase": "evaluate", "client": "0", "num_examples": 20, "accuracy": 0.85},
        ],
        "failures": [{"round": 1, "phase": "train", "node_id": 99, "client": "node 99", "reason": "boom"},
                     {"round": 2, "phase": "train", "node_id": 2, "client": "1", "reason": "gone"}],
        "clients": {"0": {"rows": 100}, "1": {"rows": 100}},
        "nodes": {"1": "0", "2": "1", "99": "node 99"},
        "aggregated_rounds": 2, "checkpoint_round": 2,
    }
    fed = FederatedFineTuner(num_clients=3, num_rounds=2)
    fed.run_error_, fed.run_info_, fed.duration_s_, fed.accuracy_ = None, {}, 1.0, None
    settings = Settings(model=str(setup["model"]), data=str(setup["data"]), text_column="text", label_column="label",
                        labels=("0", "1"), num_clients=3, num_rounds=2, min_nodes=1)
    record = fed._build_record(settings, setup["model"], setup["data"], "sha256:0", 120, history, None, texts=["x"])
    clients = {c["client"]: c for c in record["clients"]}
    assert set(clients) == {"0", "1", "node 99"}
    assert clients["node 99"]["rounds_trained"] == 0 and clients["node 99"]["rounds_missed"] == [1, 2]
    assert clients["1"]["rounds_missed"] == [2] and clients["1"]["lost_after_round"] == 1
    final = record["final"]
    assert final["clients"] == ["0"] and final["over_all_clients"] is False and final["eval_rows"] == 20
    assert "1 of 3 clients" in final["evaluation"] and "not 1, node 99" in final["evaluation"]
    assert record["complete"] is False
    assert any("final accuracy is over 1 client(s) only (0)" in w for w in record["warnings"])
    assert record["rounds"][1]["missing_clients"] == ["1", "node 99"]


def test_hub_card_federated_line_is_sentences_not_a_key_dump() -> None:
    from audit.results import AuditResults, Manifest
    from reports.markdown_card import render_markdown_card

    record = {"strategy": "fedavg", "strategy_description": "FedAvg (McMahan et al. 2017): long text " * 5,
              "engine": "deployment", "num_clients": 3, "num_rounds": 3, "rounds_aggregated": 3, "model_round": 3,
              "rounds": [{"round": 1}, {"round": 2}, {"round": 3}],
              "final": {"accuracy": 0.85, "clients": ["0"], "over_all_clients": False, "eval_rows": 20},
              "failures": [{"round": 2}], "warnings": ["Client 2 was lost after round 1 and missed every later round"],
              "client_dp": {"epsilon_max": 3.9, "delta": 1e-5, "guarantee_holds": False, "voided_by": "debiasing:cda",
                            "void_reasons": ["a later CDA step read the rows"]}}
    manifest = Manifest(rai_audit_version="0", model_id="m", model_path="/m", fingerprint="sha256:0",
                        kind="sequence-classification", n_parameters=1, device="cpu", max_length=16, seed=0,
                        started_at="t0", finished_at="t1", duration_s=0.0, library_versions={},
                        records={"federated": record})
    text = render_markdown_card(AuditResults(manifest=manifest, results=[]))
    line = next(x for x in text.splitlines() if x.startswith("- **federated**"))
    assert "strategy_description" not in line and "FedAvg (McMahan" not in line
    assert "3 of 3 rounds aggregated" in line and "over 1 client(s) only (0), 20 rows" in line
    assert "Client 2 was lost after round 1" in text
    assert "no longer holds" in text and "debiasing:cda" in text and "delta = 1e-05" in text


# -- failures reported by the site itself carry its name ------------------------------------------------------


def test_a_failing_site_replies_with_its_name_and_the_reason(setup) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

    from privacy.federated.client_app import handle_train
    from privacy.federated.strategy import build_strategy
    from privacy.federated.task import Settings, float_state, load_model

    settings = Settings(model=str(setup["model"]), data=str(setup["data"]), text_column="text", label_column="label",
                        labels=("0", "1"), num_clients=2, num_rounds=1)
    msg = _instruction(5, 1)
    msg.content = RecordDict({"arrays": ArrayRecord(float_state(load_model(setup["model"], ("0", "1")))),
                              "config": ConfigRecord({"server-round": 1})})
    context = Context(run_id=1, node_id=5, node_config={"data-path": "/no/such/site.csv", "site": "clinic-x"},
                      state=RecordDict(), run_config={})
    reply = handle_train(msg, context, settings)
    reply.metadata.__dict__["_src_node_id"] = 5
    strategy = build_strategy("fedavg", num_clients=2, num_rounds=1)
    strategy._asked[("train", 1)] = [5]
    assert strategy.aggregate_train(1, [reply]) == (None, None)
    failure = strategy.history()["failures"][0]
    assert failure["client"] == "clinic-x" and "site.csv" in failure["reason"]


# -- client-side DP: the ledger and what the clients send ------------------------------------------------------


def test_dp_clients_do_not_send_their_training_loss_unless_asked(setup, monkeypatch) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

    from privacy.federated import client_app
    from privacy.federated.client_app import handle_train
    from privacy.federated.task import Settings, float_state, load_model

    def fake_dp(model, tokenizer, data, settings, seed):  # DP-SGD itself is tested in test_federated.py
        return model, {"loss": 0.42, "dp-steps": 3.0, "dp-noise-multiplier": 1.0, "dp-sample-rate": 0.3,
                       "dp-delta": 1e-5}

    monkeypatch.setattr(client_app, "_train_dp", fake_dp)

    initial = float_state(load_model(setup["model"], ("0", "1")))
    sent = {}
    for private_stats in (False, True):
        settings = Settings(model=str(setup["model"]), data=str(setup["data"]), text_column="text",
                            label_column="label", labels=("0", "1"), num_clients=2, num_rounds=1, target_epsilon=8.0,
                            batch_size=16, max_length=16, record_private_stats=private_stats)
        msg = _instruction(7, 1)
        msg.content = RecordDict({"arrays": ArrayRecord(initial), "config": ConfigRecord({"server-round": 1})})
        context = Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2},
                          state=RecordDict(), run_config={})
        reply = handle_train(msg, context, settings)
        assert "failure" not in reply.content, reply.content["failure"]
        sent[private_stats] = dict(reply.content["metrics"])
    assert "train-loss" not in sent[False] and sent[False]["dp-steps"] == 3.0
    assert sent[True]["train-loss"] == pytest.approx(0.42)


def test_privacy_ledger_is_per_client_and_per_round_never_summed() -> None:
    from opacus.accountants import PRVAccountant

    from privacy.federated.task import Settings
    from privacy.federated.trainer import _dp_summary

    settings = Settings(model="/m", data="/d", text_column="t", label_column="y", labels=("0", "1"), num_clients=2,
                        num_rounds=3, target_epsilon=4.0)
    common = {"phase": "train", "dp_noise_multiplier": 1.1, "dp_sample_rate": 0.25, "dp_delta": 1e-5}
    rows = [dict(common, round=r, client="a", dp_steps=4) for r in (1, 2, 3)]
    rows += [dict(common, round=1, client="b", dp_steps=4)]  # b trained one round only
    ledger = _dp_summary(settings, rows, [1, 2, 3])

    def prv(steps: int) -> float:
        accountant = PRVAccountant()
        accountant.history = [(1.1, 0.25, steps)]
        return accountant.get_epsilon(delta=1e-5)

    a, b = ledger["clients"]["a"], ledger["clients"]["b"]
    assert [s["epsilon"] for s in a["by_round"]] == pytest.approx([prv(4), prv(8), prv(12)], rel=0.02)
    assert b["epsilon"] == pytest.approx(prv(4), rel=0.02) and b["rounds_trained"] == [1]
    assert ledger["epsilon_max"] == pytest.approx(a["epsilon"]) and ledger["epsilon_max_client"] == "a"
    assert ledger["epsilon_max"] < a["epsilon"] + b["epsilon"]  # the worst client, not a sum
    assert ledger["delta"] == 1e-5


def test_a_later_non_private_step_voids_the_federated_guarantee() -> None:
    from audit.records import append_step, assess_guarantees, chain_entry

    digest = {"fingerprint": "sha256:ab", "rows": []}
    records = {"federated": {"client_dp": {"epsilon_max": 4.0, "delta": 1e-5}, "rounds": [{"round": 1}],
                             "dataset": {"fingerprint": "sha256:ab"}}}
    records = append_step(records, chain_entry(step="federated", technique="fedavg", digest=digest,
                                               uses_user_data=True, private=True))
    records["debiasing"] = {"technique": "cda", "data": {"fingerprint": "sha256:ab"}}
    records = append_step(records, chain_entry(step="debiasing", technique="cda", digest=digest,
                                               uses_user_data=True, private=False))
    dp = assess_guarantees(records)["federated"]["client_dp"]
    assert dp["guarantee_holds"] is False and dp["voided_by"] == "debiasing:cda"


# -- CLI: device default, --out is the model, temporary folders after a crash -------------------------------------


def test_federate_device_default_matches_train_dp_and_out_as_model_is_named(setup, capsys) -> None:
    from audit.cli import build_parser, main

    parser, _ = build_parser()
    fed = parser.parse_args(["federate", "--model", "m", "--data", "d", "--out", "o"])
    dp = parser.parse_args(["train-dp", "--model", "m", "--data", "d", "--out", "o"])
    assert fed.device == dp.device == "auto"
    code = main(["federate", "--model", str(setup["model"]), "--data", str(setup["data"]), "--out", str(setup["model"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is the input model" in err[0] and "not empty" not in err[0]


def test_stale_temporary_folders_of_killed_runs_are_swept(tmp_path) -> None:
    import subprocess
    import sys

    from privacy.federated.runner import sweep_stale_temp, temp_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f"rai-ray-{int(dead.stdout)}-abc"
    (stale / "session").mkdir(parents=True)
    live = tmp_path / f"rai-federate-{os.getppid()}-xyz"
    live.mkdir()
    mine = tmp_path / (temp_prefix("rai-flwr-home") + "q")
    mine.mkdir()
    other = tmp_path / "rai-ray-session-unrelated"
    other.mkdir()
    assert sweep_stale_temp(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and mine.exists() and other.exists()


# -- central DP with Flower's fixed-clipping wrappers ------------------------------------------------------


def _shifted(scale: dict[int, float]):
    """Each node adds ``scale[node]`` to every weight (an update of norm scale * sqrt(number of weights))."""
    from flwr.app import Array, ArrayRecord

    def update(node, arrays):
        return ArrayRecord({k: Array(np.asarray(v) + np.float32(scale[node]))
                            for k, v in zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)})

    return update


@pytest.mark.parametrize("side", ["server", "client"])
def test_central_dp_clips_each_update_averages_equally_and_adds_the_stated_noise(setup, tmp_path, run_identity,
                                                                                 side) -> None:
    from safetensors.numpy import load_file

    from privacy.federated.server_app import GLOBAL_WEIGHTS, HISTORY, run_server
    from privacy.federated.task import float_state, load_model

    initial = {k: v.numpy() for k, v in float_state(load_model(setup["model"], ("0", "1"))).items()}
    size = sum(v.size for v in initial.values())
    scale = {1: 0.25, 2: 1.0, 3: -3.0}  # (Flower's clipping divides by the norm: an update of exactly 0 would crash)
    clip = 0.5 * np.sqrt(size)  # node 1's update is kept, node 2's (norm sqrt(size)) halved, node 3's cut to a sixth
    if side == "client":
        # client-side clipping happens in the ClientApp's mod; the fake nodes clip as fixedclipping_mod does
        norms = {n: abs(v) * np.sqrt(size) for n, v in scale.items()}
        scale = {n: v * min(1.0, clip / norms[n]) if norms[n] else 0.0 for n, v in scale.items()}
    grid = FakeGrid({1: "a", 2: "b", 3: "c"}, lambda n, p, r: "ok", update=_shifted(scale))
    settings = _settings(setup, tmp_path, num_rounds=1, central_dp=side, central_noise_multiplier=1e-8,
                         central_clipping_norm=float(clip))
    run_server(grid, settings)
    history = json.loads((tmp_path / "out" / HISTORY).read_text(encoding="utf-8"))
    assert history["rounds"][0]["aggregated"] is True and history["rounds"][0]["central_dp_clients"] == 3
    assert history["rounds"][0]["central_dp_noise_std"] == pytest.approx(1e-8 * clip / 3)
    final = load_file(str(tmp_path / "out" / GLOBAL_WEIGHTS))
    # independent: clip each update to the norm, then the equal-weight mean: (0.25 + 0.5 - 0.5) / 3 per weight
    expected_shift = (0.25 + 0.5 + (-3.0) * min(1.0, clip / (3.0 * np.sqrt(size)))) / 3
    for key, value in initial.items():
        np.testing.assert_allclose(final[key], value + expected_shift, atol=1e-4)


def test_central_dp_discards_a_round_missing_a_client_and_noise_is_not_from_the_seed(setup, tmp_path,
                                                                                      run_identity) -> None:
    from safetensors.numpy import load_file

    from privacy.federated.server_app import GLOBAL_WEIGHTS, HISTORY, run_server

    def behaviour(node, phase, server_round):
        return "silent" if node == 3 and server_round == 2 else "ok"

    outs = []
    for attempt in range(2):
        grid = FakeGrid({1: "a", 2: "b", 3: "c"}, behaviour, update=_shifted({1: 0.1, 2: 0.1, 3: 0.1}))
        settings = _settings(setup, tmp_path / str(attempt), num_rounds=2, central_dp="server",
                             central_noise_multiplier=1.0, central_clipping_norm=1.0, round_timeout=1.0,
                             output_dir=str(tmp_path / str(attempt) / "out"))
        run_server(grid, settings)
        history = json.loads((tmp_path / str(attempt) / "out" / HISTORY).read_text(encoding="utf-8"))
        assert [r["aggregated"] for r in history["rounds"]] == [True, False]
        assert "2 of the 3 clients asked" in history["rounds"][1]["note"] and history["checkpoint_round"] == 1
        outs.append(load_file(str(tmp_path / str(attempt) / "out" / GLOBAL_WEIGHTS)))
    key = next(iter(outs[0]))
    assert not np.allclose(outs[0][key], outs[1][key])  # same seed, different noise


def test_central_dp_epsilon_lies_between_the_exact_gaussian_curve_and_the_classic_rdp_bound() -> None:
    from scipy.optimize import brentq
    from scipy.stats import norm

    from privacy.federated.task import Settings
    from privacy.federated.trainer import _central_dp_summary

    z, delta, rounds = 1.2, 1e-5, 4
    settings = Settings(model="/m", data="/d", text_column="t", label_column="y", labels=("0", "1"), num_clients=5,
                        num_rounds=rounds, central_dp="server", central_noise_multiplier=z, central_clipping_norm=1.0,
                        target_delta=delta)
    summary = _central_dp_summary(settings, [{"round": r, "aggregated": True} for r in range(1, rounds + 1)],
                                  {"rounds": []})
    eps = summary["epsilon"]
    mu = np.sqrt(rounds) / z  # T Gaussian mechanisms of multiplier z compose to mu-GDP (Dong et al. 2019)

    def gdp_delta(e: float) -> float:
        return norm.cdf(-e / mu + mu / 2) - np.exp(e) * norm.cdf(-e / mu - mu / 2)

    exact = brentq(lambda e: gdp_delta(e) - delta, 0.0, 100.0)
    classic = min(rounds * a / (2 * z * z) + np.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 200, 20000))
    assert exact <= eps + 1e-6 and eps <= classic + 1e-6, (exact, eps, classic)
    assert [e["round"] for e in summary["epsilon_by_round"]] == [1, 2, 3, 4]
    assert summary["delta"] == delta and summary["unit_of_privacy"].startswith("one client")


def test_a_federation_that_fails_exits_1_not_the_usage_error_code(setup, capsys, monkeypatch) -> None:
    from audit.cli import main
    from privacy.federated import trainer
    from privacy.federated.runner import FederationError

    def fail(self, model, data):
        raise FederationError("No round was aggregated (3 client failure(s); first: round 1, client 0: boom). Logs: /x.")

    monkeypatch.setattr(trainer.FederatedFineTuner, "fit", fail)
    code = main(["federate", "--model", str(setup["model"]), "--data", str(setup["data"]), "--out",
                 str(setup["root"] / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "No round was aggregated" in err[0] and "Logs: /x." in err[0]


# -- local DP with Flower's LocalDpMod ---------------------------------------------------------------------


def test_local_dp_mod_clips_the_update_and_adds_the_stated_gaussian_noise(run_identity) -> None:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

    from privacy.federated.client_app import LOCAL_DP_SENSITIVITY, _local_dp_mod
    from privacy.federated.task import Settings

    eps, delta, clip = 0.8, 1e-5, 2.0
    settings = Settings(model="/m", data="/d", text_column="t", label_column="y", labels=("0", "1"), num_clients=2,
                        num_rounds=1, local_dp_epsilon=eps, local_dp_delta=delta, local_dp_clip=clip)
    anchor = {"w": np.zeros(200_000, dtype=np.float32)}
    update = np.full(200_000, 0.1, dtype=np.float32)  # norm 44.7, clipped to 2
    msg = _instruction(3, 1)
    msg.content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in anchor.items()}),
                              "config": ConfigRecord({"server-round": 1})})
    context = Context(run_id=1, node_id=3, node_config={}, state=RecordDict(), run_config={})

    def client(m, c):
        return Message(content=RecordDict({"arrays": ArrayRecord({"w": Array(update.copy())}),
                                           "metrics": MetricRecord({"num-examples": 5})}), reply_to=m)

    mod = _local_dp_mod(settings)
    outs = [mod(msg, context, client).content["arrays"]["w"].numpy() for _ in range(2)]
    sigma = LOCAL_DP_SENSITIVITY * clip * np.sqrt(2 * np.log(1.25 / delta)) / eps  # classic Gaussian mechanism
    clipped = update * (clip / np.linalg.norm(update))
    for out in outs:
        noise = out - clipped
        assert abs(float(noise.mean())) < 5 * sigma / np.sqrt(noise.size)
        assert float(noise.std()) == pytest.approx(sigma, rel=0.02)
    assert not np.allclose(outs[0], outs[1])  # fresh noise every time, whatever was seeded before


def test_local_dp_ledger_composes_per_client_over_its_rounds_only() -> None:
    from privacy.federated.task import Settings
    from privacy.federated.trainer import _local_dp_summary

    settings = Settings(model="/m", data="/d", text_column="t", label_column="y", labels=("0", "1"), num_clients=2,
                        num_rounds=3, local_dp_epsilon=0.5, local_dp_delta=1e-6, local_dp_clip=1.0)
    rows = [{"phase": "train", "client": "a", "round": r} for r in (1, 2, 3)] + [
        {"phase": "train", "client": "b", "round": 1}, {"phase": "evaluate", "client": "b", "round": 2}]
    ledger = _local_dp_summary(settings, rows)
    assert ledger["clients"]["a"]["epsilon"] == pytest.approx(1.5) and ledger["clients"]["b"]["epsilon"] == 0.5
    assert ledger["epsilon_max"] == pytest.approx(1.5) and ledger["delta"] == pytest.approx(3e-6)
    assert ledger["clients"]["a"]["rounds_trained"] == [1, 2, 3]


def test_every_client_is_warmed_up_before_round_1(setup, tmp_path, run_identity) -> None:
    """Round 1 paid for Ray actors starting and models loading; a start-up query now does that."""
    from privacy.federated.server_app import HISTORY, run_server
    from privacy.federated.strategy import WARM_UP

    grid = FakeGrid({1: "a", 2: "b"}, lambda node, phase, server_round: "ok")
    sent: list[tuple[str, int]] = []
    push = grid.push_messages

    def recording(messages):
        messages = list(messages)
        sent.extend((m.metadata.message_type, m.metadata.dst_node_id) for m in messages)
        return push(messages)

    grid.push_messages = recording
    run_server(grid, _settings(setup, tmp_path, num_clients=2, num_rounds=1, min_nodes=2))
    assert sorted(sent[:2]) == [(WARM_UP, 1), (WARM_UP, 2)]
    assert [t for t, _ in sent[2:]] == ["train", "train", "evaluate", "evaluate"]
    history = json.loads((tmp_path / "out" / HISTORY).read_text(encoding="utf-8"))
    assert history["warm_up_s"] >= 0 and history["finished"] is True
    assert history["warm_up"] | {"seconds": 0} == {"asked": 2, "ready": 2, "failed": 0, "no_reply": 0, "errors": [],
                                                   "seconds": 0}


def test_a_warm_up_that_fails_or_goes_unanswered_is_counted_and_said(setup, tmp_path, run_identity, capsys) -> None:
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from privacy.federated.server_app import HISTORY, run_server
    from privacy.federated.strategy import WARM_UP

    # Node 2 does not answer the warm-up; node 3 answers that loading failed, as handle_warm_up does.
    grid = FakeGrid({1: "a", 2: "b", 3: "c"},
                    lambda node, phase, server_round: "silent" if (node, phase) == (2, WARM_UP) else "ok")
    push = grid.push_messages

    def failing(messages):
        messages = list(messages)
        ids = push(messages)
        for m in messages:
            if m.metadata.message_type == WARM_UP and m.metadata.dst_node_id == 3:
                grid.replies[m.metadata.message_id] = Message(content=RecordDict({
                    "metrics": MetricRecord({"ready": 0, "duration-s": 0.1}),
                    "warm-up": ConfigRecord({"error": "FileNotFoundError"})}), reply_to=m)
        return ids

    grid.push_messages = failing
    run_server(grid, _settings(setup, tmp_path, num_clients=3, num_rounds=1, min_nodes=2, round_timeout=1.0))
    history = json.loads((tmp_path / "out" / HISTORY).read_text(encoding="utf-8"))
    assert {k: history["warm_up"][k] for k in ("asked", "ready", "failed", "no_reply", "errors")} == \
           {"asked": 3, "ready": 1, "failed": 1, "no_reply": 1, "errors": ["FileNotFoundError"]}
    said = capsys.readouterr()
    assert "1 of 3 clients loaded the model; 1 failed (FileNotFoundError) and 1 did not answer" in said.out + said.err


def test_client_warm_up_replies_the_error_type_and_nothing_else(tmp_path, run_identity) -> None:
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from privacy.federated.client_app import handle_warm_up
    from privacy.federated.strategy import WARM_UP
    from privacy.federated.task import Settings

    settings = Settings(model=str(tmp_path / "no-model"), data=str(tmp_path / "no-data.csv"), text_column="t",
                        label_column="y", labels=("0", "1"), num_clients=2, num_rounds=1)
    msg = Message(content=RecordDict({"config": ConfigRecord({"server-round": 0})}), message_type=WARM_UP,
                  dst_node_id=1)
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config={})
    reply = handle_warm_up(msg, context, settings)
    assert int(reply.content["metrics"]["ready"]) == 0
    assert reply.content["warm-up"]["error"] and reply.content["warm-up"]["error"].isidentifier()
    assert set(reply.content.keys()) == {"metrics", "warm-up"}


def test_the_superlinks_node_unavailable_reply_is_the_lost_nodes_failure(setup, tmp_path, run_identity) -> None:
    """The SuperLink writes that error itself (source: node 1, the SuperLink): it belongs to the node the
    message went to, once, and no phantom client "node 1" appears missing from every round."""
    from privacy.federated.server_app import HISTORY, run_server

    grid = FakeGrid({11: "a", 12: "b", 13: "c"},
                    lambda node, phase, server_round: "unavailable" if node == 13 and server_round >= 2 else "ok")
    run_server(grid, _settings(setup, tmp_path, num_clients=3, num_rounds=2, min_nodes=2, round_timeout=1.0))
    history = json.loads((tmp_path / "out" / HISTORY).read_text(encoding="utf-8"))
    failures = [(f["round"], f["phase"], f["client"]) for f in history["failures"]]
    assert failures == [(2, "train", "c"), (2, "evaluate", "c")]
    assert set(history["nodes"].values()) == {"a", "b", "c"}
    assert [r["train_missing"] for r in history["rounds"]] == [[], ["c"]]
