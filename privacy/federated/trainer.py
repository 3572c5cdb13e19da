"""Federated fine-tuning as an estimator: ``FederatedFineTuner(...).fit(model, data).save(out)``."""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from audit._io import write_json_atomic
from audit.data import AuditDataset, fingerprint_path, load_dataset
from audit.errors import ConfigError, DataError, NotFittedError, OutputError
from audit.records import append_step, chain_entry, data_digest
from audit.target import RECORD_FILENAME, AuditTarget, model_fingerprint, read_records
from privacy.dp import default_delta
from privacy.federated.partition import parse_partition
from privacy.federated.runner import FederationError
from privacy.federated.task import (
    ClientData,
    Settings,
    build_client_data,
    check_model_dir,
    client_seed,
    evaluate,
    group_metrics,
    json_safe,
    load_model,
    load_tokenizer,
    select_client_rows,
    set_state,
    sort_labels,
    train_local,
)

__all__ = ["ENGINES", "STRATEGY_NAMES", "FederatedFineTuner"]

Engine = Literal["simulation", "deployment"]
ENGINES: tuple[str, ...] = get_args(Engine)
StrategyName = Literal["fedavg", "fedprox"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)
DEFAULT_PROXIMAL_MU = 0.01
MIN_NODES_RANGE = ("min_nodes must be a whole number from 1 to num_clients ({n}), got {got!r}. Use e.g. a majority "
                   "(the default) or --min-nodes 1 to aggregate any round that one client finished.")
CERTS_NEED_SUPERLINK = ("root_certificates (--root-certificates) applies to a SuperLink you run (--superlink HOST:PORT); "
                        "the federation rai-audit starts on 127.0.0.1 has no TLS. Give --superlink or drop the "
                        "certificate.")
CERTS_MISSING = "Root certificate file {path!r} does not exist. Give the PEM file of the CA that signed the SuperLink's certificate."
CENTRAL_AND_LOCAL = ("central_dp and target_epsilon are two different guarantees (client-level and example-level); "
                     "use one: --central-dp with --central-noise/--central-clip, or --target-epsilon.")
CENTRAL_WITHOUT_MODE = ("central_noise_multiplier / central_clipping_norm apply with central_dp only. Add --central-dp "
                        "server (or client), or drop them.")
LOCAL_AND_OTHER = ("local DP (local_dp_epsilon) is a third kind of guarantee; use one of --local-dp-epsilon, "
                   "--central-dp or --target-epsilon.")
LOCAL_EPSILON_RANGE = ("local_dp_epsilon must be in (0, 1] (the classic Gaussian mechanism of Flower's LocalDpMod holds "
                       "only there), got {got!r}. Use e.g. --local-dp-epsilon 1.0 with --local-dp-clip.")
RUN_STOPPED = "The federation stopped before its last round ({reason}); the model kept is the one aggregated in round {round}."


def _positive(name: str, value: Any, *, integer: bool = False, hint: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if integer:
        ok = ok and isinstance(value, int)
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}. {hint}".rstrip())


def _fraction(name: str, value: Any, hint: str) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
        raise ConfigError(f"{name} must be in (0, 1], got {value!r}. {hint}")


class FederatedFineTuner:
    """Fine-tune a Hugging Face sequence classifier across clients with Flower, and record how each fared.

    The federation runs on Flower's Message API (``ServerApp`` / ``ClientApp``) with Flower's own
    FedAvg (McMahan et al. 2017) or FedProx (Li et al. 2020) strategy. One dataset is split into
    ``num_clients`` clients (IID, Dirichlet non-IID by label, or by a sensitive attribute); every
    client holds out ``eval_fraction`` of its rows, and after every round every client scores the
    global model on them, by group when ``sensitive_features`` is given. A client that crashes or
    times out in a round is recorded and the round aggregates the others when at least
    ``min_completed_fraction`` of the clients asked completed.

    The model given is never changed: :meth:`fit` builds the global model and :meth:`save` writes
    a new directory (safetensors and tokenizer) with ``rai_audit_record.json`` holding a
    ``"federated"`` section beside any sections the input model already had.

    Parameters
    ----------
    num_clients : int, default=5
        Clients (Flower SuperNodes).
    num_rounds : int, default=3
        Federated rounds (Flower's ``num_rounds``).
    partition : str, default="iid"
        ``"iid"``, ``"dirichlet:ALPHA"`` (e.g. ``"dirichlet:0.5"``) or ``"by:COLUMN"``; see
        :mod:`privacy.federated.partition`.
    strategy : {"fedavg", "fedprox"}, default="fedavg"
    proximal_mu : float, optional
        FedProx's ``mu`` in the client loss term ``(mu / 2) * ||w - w_global||^2``; default 0.01.
        Only for ``strategy="fedprox"``.
    fraction_train : float, default=1.0
        Share of clients sampled to train in each round (Flower's ``fraction_train``).
    min_completed_fraction : float, default=0.5
        Share of the sampled clients that must return an update for a round to be aggregated;
        otherwise the round's update is discarded and the global model kept.
    min_nodes : int, optional
        Fewest clients a round needs: connected before it starts and returning an update for it to
        be aggregated. Default: a majority of ``num_clients`` (``num_clients // 2 + 1``). A round
        below it is recorded as failed; the latest aggregated model is kept and saved.
    local_epochs : int, default=1
        Passes over its training rows each client makes per round.
    batch_size : int, default=16
    learning_rate : float, default=5e-5
        AdamW (no weight decay), re-initialised every round.
    max_length : int, default=128
        Token limit; longer texts are truncated.
    eval_fraction : float, default=0.2
        Share of each client's rows held out (stratified by label) to evaluate the global model.
    text_column, label_column : str, default="text", "label"
    sensitive_features : str or sequence of str, optional
        Columns naming each row's group (fairlearn's vocabulary); per-client and overall accuracy,
        selection rate and true-positive rate by group, and their gaps, are recorded.
    pos_label : str, optional
        The positive class for selection and true-positive rates (binary tasks); default the
        second label in sorted order.
    target_epsilon : float, optional
        Turn on client-side DP-SGD (through :class:`privacy.dp.DPFineTuner`): every client's
        rows are protected with this epsilon over the whole run. FedAvg only.
    target_delta : float, optional
        Delta of the client-side guarantee; default :func:`privacy.dp.default_delta` of each
        client's training rows.
    max_grad_norm : float, default=1.0
        Per-example clipping norm of client-side DP-SGD.
    record_private_stats : bool, default=False
        Under DP (client-side or central), also send each client's training loss to the server and
        record it. That loss is computed on the private rows without DP; by default it is not sent.
    central_dp : {"server", "client"}, optional
        Client-level central DP with Flower's own wrappers: ``"server"`` is
        ``DifferentialPrivacyServerSideFixedClipping`` (the server clips each update), ``"client"``
        is ``DifferentialPrivacyClientSideFixedClipping`` with Flower's ``fixedclipping_mod`` at
        every client. Both average the clipped updates with equal weights and add Gaussian noise
        of standard deviation ``central_noise_multiplier * central_clipping_norm / k`` for the
        ``k`` clients of the round; a round missing any client asked is discarded. The guarantee:
        (epsilon, delta)-DP for everything one client contributes, against anyone holding the
        released models (RDP accounting over the aggregated rounds, no sampling amplification);
        the server itself sees each client's update, so it must be trusted.
    central_noise_multiplier, central_clipping_norm : float
        Required with ``central_dp``.
    local_dp_epsilon, local_dp_clip : float, optional
        Local DP with Flower's ``LocalDpMod`` at every client: the client clips its update to
        ``local_dp_clip`` and adds Gaussian noise for (``local_dp_epsilon``, delta)-DP of that
        update in that round (classic Gaussian mechanism, sensitivity ``2 * local_dp_clip``;
        valid for epsilon at most 1), against the server too. Over the rounds a client trains the
        guarantees add up (basic composition); they are never added across clients.
    engine : {"simulation", "deployment"}, default="simulation"
        ``run_simulation`` on Ray, or Flower's deployment runtime (SuperLink, SuperNodes,
        ``flwr run``); see :mod:`privacy.federated.runner`.
    superlink : str, optional
        Deployment only: ``host:port`` of a running SuperLink with its SuperNodes connected.
        ``None``: a SuperLink and ``num_clients`` SuperNodes are started on 127.0.0.1.
    root_certificates : path, optional
        Deployment with ``superlink``: PEM file of the CA that signed the SuperLink's TLS
        certificate; the connection then uses TLS (without it, the connection is insecure).
    round_timeout : float, default=600
        Seconds the server waits in each phase of a round: for ``min_nodes`` clients to be
        connected, and for their replies; a client that has not answered by then is recorded as
        failed and the round goes on with those that did.
    baseline : bool, default=False
        Also train one model centrally on the union of the clients' training rows (same initial
        weights, ``num_rounds * local_epochs`` epochs) and score it on the union of their held-out
        rows, to report what federation cost.
    seed : int, default=0
    device : str, default="cpu"
    num_cpus : int, optional
        Simulation: CPUs Ray may use (default one per client, at most the machine's).
    client_mods : sequence of Flower mods, default=()
        Simulation: wrapped around the client's handlers (Flower's ``Mod`` hook).
    progress : bool, default=False
        Print one line per round to stderr.
    deployment_timeout : float, optional
        Deployment: seconds for the whole run. Default: ``(3 * num_rounds + 1) * round_timeout``
        plus 300 s for start-up (each round waits at most three round timeouts: for nodes, for
        training replies, for evaluation replies). When it expires the run is stopped and the
        latest checkpoint is kept.

    Attributes
    ----------
    model_ : transformers.PreTrainedModel
        The final global model (evaluation mode, CPU).
    tokenizer_ : tokenizer
    labels_ : tuple of str
    accuracy_ : float or None
        Accuracy of the final global model on the union of the clients' held-out rows (with an
        existing SuperLink: as the clients reported it).
    centralized_accuracy_ : float or None
        The centralized baseline's accuracy on the same rows (``baseline=True``).
    history_ : dict
        What the server recorded: rounds, per-client rows, failures.
    record_ : dict
        The ``"federated"`` section :meth:`save` writes.

    Examples
    --------
    >>> from privacy.federated import FederatedFineTuner
    >>> fed = FederatedFineTuner(num_clients=5, num_rounds=3, partition="dirichlet:0.5")  # doctest: +SKIP
    >>> fed.fit("path/to/model", "train.csv").save("model-federated")  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        num_clients: int = 5,
        num_rounds: int = 3,
        partition: str = "iid",
        strategy: StrategyName = "fedavg",
        proximal_mu: float | None = None,
        fraction_train: float = 1.0,
        min_completed_fraction: float = 0.5,
        min_nodes: int | None = None,
        local_epochs: int = 1,
        batch_size: int = 16,
        learning_rate: float = 5e-5,
        max_length: int = 128,
        eval_fraction: float = 0.2,
        text_column: str = "text",
        label_column: str = "label",
        sensitive_features: str | Sequence[str] | None = None,
        pos_label: str | None = None,
        target_epsilon: float | None = None,
        target_delta: float | None = None,
        max_grad_norm: float = 1.0,
        record_private_stats: bool = False,
        central_dp: str | None = None,
        central_noise_multiplier: float | None = None,
        central_clipping_norm: float | None = None,
        local_dp_epsilon: float | None = None,
        local_dp_clip: float | None = None,
        engine: Engine = "simulation",
        superlink: str | None = None,
        root_certificates: str | os.PathLike[str] | None = None,
        round_timeout: float = 600.0,
        baseline: bool = False,
        seed: int = 0,
        device: str = "cpu",
        num_cpus: int | None = None,
        client_mods: Sequence[Any] = (),
        progress: bool = False,
        deployment_timeout: float | None = None,
    ) -> None:
        self.num_clients = num_clients
        self.num_rounds = num_rounds
        self.partition = partition
        self.strategy = strategy
        self.proximal_mu = proximal_mu
        self.fraction_train = fraction_train
        self.min_completed_fraction = min_completed_fraction
        self.min_nodes = min_nodes
        self.local_epochs = local_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_length = max_length
        self.eval_fraction = eval_fraction
        self.text_column = text_column
        self.label_column = label_column
        self.sensitive_features = sensitive_features
        self.pos_label = pos_label
        self.target_epsilon = target_epsilon
        self.target_delta = target_delta
        self.max_grad_norm = max_grad_norm
        self.record_private_stats = record_private_stats
        self.central_dp = central_dp
        self.central_noise_multiplier = central_noise_multiplier
        self.central_clipping_norm = central_clipping_norm
        self.local_dp_epsilon = local_dp_epsilon
        self.local_dp_clip = local_dp_clip
        self.engine = engine
        self.superlink = superlink
        self.root_certificates = root_certificates
        self.round_timeout = round_timeout
        self.baseline = baseline
        self.seed = seed
        self.device = device
        self.num_cpus = num_cpus
        self.client_mods = client_mods
        self.progress = progress
        self.deployment_timeout = deployment_timeout

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as given."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    # -- checks ----------------------------------------------------------------------------------
    def _sensitive(self) -> tuple[str, ...]:
        value = self.sensitive_features
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        if isinstance(value, Sequence) and all(isinstance(c, str) and c for c in value):
            return tuple(value)
        raise ConfigError(f"sensitive_features must be a column name or a list of them, got {value!r}.")

    def _validate_params(self) -> float:
        """Check every setting; return the proximal mu to use."""
        _positive("num_clients", self.num_clients, integer=True, hint="Use e.g. 5.")
        if not isinstance(self.num_rounds, int) or isinstance(self.num_rounds, bool) or self.num_rounds < 1:
            raise ConfigError(f"num_rounds must be a positive integer, got {self.num_rounds!r}. "
                              "Train for at least one round, e.g. --num-rounds 3.")
        if self.strategy not in STRATEGY_NAMES:
            raise ConfigError(f"Unknown strategy {self.strategy!r}. Use one of {list(STRATEGY_NAMES)}.")
        if self.engine not in ENGINES:
            raise ConfigError(f"Unknown engine {self.engine!r}. Use one of {list(ENGINES)}.")
        if self.superlink is not None and self.engine != "deployment":
            raise ConfigError(f"superlink={self.superlink!r} applies to engine='deployment' only, got "
                              f"engine={self.engine!r}. Drop superlink or use the deployment engine.")
        if self.superlink is not None and self.baseline:
            raise ConfigError("baseline=True needs every client's rows in one place, but with an existing SuperLink "
                              "the sites keep their data. Drop baseline (--centralized-baseline) or let rai-audit start the "
                              "federation on 127.0.0.1 (no --superlink).")
        mu = self.proximal_mu
        if self.strategy == "fedavg":
            if mu is not None:
                raise ConfigError(f"proximal_mu={mu!r} applies to strategy='fedprox' only. Use strategy='fedprox' "
                                  "(--strategy fedprox) or drop proximal_mu (--mu).")
            mu = 0.0
        else:
            mu = DEFAULT_PROXIMAL_MU if mu is None else mu
            if not (isinstance(mu, (int, float)) and not isinstance(mu, bool) and math.isfinite(mu) and mu >= 0):
                raise ConfigError(f"proximal_mu must be a non-negative number, got {mu!r}. Use e.g. 0.01.")
        parse_partition(self.partition)
        _fraction("fraction_train", self.fraction_train, "Use e.g. 1.0 (every client trains every round).")
        _fraction("min_completed_fraction", self.min_completed_fraction,
                  "Use e.g. 0.5 (a round needs half its clients).")
        _positive("local_epochs", self.local_epochs, integer=True, hint="Use e.g. 1.")
        _positive("batch_size", self.batch_size, integer=True, hint="Use e.g. 16.")
        _positive("learning_rate", self.learning_rate, hint="Use e.g. 5e-5.")
        _positive("max_length", self.max_length, integer=True, hint="Use e.g. 128.")
        _positive("round_timeout", self.round_timeout, hint="Use e.g. 3600 (seconds).")
        _positive("max_grad_norm", self.max_grad_norm, hint="Use e.g. 1.0.")
        if not (isinstance(self.eval_fraction, (int, float)) and 0 <= self.eval_fraction < 1):
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}. Use e.g. 0.2.")
        if self.target_epsilon is not None:
            _positive("target_epsilon", self.target_epsilon, hint="Use e.g. 8.0.")
            if self.strategy != "fedavg":
                raise ConfigError("Client-side DP (target_epsilon) works with strategy='fedavg' only: DP-SGD's "
                                  "trainer has no proximal term. Use --strategy fedavg or drop --target-epsilon.")
        if self.target_delta is not None and not (isinstance(self.target_delta, float) and 0 < self.target_delta < 1):
            raise ConfigError(f"target_delta must be in (0, 1), got {self.target_delta!r}. Use e.g. 1e-5.")
        if self.num_cpus is not None:
            _positive("num_cpus", self.num_cpus, integer=True, hint="Use e.g. 2.")
        if self.deployment_timeout is not None:
            _positive("deployment_timeout", self.deployment_timeout, hint="Use e.g. 3600 (seconds).")
        if self.min_nodes is not None and not (isinstance(self.min_nodes, int) and not isinstance(self.min_nodes, bool)
                                               and 1 <= self.min_nodes <= self.num_clients):
            raise ConfigError(MIN_NODES_RANGE.format(n=self.num_clients, got=self.min_nodes))
        if self.central_dp is not None:
            if self.central_dp not in ("server", "client"):
                raise ConfigError(f"central_dp must be 'server' or 'client', got {self.central_dp!r}. "
                                  "Use --central-dp server (the server clips) or client (the clients clip).")
            if self.target_epsilon is not None:
                raise ConfigError(CENTRAL_AND_LOCAL)
            _positive("central_noise_multiplier", self.central_noise_multiplier, hint="Use e.g. 1.0.")
            _positive("central_clipping_norm", self.central_clipping_norm, hint="Use e.g. 1.0.")
        elif self.central_noise_multiplier is not None or self.central_clipping_norm is not None:
            raise ConfigError(CENTRAL_WITHOUT_MODE)
        if self.local_dp_epsilon is not None or self.local_dp_clip is not None:
            if self.target_epsilon is not None or self.central_dp is not None:
                raise ConfigError(LOCAL_AND_OTHER)
            if not (isinstance(self.local_dp_epsilon, (int, float)) and 0 < self.local_dp_epsilon <= 1):
                raise ConfigError(LOCAL_EPSILON_RANGE.format(got=self.local_dp_epsilon))
            _positive("local_dp_clip", self.local_dp_clip, hint="Use e.g. 1.0 (--local-dp-clip).")
        if self.root_certificates is not None:
            if self.superlink is None:
                raise ConfigError(CERTS_NEED_SUPERLINK)
            if not Path(self.root_certificates).expanduser().is_file():
                raise ConfigError(CERTS_MISSING.format(path=os.fspath(self.root_certificates)))
        self._sensitive()
        return float(mu)

    def _min_nodes(self) -> int:
        return int(self.min_nodes) if self.min_nodes is not None else self.num_clients // 2 + 1

    def _overall_timeout(self) -> float:
        if self.deployment_timeout is not None:
            return float(self.deployment_timeout)
        return (3 * self.num_rounds + 1) * float(self.round_timeout) + 300.0

    # -- fit -------------------------------------------------------------------------------------
    def fit(self, model: Any, dataset: Any) -> FederatedFineTuner:
        """Run the federation and build the global model.

        Parameters
        ----------
        model : path or AuditTarget
            A directory written by ``save_pretrained`` (safetensors) holding a text encoder or
            classifier and its tokenizer. It is never changed.
        dataset : path, AuditDataset or pandas.DataFrame
            Labelled rows (CSV, JSONL, Parquet or a saved Hugging Face dataset).

        Returns
        -------
        self
        """
        mu = self._validate_params()
        started = time.perf_counter()
        model_dir = check_model_dir(model.path if isinstance(model, AuditTarget) else model)
        self.input_records_ = read_records(model_dir)
        from privacy.federated.runner import sweep_stale_temp, temp_prefix

        sweep_stale_temp()  # folders of earlier runs that were killed before they could clean up
        staging = Path(tempfile.mkdtemp(prefix=temp_prefix("rai-federate")))
        try:
            frame, data_path, fingerprint = self._read_data(dataset, staging)
            labels = sort_labels(frame[self.label_column].tolist())
            if len(labels) < 2:
                raise DataError(f"Label column {self.label_column!r} of {data_path} has one class ({labels[0]!r}); "
                                "a classifier needs at least two. Give data with examples of every class.")
            pos_label = self._pos_label(labels)
            settings = Settings(
                model=str(model_dir), data=str(data_path), text_column=self.text_column,
                label_column=self.label_column, labels=labels, num_clients=self.num_clients,
                num_rounds=self.num_rounds, sensitive_features=self._sensitive(), pos_label=pos_label,
                partition=parse_partition(self.partition).spec, strategy=self.strategy, proximal_mu=mu,
                fraction_train=float(self.fraction_train), min_completed_fraction=float(self.min_completed_fraction),
                min_nodes=self._min_nodes(), round_timeout=float(self.round_timeout),
                local_epochs=self.local_epochs, batch_size=self.batch_size,
                learning_rate=float(self.learning_rate), max_length=self.max_length,
                eval_fraction=float(self.eval_fraction),
                target_epsilon=None if self.target_epsilon is None else float(self.target_epsilon),
                target_delta=self.target_delta, max_grad_norm=float(self.max_grad_norm),
                record_private_stats=bool(self.record_private_stats), central_dp=self.central_dp or "",
                central_noise_multiplier=float(self.central_noise_multiplier or 0.0),
                central_clipping_norm=float(self.central_clipping_norm or 0.0),
                local_dp_epsilon=float(self.local_dp_epsilon or 0.0), local_dp_clip=float(self.local_dp_clip or 0.0),
                local_dp_delta=(float(self.target_delta) if self.target_delta is not None else
                                default_delta(self.num_clients)) if self.local_dp_epsilon else 0.0,
                seed=int(self.seed),
                device=self.device, output_dir=str(staging / "out"), engine=self.engine, progress=bool(self.progress),
            )
            local_clients = self.superlink is None
            clients = self._client_data(frame, settings) if local_clients else []
            if self.target_epsilon is not None:
                self._check_dp(clients, labels)
            self.run_error_ = None
            try:
                self.run_info_ = self._run(settings)
            except FederationError as exc:
                # A run that stopped early keeps the rounds it finished: the ServerApp checkpoints the
                # latest aggregated model and the history after every round.
                self.run_info_ = dict(getattr(exc, "info", {}) or {})
                if not _checkpointed(staging / "out"):
                    raise
                self.run_error_ = str(exc)
            history = json.loads((staging / "out" / "history.json").read_text(encoding="utf-8"))
            if not history.get("aggregated_rounds"):
                raise FederationError(self._no_round_message(history) + _logs_hint(self.run_info_))
            from safetensors.torch import load_file

            final_state = load_file(str(staging / "out" / "global.safetensors"))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.labels_ = labels
        self.tokenizer_ = load_tokenizer(model_dir)
        self.model_ = load_model(model_dir, labels, seed=settings.seed)
        set_state(self.model_, final_state)
        self.history_ = history
        self.accuracy_, self.centralized_accuracy_ = None, None
        central = None
        if clients:
            self.accuracy_, central = self._score(clients, settings, model_dir)
            self.centralized_accuracy_ = central["accuracy"] if central else None
        else:
            scored = [r["accuracy"] for r in history.get("rounds", []) if isinstance(r.get("accuracy"), float)]
            self.accuracy_ = scored[-1] if scored else None
        self.duration_s_ = time.perf_counter() - started
        self.record_ = json_safe(self._build_record(settings, model_dir, data_path, fingerprint, len(frame), history,
                                                    central, texts=frame[self.text_column].astype(str).tolist()))
        return self

    def _pos_label(self, labels: tuple[str, ...]) -> str | None:
        if self.pos_label is not None:
            if str(self.pos_label) not in labels:
                raise ConfigError(f"pos_label {self.pos_label!r} is not a label of the data {list(labels)}. "
                                  "Give one of them.")
            return str(self.pos_label)
        return labels[1] if len(labels) == 2 else None

    def _read_data(self, dataset: Any, staging: Path) -> tuple[Any, Path, str]:
        import pandas as pd

        wanted = [self.text_column, self.label_column, *self._sensitive()]
        if isinstance(dataset, AuditDataset):
            frame, path, fingerprint = dataset.frame, dataset.path, dataset.fingerprint
        elif isinstance(dataset, (str, os.PathLike)):
            loaded = load_dataset(dataset, text_column=self.text_column, label_column=self.label_column,
                                  sensitive_features=self._sensitive())
            frame, path, fingerprint = loaded.frame, loaded.path, loaded.fingerprint
        elif isinstance(dataset, pd.DataFrame):
            frame, path, fingerprint = dataset, "", ""
        else:
            raise DataError(f"fit() needs a data file path, an AuditDataset or a pandas DataFrame, got "
                            f"{type(dataset).__name__}. Pass one of those.")
        columns = [str(c) for c in frame.columns]
        for column in wanted:
            if column not in columns:
                raise DataError(f"Column {column!r} is not in {path or 'the DataFrame'}. Columns: {columns}. "
                                "Set text_column, label_column and sensitive_features to columns of the data.")
        parsed = parse_partition(self.partition)
        if parsed.method == "by" and parsed.column not in columns:
            raise DataError(f"Partition column {parsed.column!r} (partition='by:{parsed.column}') is not in "
                            f"{path or 'the DataFrame'}. Columns: {columns}. Give one of them.")
        if len(frame) == 0:
            raise DataError(f"The data {path or 'DataFrame'} has no rows. Give labelled rows to train on.")
        for column in (self.text_column, self.label_column):
            series = frame[column]
            missing = int(series.isna().sum()) + int((series.astype(str).str.strip() == "").sum())
            if missing:
                raise DataError(f"Column {column!r} of {path or 'the DataFrame'} has {missing} missing value(s). "
                                "Drop or fill those rows.")
        if not path or not Path(path).exists():
            # Clients read a file: an in-memory frame is written for them (simulation and loopback only).
            target = staging / "data.parquet"
            frame.reset_index(drop=True).to_parquet(target, index=False)
            path = str(target)
            fingerprint = fingerprint or fingerprint_path(target)
        return frame.reset_index(drop=True), Path(path).resolve(), fingerprint

    def _client_data(self, frame: Any, settings: Settings) -> list[ClientData]:
        """Every client's rows as the clients will compute them (checks the partition before any engine starts)."""
        out = []
        for i in range(settings.num_clients):
            rows = select_client_rows(frame, settings, i, settings.num_clients, source=repr(settings.data))
            out.append(build_client_data(frame, rows, settings, name=str(i), partition_id=i,
                                         source=repr(settings.data)))
        return out

    def _check_dp(self, clients: list[ClientData], labels: tuple[str, ...]) -> None:
        try:
            from privacy.dp import DPFineTuner, compute_epsilon  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"Client-side DP needs privacy.dp.DPFineTuner, which cannot be imported ({exc}). "
                              "Drop target_epsilon or install rai-audit with its DP support.") from None
        for client in clients:
            present = sorted({labels[y] for y in client.train_y})
            if len(present) < len(labels):
                raise ConfigError(f"Client-side DP needs every client to train on every class ({list(labels)}), but "
                                  f"client {client.name} has only {present}. Use IID partitioning, a larger "
                                  "Dirichlet alpha or fewer clients.")

    def _run(self, settings: Settings) -> dict[str, Any]:
        from privacy.federated.runner import run_deployment_engine, run_simulation_engine

        if self.engine == "simulation":
            run_simulation_engine(settings, num_cpus=self.num_cpus, client_mods=self.client_mods,
                                  progress=_stderr_progress if self.progress else None)
            if not (Path(settings.output_dir) / "history.json").is_file():
                raise FederationError("The simulation ended without a result. Run again with progress=True "
                                      "to see the rounds.")
            return {}
        if self.client_mods:
            raise ConfigError("client_mods apply to the simulation engine only; a deployment's SuperNodes load "
                              "the ClientApp themselves. Drop client_mods or use engine='simulation'.")
        say = _stderr_progress if self.progress else None
        certs = None if self.root_certificates is None else os.fspath(Path(self.root_certificates).expanduser())
        return run_deployment_engine(settings, superlink=self.superlink, progress=say, insecure=certs is None,
                                     root_certificates=certs, timeout=self._overall_timeout())

    @staticmethod
    def _no_round_message(history: dict[str, Any]) -> str:
        failures = history.get("failures") or []
        first = failures[0] if failures else None
        detail = (f"first: round {first['round']}, client {first.get('client') or first.get('node_id')}: "
                  f"{first['reason']}" if first else "no client replied")
        return (f"No round was aggregated ({len(failures)} client failure(s); {detail}). "
                "Fix the failing clients or lower min_completed_fraction.")

    def _score(self, clients: list[ClientData], settings: Settings,
               model_dir: Path) -> tuple[float | None, dict[str, Any] | None]:
        """Accuracy of the global model on the union of held-out rows, and the centralized baseline's."""
        texts = [t for c in clients for t in c.eval_texts]
        ys = [y for c in clients for y in c.eval_y]
        if not ys:
            return None, None
        fed = evaluate(self.model_, self.tokenizer_, texts, ys, max_length=settings.max_length,
                       device=settings.device).accuracy
        if not self.baseline:
            return fed, None
        started = time.perf_counter()
        central = load_model(model_dir, settings.labels, seed=settings.seed)
        epochs = settings.num_rounds * settings.local_epochs
        train_texts = [t for c in clients for t in c.train_texts]
        train_y = [y for c in clients for y in c.train_y]
        train_local(central, self.tokenizer_, train_texts, train_y, epochs=epochs, batch_size=settings.batch_size,
                    learning_rate=settings.learning_rate, max_length=settings.max_length,
                    seed=client_seed(settings.seed, 0, "centralized"), device=settings.device)
        acc = evaluate(central, self.tokenizer_, texts, ys, max_length=settings.max_length,
                       device=settings.device).accuracy
        return fed, {"accuracy": acc, "federated_accuracy": fed, "gap": fed - acc, "epochs": epochs,
                     "train_rows": len(train_y), "eval_rows": len(ys), "duration_s": time.perf_counter() - started,
                     "description": "one model trained centrally on the union of the clients' training rows, from the "
                                    "same initial weights, for num_rounds x local_epochs epochs, scored on the union "
                                    "of their held-out rows; not released"}

    # -- record ----------------------------------------------------------------------------------
    def _build_record(self, settings: Settings, model_dir: Path, data_path: Path, fingerprint: str, rows: int,
                      history: dict[str, Any], central: dict[str, Any] | None, *, texts: list[str]) -> dict[str, Any]:
        import flwr
        import torch
        import transformers

        from privacy.federated.strategy import name_order

        parsed = parse_partition(settings.partition)
        client_rows = history.get("client_rounds", [])
        failures = history.get("failures", [])
        info = history.get("clients", {})
        names = sorted({str(r["client"]) for r in client_rows if r.get("client") is not None} | set(info)
                       | {str(f["client"]) for f in failures if f.get("client") is not None}
                       | {str(n) for n in (history.get("nodes") or {}).values()},
                       key=name_order)
        rounds = []
        for r in history.get("rounds", []):
            entry = {k: r.get(k) for k in ("round", "aggregated", "accuracy", "loss", "train_loss",
                                           "client_accuracy_min", "client_accuracy_max", "duration_s")}
            ran = bool(r.get("asked_train"))
            trained = list(r.get("train_clients") or [])
            evaluated = list(r.get("evaluate_clients") or [])
            # Every client of the federation that did not train in a round that ran, asked or not
            # (a node the SuperLink has dropped is no longer asked); with sampling, only those asked.
            absent = ([n for n in names if n not in trained] if settings.fraction_train >= 1.0
                      else list(r.get("train_missing") or []))
            entry.update(clients_asked=r.get("asked_train"), clients_completed=r.get("completed_train"),
                         clients_connected=r.get("connected"), ran=ran,
                         trained_clients=trained, evaluated_clients=evaluated,
                         missing_clients=absent if ran else list(names), eval_rows=r.get("eval_rows"),
                         failures=sum(1 for f in failures if f["round"] == r["round"]))
            if r.get("fairness"):
                entry["fairness"] = r["fairness"]
            if r.get("note"):
                entry["note"] = r["note"]
            rounds.append(entry)
        clients = []
        by_round: dict[str, list[float | None]] = {}
        for name in names:
            evals = [r for r in client_rows if r.get("client") == name and r["phase"] == "evaluate"
                     and r.get("num_examples", 0) > 0]
            trains = [r for r in client_rows if r.get("client") == name and r["phase"] == "train"]
            details = info.get(name, {})
            row: dict[str, Any] = {
                "client": name, "rows": details.get("rows"), "train_rows": details.get("train_rows"),
                "eval_rows": details.get("eval_rows"), "label_counts": details.get("label_counts"),
                "group_counts": details.get("group_counts") or None,
                "rounds_trained": len(trains),
                "rounds_evaluated": len({e["round"] for e in evals}),
                "rounds_missed": [r["round"] for r in rounds if name in r["missing_clients"]],
                "failures": sum(1 for f in failures if f.get("client") == name),
            }
            trained_rounds = sorted({t["round"] for t in trains})
            later = [r["round"] for r in rounds if trained_rounds and r["round"] > trained_rounds[-1]]
            if later and all(n in row["rounds_missed"] for n in later):
                row["lost_after_round"] = trained_rounds[-1]
            if not trains:
                row["note"] = "never returned an update"
            if evals:
                last = evals[-1]
                row.update(evaluated_round=last["round"], accuracy=last.get("accuracy"), loss=last.get("loss"))
                if last.get("group_counts"):
                    fairness = group_metrics(last["group_counts"])
                    row.update(groups=fairness["groups"], accuracy_gap=fairness["accuracy_gap"],
                               selection_rate_gap=fairness["selection_rate_gap"],
                               true_positive_rate_gap=fairness["true_positive_rate_gap"])
            by_round[name] = [next((e.get("accuracy") for e in evals if e["round"] == r["round"]), None)
                              for r in rounds]
            clients.append(row)
        scored = [c for c in clients if isinstance(c.get("accuracy"), float)]
        best_worst = None
        if scored:
            best = max(scored, key=lambda c: c["accuracy"])
            worst = min(scored, key=lambda c: c["accuracy"])
            best_worst = {"metric": "accuracy", "best_client": best["client"], "best": best["accuracy"],
                          "worst_client": worst["client"], "worst": worst["accuracy"],
                          "gap": best["accuracy"] - worst["accuracy"]}
        checkpoint = int(history.get("checkpoint_round") or 0)
        evaluated_rounds = [r for r in rounds if isinstance(r.get("accuracy"), float)]
        last_round = evaluated_rounds[-1] if evaluated_rounds and evaluated_rounds[-1]["round"] >= checkpoint else {}
        final = self._final(last_round, names, checkpoint)
        complete = (not self.run_error_ and len(rounds) == settings.num_rounds
                    and all(r.get("aggregated") and not r["missing_clients"] for r in rounds))
        lost = {c["client"]: c["lost_after_round"] for c in clients if "lost_after_round" in c}
        record: dict[str, Any] = {
            "framework": f"Flower {flwr.__version__} (Message API: ServerApp / ClientApp)",
            "engine": settings.engine,
            "superlink": self.superlink if self.superlink else (
                "127.0.0.1, started for this run" if settings.engine == "deployment" else None),
            "strategy": settings.strategy,
            "strategy_description": _strategy_text(settings.strategy) + (
                " Under central DP every client's clipped update weighs the same: the mean is unweighted."
                if settings.central_dp else ""),
            "proximal_mu": settings.proximal_mu if settings.strategy == "fedprox" else None,
            "num_rounds": settings.num_rounds,
            "rounds_aggregated": history.get("aggregated_rounds"),
            "num_clients": settings.num_clients,
            "fraction_train": settings.fraction_train,
            "min_completed_fraction": settings.min_completed_fraction,
            "local_epochs": settings.local_epochs, "batch_size": settings.batch_size,
            "learning_rate": settings.learning_rate, "optimizer": "AdamW (no weight decay), new every round",
            "max_length": settings.max_length, "eval_fraction": settings.eval_fraction, "seed": settings.seed,
            "partitioning": {"spec": parsed.spec, "method": parsed.method, "alpha": parsed.alpha,
                             "column": parsed.column, "description": parsed.describe()},
            "base_model": {"path": str(model_dir), "fingerprint": model_fingerprint(model_dir)},
            "dataset": {"path": str(data_path), "fingerprint": fingerprint, "rows": rows,
                        "text_column": settings.text_column, "label_column": settings.label_column,
                        "sensitive_features": list(settings.sensitive_features)},
            "labels": list(settings.labels), "pos_label": settings.pos_label,
            "min_nodes": settings.min_nodes, "round_timeout_s": settings.round_timeout,
            "complete": complete,
            "model_round": checkpoint,
            "stopped_early": self.run_error_,
            "lost_clients": lost,
            "lost_processes": list((self.run_info_ or {}).get("lost_processes") or []),
            "logs": (self.run_info_ or {}).get("logs"),
            "final": final,
            "rounds": rounds,
            "clients": clients,
            "client_accuracy_by_round": by_round,
            "best_worst_gap": best_worst,
            "failures": failures,
            "failures_per_round": {str(r["round"]): r["failures"] for r in rounds},
            "centralized": central,
            "duration_s": self.duration_s_,
            "warm_up_s": history.get("warm_up_s"),  # clients loading the model before round 1 (start-up)
            "warm_up": history.get("warm_up"),  # how many were ready, failed (error types) or silent
            "versions": {"flwr": flwr.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                         "python": sys.version.split()[0]},
        }
        if last_round.get("fairness"):
            record["fairness"] = last_round["fairness"]
        if settings.target_epsilon is not None:
            record["client_dp"] = _dp_summary(settings, client_rows, [r["round"] for r in rounds])
        if settings.central_dp:
            record["central_dp"] = _central_dp_summary(settings, rounds, history)
        if settings.local_dp_epsilon > 0:
            record["local_dp"] = _local_dp_summary(settings, client_rows)
        record["warnings"] = _warnings(record)
        # The keyed digest goes into the record's chain (audit.records); under client-side DP the plain
        # file hash would let a reader test candidate datasets, so only the keyed one is kept.
        self.data_digest_ = data_digest(texts)
        keyed = self.data_digest_["fingerprint"] if self.data_digest_ else None
        record["dataset"]["keyed_fingerprint"] = keyed
        if settings.target_epsilon is not None or settings.central_dp or settings.local_dp_epsilon > 0:
            record["dataset"]["fingerprint"] = keyed
        return record

    def _final(self, last_round: dict[str, Any], names: list[str], checkpoint: int) -> dict[str, Any]:
        """The final model's accuracy, with exactly which clients' held-out rows it is over."""
        evaluated = list(last_round.get("evaluated_clients") or [])
        missing = [n for n in names if n not in evaluated]
        out: dict[str, Any] = {
            "accuracy": last_round.get("accuracy"), "loss": last_round.get("loss"),
            "evaluated_round": last_round.get("round"), "model_round": checkpoint,
            "clients": evaluated, "clients_missing": missing, "eval_rows": last_round.get("eval_rows"),
            "over_all_clients": bool(evaluated) and not missing,
        }
        if not last_round:
            out["evaluation"] = (f"No client scored the final model (aggregated in round {checkpoint}) after its "
                                 "last aggregation: its federated accuracy is unknown")
        else:
            scope = ("every client" if not missing else
                     f"{len(evaluated)} of {len(names)} clients ({', '.join(evaluated)}; not {', '.join(missing)})")
            out["evaluation"] = (f"In round {last_round.get('round')}, {scope} scored the global model from round "
                                 f"{checkpoint} on their held-out rows ({last_round.get('eval_rows')} rows); the "
                                 "accuracy is their example-weighted mean (the accuracy on the union of those rows)")
        if getattr(self, "accuracy_", None) is not None and self.superlink is None:
            out["accuracy_all_clients"] = self.accuracy_
            out["accuracy_all_clients_note"] = ("scored by rai-audit on the union of every client's held-out rows "
                                                "(the data is local in this run)")
        return out

    # -- save --------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "record_"):
            raise NotFittedError("This FederatedFineTuner is not fitted yet. Call fit(model, dataset) first.")

    def save(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the global model (safetensors), its tokenizer and ``rai_audit_record.json``.

        The record keeps every section of the input model's record and adds ``"federated"``; an
        earlier ``"federated"`` section is kept inside the new one as ``earlier``.

        Returns
        -------
        pathlib.Path
            The output directory.
        """
        self._check_fitted()
        out = Path(out_dir).expanduser()
        source = Path(self.record_["base_model"]["path"])
        if out.exists() and out.resolve() == source.resolve():
            raise OutputError(f"Output directory {str(out)!r} is the input model's directory; trainers never change "
                              "the model they were given. Choose another --out.")
        if out.exists() and not out.is_dir():
            raise OutputError(f"Output path {str(out)!r} is a file. Choose a directory with --out.")
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise OutputError(f"Output directory {str(out)!r} is not empty. Choose a new directory or pass "
                              "overwrite=True (--overwrite).")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Output directory {str(out)!r} cannot be created ({exc.strerror or exc}). "
                              "Choose another --out or fix its permissions.") from None
        records = dict(self.input_records_)
        section = dict(self.record_)
        if isinstance(records.get("federated"), dict):
            section["earlier"] = records["federated"]
        records["federated"] = section
        records = append_step(records, chain_entry(step="federated", technique=str(section.get("strategy")),
                                                   digest=self.data_digest_, uses_user_data=True,
                                                   private=any(isinstance(section.get(k), dict) for k in
                                                               ("client_dp", "central_dp", "local_dp"))))
        self.model_.save_pretrained(out, safe_serialization=True)
        self.tokenizer_.save_pretrained(out)
        write_json_atomic(out / RECORD_FILENAME, json_safe(records))
        return out


def _checkpointed(out: Path) -> bool:
    """Whether the ServerApp left a checkpoint with at least one aggregated round."""
    try:
        history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(history.get("checkpoint_round")) and (out / "global.safetensors").is_file()


def _logs_hint(info: dict[str, Any] | None) -> str:
    logs = (info or {}).get("logs")
    return f" Logs: {logs}." if logs else ""


def _stderr_progress(line: str) -> None:
    from privacy.federated.server_app import PROGRESS_PREFIX

    sys.stderr.write(PROGRESS_PREFIX + line + "\n")
    sys.stderr.flush()


def _strategy_text(name: str) -> str:
    from privacy.federated.strategy import STRATEGY_DESCRIPTIONS

    return STRATEGY_DESCRIPTIONS[name]


def _dp_summary(settings: Settings, client_rows: list[dict[str, Any]], round_numbers: Sequence[int] = ()) -> dict[str, Any]:
    """Each client's epsilon after every round it trained and over the whole run: one accountant per client.

    A row belongs to exactly one client, so the guarantee for any row is its own client's epsilon;
    epsilons are never added across clients (that would describe no row). ``by_round`` gives the
    client's cumulative epsilon after each round, from the same accountant over its steps so far.
    """
    from privacy.dp import compute_epsilon

    per_client: dict[str, dict[str, Any]] = {}
    for row in sorted((r for r in client_rows if r["phase"] == "train" and r.get("dp_steps") is not None),
                      key=lambda r: int(r.get("round", 0))):
        entry = per_client.setdefault(str(row["client"]), {"steps": 0, "rounds": 0, "rounds_trained": [],
                                                           "by_round": []})
        entry["steps"] += int(row["dp_steps"])
        entry["rounds"] += 1
        entry["rounds_trained"].append(int(row.get("round", 0)))
        entry.update(noise_multiplier=row["dp_noise_multiplier"], sample_rate=row["dp_sample_rate"],
                     delta=row["dp_delta"])
        entry["by_round"].append({"round": int(row.get("round", 0)), "steps": entry["steps"]})
    for entry in per_client.values():
        for step in entry["by_round"]:
            step["epsilon"] = compute_epsilon(noise_multiplier=entry["noise_multiplier"],
                                              sample_rate=entry["sample_rate"], steps=step["steps"],
                                              target_delta=entry["delta"], accountant="prv")
        entry["epsilon"] = entry["by_round"][-1]["epsilon"] if entry["by_round"] else 0.0
    epsilons = [e["epsilon"] for e in per_client.values()]
    deltas = [e["delta"] for e in per_client.values()]
    worst = max(per_client, key=lambda c: per_client[c]["epsilon"]) if per_client else None
    notes = ["Each row belongs to one client, so the guarantee for any row is its own client's epsilon; epsilons "
             "are never added across clients.",
             "The held-out rows each client scores the global model on are not trained on, but their accuracy "
             "is reported without DP."]
    if settings.record_private_stats:
        notes.append("record_private_stats was set: the clients' training losses (computed on the private rows "
                     "without DP) were sent to the server and are in this record, outside the guarantee.")
    else:
        notes.append("The clients did not send their training loss (a statistic of the private rows without DP); "
                     "pass record_private_stats (--record-private-stats) to record it outside the guarantee.")
    return {
        "mechanism": "DP-SGD at every client (Abadi et al. 2016; Opacus through privacy.dp.DPFineTuner): per-example "
                     "clipping and Gaussian noise in every local step",
        "guarantee": "example-level (epsilon, delta)-DP for each training row of each client, against anyone holding "
                     "every global model the server sent or received (and this record)",
        "unit_of_privacy": "one training row of one client",
        "target_epsilon": settings.target_epsilon, "max_grad_norm": settings.max_grad_norm,
        "accountant": "PRV (Gopi et al. 2021) over all of a client's steps in every round",
        "epsilon_max": max(epsilons) if epsilons else None,
        "epsilon_max_client": worst,
        "delta": max(deltas) if deltas else settings.target_delta,
        "rounds": list(round_numbers),
        "clients": per_client,
        "private_stats_recorded": bool(settings.record_private_stats),
        "notes": notes,
    }


def _central_dp_summary(settings: Settings, rounds: list[dict[str, Any]], history: dict[str, Any]) -> dict[str, Any]:
    """The client-level guarantee of Flower's central-DP wrapper over the rounds that were aggregated.

    Each aggregated round releases one Gaussian mechanism on the equal-weight mean of the clipped
    updates (sensitivity ``C / k`` under add-or-remove-one client, noise ``z * C / k``), so the
    rounds compose as ``T`` full-batch Gaussian mechanisms of noise multiplier ``z``: Opacus' RDP
    accountant with sample rate 1 (no amplification by sampling is claimed).
    """
    from privacy.dp import compute_epsilon, default_delta
    from privacy.federated.strategy import CENTRAL_DP

    released = [r["round"] for r in rounds if r.get("aggregated")]
    delta = settings.target_delta if settings.target_delta is not None else default_delta(settings.num_clients)
    by_round, epsilon = [], 0.0
    for i, number in enumerate(released, start=1):
        epsilon = compute_epsilon(noise_multiplier=settings.central_noise_multiplier, sample_rate=1.0, steps=i,
                                  target_delta=delta, accountant="rdp")
        by_round.append({"round": number, "epsilon": epsilon})
    stds = {str(r["round"]): r.get("central_dp_noise_std") for r in history.get("rounds", []) if r.get("aggregated")}
    return {
        "mechanism": CENTRAL_DP[settings.central_dp],
        "side": settings.central_dp,
        "guarantee": "client-level (epsilon, delta)-DP: for everything one client contributes (all its rows), "
                     "against anyone holding the released global models and this record; the server sees each "
                     "client's update before noise, so it must be trusted",
        "unit_of_privacy": "one client (all of its rows)",
        "neighbouring": "add or remove one client, equal-weight mean over the clients of each round",
        "noise_multiplier": settings.central_noise_multiplier, "clipping_norm": settings.central_clipping_norm,
        "noise_std_by_round": stds,
        "accountant": "RDP (Mironov 2017) of the Gaussian mechanism composed over the aggregated rounds, no "
                      "amplification by client sampling",
        "rounds_released": released, "epsilon_by_round": by_round,
        "epsilon": epsilon if released else 0.0, "delta": delta,
        "notes": ["A round that missed any client asked was discarded: the noise is calibrated to the clients asked.",
                  "The clients' held-out accuracy and loss are reported to the server without DP.",
                  "The clients' training loss is " + ("recorded (record_private_stats), outside the guarantee."
                                                      if settings.record_private_stats else "not sent.")],
    }


def _local_dp_summary(settings: Settings, client_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each client's local-DP guarantee: (epsilon, delta) per round it trained, composed over its rounds."""
    per_client: dict[str, dict[str, Any]] = {}
    for row in client_rows:
        if row["phase"] != "train" or row.get("client") is None:
            continue
        entry = per_client.setdefault(str(row["client"]), {"rounds_trained": []})
        entry["rounds_trained"].append(int(row["round"]))
    for entry in per_client.values():
        t = len(entry["rounds_trained"])
        entry.update(epsilon_per_round=settings.local_dp_epsilon, delta_per_round=settings.local_dp_delta,
                     epsilon=t * settings.local_dp_epsilon, delta=t * settings.local_dp_delta)
    worst = max(per_client, key=lambda c: per_client[c]["epsilon"]) if per_client else None
    return {
        "mechanism": "local DP with Flower's LocalDpMod at every client: the client clips its model update to the "
                     "clipping norm and adds Gaussian noise (classic Gaussian mechanism, sensitivity 2 x the clipping "
                     "norm) before sending it",
        "guarantee": "(epsilon, delta)-DP of each client's update in each round, against everyone including the "
                     "server; over the rounds a client trained, basic composition (epsilons and deltas add up)",
        "unit_of_privacy": "one client's update in one round (so everything the client contributes, over its rounds)",
        "epsilon_per_round": settings.local_dp_epsilon, "delta_per_round": settings.local_dp_delta,
        "clipping_norm": settings.local_dp_clip,
        "epsilon_max": per_client[worst]["epsilon"] if worst else None, "epsilon_max_client": worst,
        "delta": per_client[worst]["delta"] if worst else None,
        "clients": per_client,
        "notes": ["Epsilons are per client, never added across clients.",
                  "The clients' held-out accuracy and loss are reported to the server without DP."],
    }


def _warnings(record: dict[str, Any]) -> list[str]:
    """Sentences for everything that makes this run less than every client in every round."""
    out: list[str] = []
    if record.get("stopped_early"):
        out.append(f"The run stopped before its last round: {record['stopped_early']}")
    for r in record.get("rounds") or []:
        if not r.get("ran"):
            out.append(f"Round {r['round']} did not run: {r.get('note') or 'too few clients connected'}")
        elif not r.get("aggregated"):
            out.append(f"Round {r['round']} was not aggregated: {r.get('note') or 'too few clients completed'}")
        elif r.get("missing_clients"):
            out.append(f"Round {r['round']} was aggregated without client(s) {', '.join(r['missing_clients'])}")
    for name, after in (record.get("lost_clients") or {}).items():
        out.append(f"Client {name} was lost after round {after} and missed every later round")
    final = record.get("final") or {}
    if final.get("clients_missing") and final.get("accuracy") is not None:
        out.append(f"The final accuracy is over {len(final.get('clients') or [])} client(s) only "
                   f"({', '.join(final.get('clients') or [])}): {', '.join(final['clients_missing'])} did not report")
    if final.get("accuracy") is None:
        out.append("No client scored the final model after its last aggregation")
    if record.get("num_rounds") and record.get("model_round") != record.get("num_rounds"):
        out.append(f"The saved model is the one aggregated in round {record.get('model_round')} of "
                   f"{record.get('num_rounds')}")
    return out
