"""What every participant of the federation runs: settings, data, model, local training, evaluation.

The ``ClientApp`` and ``ServerApp`` are thin: they move weights and metrics in Flower messages
and call these functions. The same functions train the centralized baseline, so a federated and a
central model differ only in how the data was seen.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.errors import ConfigError, DataError, ModelLoadError

__all__ = [
    "ClientData",
    "EvalStats",
    "Settings",
    "build_client_data",
    "check_model_dir",
    "client_seed",
    "evaluate",
    "float_state",
    "group_metrics",
    "json_safe",
    "load_client_data",
    "load_model",
    "load_tokenizer",
    "merge_groups",
    "proximal_term",
    "select_client_rows",
    "set_state",
    "sort_labels",
    "train_local",
]


@dataclass(frozen=True)
class Settings:
    """Everything a participant needs to know about the run.

    In simulation the apps are built with these settings bound; in a deployment they travel as the
    Flower run config (flat scalars with hyphenated keys, see :meth:`to_run_config`), so that a
    ``ServerApp`` or ``ClientApp`` started by a SuperLink or SuperNode rebuilds them.
    A SuperNode may override ``model`` and ``data`` for its site with the node-config keys
    ``model-path`` and ``data-path``.
    """

    model: str
    data: str
    text_column: str
    label_column: str
    labels: tuple[str, ...]
    num_clients: int
    num_rounds: int
    sensitive_features: tuple[str, ...] = ()
    pos_label: str | None = None
    partition: str = "iid"
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    fraction_train: float = 1.0
    min_completed_fraction: float = 0.5
    min_nodes: int = 1
    round_timeout: float = 600.0
    progress_interval: float = 30.0
    local_epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 5e-5
    max_length: int = 128
    eval_fraction: float = 0.2
    target_epsilon: float | None = None
    target_delta: float | None = None
    max_grad_norm: float = 1.0
    record_private_stats: bool = False
    central_dp: str = ""
    central_noise_multiplier: float = 0.0
    central_clipping_norm: float = 0.0
    local_dp_epsilon: float = 0.0
    local_dp_delta: float = 0.0
    local_dp_clip: float = 0.0
    seed: int = 0
    device: str = "cpu"
    output_dir: str = ""
    engine: str = "simulation"
    progress: bool = True

    _TUPLES = ("labels", "sensitive_features")
    _OPTIONAL = ("pos_label", "target_epsilon", "target_delta")

    def to_run_config(self) -> dict[str, str | int | float | bool]:
        """Flat scalars for Flower's run config: tuples as JSON, ``None`` as an empty string."""
        out: dict[str, str | int | float | bool] = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            value = getattr(self, f.name)
            key = f.name.replace("_", "-")
            if f.name in self._TUPLES:
                out[key] = json.dumps(list(value))
            elif value is None:
                out[key] = ""
            else:
                out[key] = value
        return out

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> Settings:
        """Rebuild settings from :meth:`to_run_config` output (types restored from the fields)."""
        kwargs: dict[str, Any] = {}
        missing = []
        for f in dataclasses.fields(cls):
            if f.name.startswith("_"):
                continue
            key = f.name.replace("_", "-")
            if key not in config:
                if f.default is dataclasses.MISSING:
                    missing.append(key)
                continue
            value = config[key]
            if f.name in cls._TUPLES:
                kwargs[f.name] = tuple(json.loads(str(value)))
            elif f.name in cls._OPTIONAL:
                kwargs[f.name] = None if value == "" else (str(value) if f.name == "pos_label" else float(value))
            elif f.type in ("int",):
                kwargs[f.name] = int(value)
            elif f.type in ("float",):
                kwargs[f.name] = float(value)
            elif f.type in ("bool",):
                kwargs[f.name] = bool(value)
            else:
                kwargs[f.name] = str(value)
        if missing:
            raise ConfigError(f"The Flower run config lacks {missing}. Start the run with 'rai-audit federate' "
                              "(or FederatedFineTuner), which writes every key.")
        return cls(**kwargs)


def sort_labels(values: Sequence[Any]) -> tuple[str, ...]:
    """The distinct labels as strings, in numeric order when they are all numbers.

    Examples
    --------
    >>> from privacy.federated.task import sort_labels
    >>> sort_labels([10, 2, 2, 1])
    ('1', '2', '10')
    >>> sort_labels(["pos", "neg"])
    ('neg', 'pos')
    """
    names = list(dict.fromkeys(str(v) for v in values))
    try:
        return tuple(sorted(names, key=float))
    except ValueError:
        return tuple(sorted(names))


def client_seed(seed: int, server_round: int, client: int | str) -> int:
    """The seed of one client's local training in one round (shuffling and dropout)."""
    offset = int(client) if str(client).lstrip("-").isdigit() else sum(str(client).encode("utf-8"))
    return (int(seed) * 1_000_003 + int(server_round) * 10_007 + offset) % (2**31 - 1)


# -- model ---------------------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device {name!r}. Use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None


def check_model_dir(path: str | os.PathLike[str]) -> Path:
    """A model directory that can be fine-tuned as a sequence classifier, or a one-line error."""
    import transformers
    from transformers.models.auto import modeling_auto

    model_dir = Path(path).expanduser()
    if not model_dir.is_dir() or not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"Model path {os.fspath(path)!r} is not a Hugging Face model directory (no config.json). "
                             "Give a directory written by save_pretrained.")
    if not any(model_dir.glob("*.safetensors")):
        raise ModelLoadError(f"Model directory {os.fspath(path)!r} has no *.safetensors weights. Re-save it with "
                             "model.save_pretrained(dir) (safetensors is the default).")
    try:
        config = transformers.AutoConfig.from_pretrained(model_dir)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError here
        raise ModelLoadError(f"Model {os.fspath(path)!r}: config.json cannot be read "
                             f"({str(exc).splitlines()[0][:200]}). Re-save the model with save_pretrained.") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError(f"Model {os.fspath(path)!r} is a {model_type!r} model, which has no sequence-classification "
                          "head in transformers, so it cannot be fine-tuned for classification. Use a text encoder "
                          "(BERT-like) or decoder (GPT-2-like) checkpoint.")
    return model_dir.resolve()


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer saved beside the model, with a padding token."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError here
        raise ModelLoadError(f"Tokenizer of {os.fspath(path)!r} cannot be loaded ({str(exc).splitlines()[0][:200]}). "
                             "Save the tokenizer beside the model with tokenizer.save_pretrained(dir).") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"Tokenizer of {os.fspath(path)!r} has neither a padding nor an end-of-text token, "
                                 "so batches cannot be padded. Add a pad token and save it.")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(path: str | os.PathLike[str], labels: Sequence[str], *, seed: int = 0) -> Any:
    """The sequence classifier for ``labels``, in float32 and evaluation mode.

    A model that already has a head for exactly these labels keeps it; otherwise a new head is
    initialised from ``seed``, so the server and a centralized baseline start from the same weights.
    """
    import transformers

    model_dir = check_model_dir(path)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    names = [str(v) for v in labels]
    kwargs: dict[str, Any] = {"num_labels": len(names), "id2label": dict(enumerate(names)),
                              "label2id": {n: i for i, n in enumerate(names)}}
    has_head = any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))
    if has_head:
        old = [str(config.id2label.get(i, i)) for i in range(int(config.num_labels))]
        kwargs["ignore_mismatched_sizes"] = sorted(old) != sorted(names)
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                model_dir, use_safetensors=True, **kwargs)
    except (ValueError, OSError, RuntimeError) as exc:
        raise ModelLoadError(f"Model {os.fspath(path)!r} cannot be loaded as a sequence classifier "
                             f"({str(exc).splitlines()[0][:200]}).") from None
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    if getattr(model.config, "pad_token_id", None) is None:
        pad = load_tokenizer(model_dir).pad_token_id
        model.config.pad_token_id = pad
    return model.float().eval()


def float_state(model: Any) -> OrderedDict[str, torch.Tensor]:
    """The floating-point entries of the state dict: what clients train and the server averages.

    Integer buffers (position and token-type ids) are the same everywhere and are not sent.
    """
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items() if v.is_floating_point())


def set_state(model: Any, state: Mapping[str, Any]) -> None:
    """Load ``state`` (torch tensors or numpy arrays) into the float entries of ``model``."""
    expected = set(float_state(model))
    got = set(state)
    if got != expected:
        missing, extra = sorted(expected - got)[:3], sorted(got - expected)[:3]
        raise ModelLoadError(f"Received weights do not match the model (missing {missing}, unexpected {extra}). "
                             "Every participant must start from the same base model directory.")
    tensors = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in state.items()}
    model.load_state_dict(tensors, strict=False)


# -- data ----------------------------------------------------------------------------------------


@dataclass
class ClientData:
    """One client's rows: training part and held-out evaluation part (labels as class indices)."""

    name: str
    partition_id: int | None
    rows: int
    train_texts: list[str]
    train_y: list[int]
    eval_texts: list[str]
    eval_y: list[int]
    eval_groups: list[str] | None = None
    label_counts: dict[str, int] = field(default_factory=dict)
    group_counts: dict[str, int] = field(default_factory=dict)


def _group_key(frame: Any, columns: Sequence[str]) -> list[str]:
    if len(columns) == 1:
        return [str(v) for v in frame[columns[0]].tolist()]
    return [" & ".join(str(v) for v in row) for row in frame[list(columns)].itertuples(index=False)]


def select_client_rows(frame: Any, settings: Settings, partition_id: int, num_partitions: int,
                       source: str) -> np.ndarray:
    """The rows of ``frame`` that belong to client ``partition_id`` under ``settings.partition``."""
    from privacy.federated.partition import partition_rows

    if not 0 <= partition_id < num_partitions:
        raise ConfigError(f"Node config partition-id={partition_id} is outside 0..{num_partitions - 1}. "
                          "Give each SuperNode a distinct partition-id below num-partitions.")
    parts = partition_rows(frame, settings.partition, num_partitions, label_column=settings.label_column,
                           seed=settings.seed, source=source)
    return parts[partition_id]


def build_client_data(frame: Any, rows: np.ndarray, settings: Settings, *, name: str,
                      partition_id: int | None, source: str) -> ClientData:
    """Split one client's rows into training and evaluation parts and encode the labels."""
    from privacy.federated.partition import split_rows

    columns = [str(c) for c in frame.columns]
    for role, column in [("text_column", settings.text_column), ("label_column", settings.label_column)] + [
            ("sensitive_features", c) for c in settings.sensitive_features]:
        if column not in columns:
            raise DataError(f"Column {column!r} ({role}) is not in {source}. Columns: {columns}. "
                            f"Set {role} to one of them.")
    part = frame.iloc[np.asarray(rows, dtype=int)]
    labels = [str(v) for v in part[settings.label_column].tolist()]
    index = {name_: i for i, name_ in enumerate(settings.labels)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"Client {name}: labels {unknown[:5]} in {source} are not among the federation's labels "
                        f"{list(settings.labels)}. Every site must use the same label set.")
    texts = [str(t) for t in part[settings.text_column].tolist()]
    seed = client_seed(settings.seed, 0, partition_id if partition_id is not None else name)
    train, held = split_rows(labels, settings.eval_fraction, seed=seed)
    groups = _group_key(part, settings.sensitive_features) if settings.sensitive_features else None
    label_counts = {lab: labels.count(lab) for lab in settings.labels if lab in labels}
    group_counts: dict[str, int] = {}
    for g in groups or []:
        group_counts[g] = group_counts.get(g, 0) + 1
    return ClientData(
        name=name, partition_id=partition_id, rows=len(part),
        train_texts=[texts[i] for i in train], train_y=[index[labels[i]] for i in train],
        eval_texts=[texts[i] for i in held], eval_y=[index[labels[i]] for i in held],
        eval_groups=[groups[i] for i in held] if groups is not None else None,
        label_counts=label_counts, group_counts=dict(sorted(group_counts.items())),
    )


_DATA_CACHE: dict[tuple[Any, ...], ClientData] = {}


def load_client_data(settings: Settings, node_config: Mapping[str, Any]) -> ClientData:
    """This client's data, from its node config.

    A node config with ``data-path`` reads that file whole: a site with its own data. Otherwise the
    node takes partition ``partition-id`` of ``num-partitions`` of the run's data file, as the
    simulation's virtual SuperNodes and a loopback deployment do. The result is cached per process.
    """
    from audit.data import read_table

    site_path = str(node_config.get("data-path", "") or "")
    path = site_path or settings.data
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = None
    pid_raw = node_config.get("partition-id")
    partition_id = int(pid_raw) if pid_raw is not None and str(pid_raw) != "" else None
    num_partitions = int(node_config.get("num-partitions", settings.num_clients))
    name = str(node_config.get("site", "") or (partition_id if partition_id is not None else Path(path).stem))
    key = (path, stamp, name, partition_id, num_partitions, settings.partition, settings.seed,
           settings.eval_fraction, settings.text_column, settings.label_column, settings.sensitive_features,
           settings.labels)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    frame = read_table(path)
    if site_path:
        rows = np.arange(len(frame))
    else:
        if partition_id is None:
            raise ConfigError("This SuperNode has neither 'data-path' nor 'partition-id' in its node config. Start "
                              "it with --node-config 'data-path=\"/site/data.csv\"' (its own data) or "
                              "'partition-id=0 num-partitions=N' (a share of the run's data).")
        rows = select_client_rows(frame, settings, partition_id, num_partitions, source=repr(path))
    data = build_client_data(frame, rows, settings, name=name, partition_id=partition_id, source=repr(path))
    _DATA_CACHE.clear()
    _DATA_CACHE[key] = data
    return data


# -- training and evaluation -------------------------------------------------------------------------


def _batches(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def proximal_term(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i ||w_i - w_global_i||^2``: FedProx's proximal term without the ``mu / 2`` factor.

    Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (FedProx), Eq. 2: the local
    objective is ``F_k(w) + (mu / 2) * ||w - w^t||^2``, the squared L2 distance to the global model
    over all trained parameters.
    """
    total = torch.zeros((), dtype=torch.float32, device=params[0].device if params else "cpu")
    for p, a in zip(params, anchors, strict=True):
        total = total + (p - a).pow(2).sum()
    return total


def train_local(model: Any, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *, epochs: int,
                batch_size: int, learning_rate: float, max_length: int, proximal_mu: float = 0.0,
                seed: int = 0, device: str = "cpu") -> dict[str, float]:
    """Fine-tune ``model`` in place on one client's rows (AdamW, no weight decay).

    With ``proximal_mu > 0`` the loss is cross-entropy plus ``(mu / 2) * ||w - w_global||^2``
    (FedProx, Li et al. 2020), ``w_global`` being the weights the model had on entry.

    Returns
    -------
    dict
        ``loss`` (mean cross-entropy over the steps), ``proximal`` (mean proximal term, without
        ``mu / 2``), ``steps``.
    """
    dev = _device(device)
    model.to(dev)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params] if proximal_mu > 0 else []
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    ids, mask = _batches(tokenizer, texts, max_length)
    y = torch.as_tensor(list(labels), dtype=torch.long)
    n = len(y)
    generator = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    proximal: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                width = max(1, int(mask[idx].sum(1).max()))
                out = model(input_ids=ids[idx, :width].to(dev), attention_mask=mask[idx, :width].to(dev))
                loss = torch.nn.functional.cross_entropy(out.logits, y[idx].to(dev))
                total = loss
                if proximal_mu > 0:
                    prox = proximal_term(params, anchors)
                    total = loss + (proximal_mu / 2.0) * prox
                    proximal.append(float(prox.detach()))
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
    model.eval()
    model.to("cpu")
    return {"loss": float(np.mean(losses)) if losses else math.nan,
            "proximal": float(np.mean(proximal)) if proximal else 0.0, "steps": float(len(losses))}


@dataclass
class EvalStats:
    """Counts from evaluating a model on labelled rows, by group when groups are given.

    ``groups`` maps a group to ``n``, ``correct``, ``predicted_positive``, ``actual_positive`` and
    ``true_positive`` (the last three only for a binary task). Counts add up across clients, so the
    server can merge them exactly.
    """

    n: int
    correct: int
    loss_sum: float
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    predictions: list[int] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else math.nan

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n if self.n else math.nan


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, texts: Sequence[str], labels: Sequence[int], *,
             groups: Sequence[str] | None = None, pos_index: int | None = None, batch_size: int = 64,
             max_length: int = 128, device: str = "cpu") -> EvalStats:
    """Accuracy, summed cross-entropy and per-group counts of ``model`` on ``texts``."""
    dev = _device(device)
    model.to(dev)
    model.eval()
    n = len(labels)
    preds: list[int] = []
    loss_sum = 0.0
    if n:
        ids, mask = _batches(tokenizer, texts, max_length)
        y = torch.as_tensor(list(labels), dtype=torch.long)
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            width = max(1, int(mask[sl].sum(1).max()))
            logits = model(input_ids=ids[sl, :width].to(dev), attention_mask=mask[sl, :width].to(dev)).logits.float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, y[sl].to(dev), reduction="sum"))
            preds.extend(logits.argmax(-1).cpu().tolist())
    model.to("cpu")
    correct = sum(int(p == t) for p, t in zip(preds, labels))
    by_group: dict[str, dict[str, int]] = {}
    if groups is not None:
        for g, p, t in zip(groups, preds, labels):
            row = by_group.setdefault(str(g), {"n": 0, "correct": 0})
            row["n"] += 1
            row["correct"] += int(p == t)
            if pos_index is not None:
                row["predicted_positive"] = row.get("predicted_positive", 0) + int(p == pos_index)
                row["actual_positive"] = row.get("actual_positive", 0) + int(t == pos_index)
                row["true_positive"] = row.get("true_positive", 0) + int(p == pos_index and t == pos_index)
    return EvalStats(n=n, correct=correct, loss_sum=loss_sum, groups=dict(sorted(by_group.items())), predictions=preds)


def group_metrics(groups: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """Per-group accuracy (and, for a binary task, selection rate and true-positive rate) and the gaps.

    ``selection_rate_gap`` is fairlearn's demographic parity difference and
    ``true_positive_rate_gap`` its equal opportunity difference (Hardt et al. 2016): the largest
    minus the smallest value over the groups.
    """
    per_group: dict[str, dict[str, Any]] = {}
    for g, c in groups.items():
        n = int(c.get("n", 0))
        if n == 0:
            continue
        row: dict[str, Any] = {"n": n, "accuracy": c["correct"] / n}
        if "predicted_positive" in c:
            row["selection_rate"] = c["predicted_positive"] / n
            actual = int(c.get("actual_positive", 0))
            row["true_positive_rate"] = c["true_positive"] / actual if actual else None
        per_group[g] = row
    out: dict[str, Any] = {"groups": per_group}
    for metric in ("accuracy", "selection_rate", "true_positive_rate"):
        values = [r[metric] for r in per_group.values() if r.get(metric) is not None]
        out[f"{metric}_gap"] = (max(values) - min(values)) if len(values) >= 2 else None
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def merge_groups(parts: Sequence[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Add up per-group counts from several clients."""
    merged: dict[str, dict[str, int]] = {}
    for part in parts:
        for g, counts in part.items():
            row = merged.setdefault(g, {})
            for k, v in counts.items():
                row[k] = row.get(k, 0) + int(v)
    return dict(sorted(merged.items()))
