"""Differentially private fine-tuning (DP-SGD) of Hugging Face models with Opacus.

DP-SGD (Abadi et al. 2016) samples each training example independently with probability ``q``
(Poisson sampling), clips every example's gradient to L2 norm ``max_grad_norm``, adds Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` to the sum and takes an
optimizer step. An accountant turns ``(noise_multiplier, q, steps)`` into the ``(epsilon, delta)``
guarantee, per training example, for everything the training releases (every intermediate model).

:class:`DPFineTuner` fine-tunes sequence classifiers and causal language models this way and
returns a new model; the model it was given is never changed. :func:`compute_epsilon` is the
accounting on its own, for checking a published figure.

References
----------
Abadi et al. 2016, "Deep Learning with Differential Privacy", CCS.
Mironov 2017, "Renyi Differential Privacy", CSF.
Mironov, Talwar & Zhang 2019, "Renyi Differential Privacy of the Sampled Gaussian Mechanism".
Balle et al. 2020, "Hypothesis Testing Interpretations and Renyi Differential Privacy", AISTATS.
Gopi, Lee & Wutschitz 2021, "Numerical Composition of Differential Privacy", NeurIPS.
Li et al. 2022, "Large Language Models Can Be Strong Differentially Private Learners", ICLR
(ghost clipping).
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import importlib.util
import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from audit._io import write_json_atomic
from audit.data import AuditDataset, load_dataset
from audit.errors import ConfigError, DataError, ModelLoadError, NotFittedError, OutputError
from audit.records import append_step, chain_entry, data_digest
from audit.target import RECORD_FILENAME, AuditTarget, detect_kind, model_fingerprint, read_records

__all__ = [
    "ACCOUNTANTS",
    "CONVERSIONS",
    "GRAD_SAMPLE_MODES",
    "TASKS",
    "DPFineTuner",
    "PrivacyBudgetWarning",
    "compute_epsilon",
    "default_delta",
    "make_dp_compatible",
]

Accountant = Literal["prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = get_args(Accountant)
Conversion = Literal["balle2020", "classic"]
CONVERSIONS: tuple[str, ...] = get_args(Conversion)
GradSampleMode = Literal["ghost", "hooks"]
GRAD_SAMPLE_MODES: tuple[str, ...] = get_args(GradSampleMode)
Task = Literal["auto", "sequence-classification", "causal-lm"]
TASKS: tuple[str, ...] = get_args(Task)

UNIT_OF_PRIVACY = "one training example (one row of the training data)"
ACCOUNTANT_DESCRIPTIONS = {
    "prv": (
        "PRV accountant (Gopi, Lee & Wutschitz 2021): numerical composition of the privacy-loss "
        "random variables of the Poisson-subsampled Gaussian mechanism. There is no RDP step and "
        "no RDP-to-(epsilon, delta) conversion; the reported epsilon is the accountant's upper "
        "bound (estimate plus its error allowance of 0.01)."
    ),
    "rdp": (
        "RDP accountant (Mironov 2017) for the Poisson-subsampled Gaussian mechanism (Mironov, "
        "Talwar & Zhang 2019), converted to (epsilon, delta) with Balle et al. 2020, Theorem 21, "
        "Opacus' current conversion. The classic conversion epsilon = RDP - log(delta)/(alpha-1) "
        "used by Abadi et al. 2016 gives a larger epsilon for the same training."
    ),
}
CONVERSION_NAMES = {
    "prv": "none (PRV composes the privacy loss distribution directly)",
    "rdp": "Balle et al. 2020, Theorem 21 (Opacus' current RDP conversion)",
}
# Opacus' fixers that rebuild a layer with the same weights (load_state_dict of the original):
# the repaired model computes the same function. BatchNorm -> GroupNorm and dropping an
# InstanceNorm's running statistics change what the model computes, so they are refused.
_SOUND_FIXES = (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN, torch.nn.MultiheadAttention)
_PRV_EPS_ERROR = 0.01
NOISE_RNG = "os-entropy"
NOISE_RNG_DESCRIPTION = (
    "The Gaussian noise and the Poisson sampling come from two PyTorch generators, each seeded with 64 bits from "
    "os.urandom at the start of training; those seeds are never stored or recorded, so the released model cannot be "
    "replayed from the record and --seed. PyTorch's generators are not cryptographically secure (Opacus' secure mode "
    "needs torchcsprng)."
)
SEEDED_BY_SEED = "data split, canary positions, initialisation of new layers, dropout"
SECURE_MODE_UNAVAILABLE = (
    "secure_mode=True (--secure-mode) needs torchcsprng, which is not installed and has no release for this torch. "
    "Drop --secure-mode: the DP noise and Poisson sampling already come from operating-system entropy, never from "
    "--seed (only Opacus' hardening of the Gaussian sampler against floating-point attacks is missing)."
)
PRIVATE_STATS_LEFT_OUT = (
    "Left out: the training-loss curve, the non-private baseline's score, the count of empty Poisson batches and the "
    "training time (a timing side channel of the sampled batches) are statistics of the private rows that the "
    "accountant does not cover (train with --record-private-stats to keep them, labelled)."
)
PRIVATE_STATS_INCLUDED = (
    "Included on request (--record-private-stats): the training-loss curve, the non-private baseline's score, the "
    "count of empty Poisson batches and the training time are statistics of the private rows that the accountant "
    "does not cover."
)
DATA_FINGERPRINT_KIND = (
    "keyed: HMAC-SHA256 of the training rows under the secret key of audit.records.secret_key(), kept apart from the "
    "model; a plain hash would let a reader test candidate datasets"
)
NOT_COVERED = "not covered by the DP guarantee: a statistic of the private training rows, computed without DP"


class PrivacyBudgetWarning(UserWarning):
    """Training stopped before the requested epochs because the privacy budget was spent."""


# -- accounting ---------------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}. Use one of them.")


def _check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    kind = (int,) if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{name} must be {what} {'integer' if integer else 'number'}, got {value!r}. "
                          f"Pass {what} {'integer' if integer else 'number'}.")


def _check_delta(delta: Any) -> None:
    if not isinstance(delta, (int, float)) or isinstance(delta, bool) or not (0 < delta < 1):
        raise ConfigError(f"target_delta must be in (0, 1), got {delta!r}. Use a value well below 1/N, "
                          "the number of training examples, or leave it unset for the default.")


def compute_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    target_delta: float,
    accountant: Accountant = "prv",
    conversion: Conversion = "balle2020",
    eps_error: float = _PRV_EPS_ERROR,
) -> float:
    """Epsilon spent by ``steps`` steps of the Poisson-subsampled Gaussian mechanism (DP-SGD).

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation divided by the clipping norm (sigma).
    sample_rate : float
        Probability that an example is in a batch (q).
    steps : int
        Number of noisy optimizer steps.
    target_delta : float
        The delta of the (epsilon, delta) guarantee.
    accountant : {"prv", "rdp"}, default="prv"
        Opacus' PRV accountant (Gopi et al. 2021) or RDP accountant (Mironov 2017).
    conversion : {"balle2020", "classic"}, default="balle2020"
        RDP only: the RDP-to-(epsilon, delta) conversion. ``"balle2020"`` is Balle et al. 2020,
        Theorem 21 (what Opacus uses); ``"classic"`` is epsilon = RDP - log(delta)/(alpha - 1)
        (Mironov 2017, Proposition 3; the moments accountant of Abadi et al. 2016).
    eps_error : float, default=0.01
        PRV only: allowed error of the epsilon estimate; the returned value is an upper bound.

    Returns
    -------
    float

    Examples
    --------
    Abadi et al. 2016 (q=0.01, sigma=4, 10,000 steps, delta=1e-5) report 1.26:

    >>> from privacy.dp import compute_epsilon
    >>> args = dict(noise_multiplier=4.0, sample_rate=0.01, steps=10_000, target_delta=1e-5)
    >>> round(compute_epsilon(**args, accountant="rdp", conversion="classic"), 2)
    1.26
    >>> round(compute_epsilon(**args, accountant="rdp"), 3)
    1.035
    """
    _check_choice("accountant", accountant, ACCOUNTANTS)
    _check_choice("conversion", conversion, CONVERSIONS)
    _check_positive("noise_multiplier", noise_multiplier)
    _check_positive("steps", steps, integer=True, allow_zero=True)
    _check_delta(target_delta)
    if not (isinstance(sample_rate, (int, float)) and 0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}. It is batch size / dataset size.")
    if accountant == "prv" and conversion != "balle2020":
        raise ConfigError(f"conversion={conversion!r} applies to the RDP accountant only; the PRV accountant "
                          "has no RDP conversion. Use accountant='rdp' or drop conversion.")
    if steps == 0:
        return 0.0
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": the bound stays valid, only less tight.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        if accountant == "prv":
            from opacus.accountants import PRVAccountant

            prv = PRVAccountant()
            prv.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
            return float(prv.get_epsilon(target_delta, eps_error=eps_error))
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

        orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
        rdp = np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=orders))
        if conversion == "classic":
            return float(np.nanmin(rdp - math.log(target_delta) / (orders - 1)))
        eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=target_delta)
        return float(eps)


def default_delta(n_examples: int) -> float:
    """The default ``target_delta``: the largest power of ten at most ``1 / (10 * n_examples)``.

    A delta of ``1/N`` or more allows a mechanism that publishes some training examples in full,
    so delta must be well below ``1/N``.

    Examples
    --------
    >>> from privacy.dp import default_delta
    >>> default_delta(400), default_delta(1000), default_delta(50_000)
    (0.0001, 0.0001, 1e-06)
    """
    _check_positive("n_examples", n_examples, integer=True)
    return float(10.0 ** -(math.ceil(math.log10(n_examples) - 1e-12) + 1))


class _EpsilonAt:
    """Epsilon after ``n`` steps at fixed (sigma, q, delta), for many ``n``.

    RDP composes additively (Mironov 2017, Proposition 1), so the RDP of one step is computed
    once and scaled; this gives exactly what Opacus' RDP accountant reports, at a fraction of the
    cost. PRV has no such shortcut and is recomputed for every ``n``.
    """

    def __init__(self, *, noise_multiplier: float, sample_rate: float, target_delta: float, accountant: str) -> None:
        self.args = dict(noise_multiplier=noise_multiplier, sample_rate=sample_rate, target_delta=target_delta)
        self.accountant = accountant
        self._rdp_one: np.ndarray | None = None
        if accountant == "rdp":
            from opacus.accountants import RDPAccountant
            from opacus.accountants.analysis.rdp import compute_rdp

            self._orders = np.asarray(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
            self._rdp_one = np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                                   orders=self._orders))

    def __call__(self, steps: int) -> float:
        if steps == 0:
            return 0.0
        if self._rdp_one is None:
            return compute_epsilon(**self.args, steps=steps, accountant="prv")
        from opacus.accountants.analysis.rdp import get_privacy_spent

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            eps, _ = get_privacy_spent(orders=self._orders, rdp=self._rdp_one * steps, delta=self.args["target_delta"])
        return float(eps)


def _max_steps_within(target_epsilon: float, planned: int, eps_at: Any) -> tuple[int, float]:
    """Largest step count <= ``planned`` whose epsilon stays within the target, and the epsilon
    one more step would spend (epsilon grows with the number of steps)."""
    eps_planned = eps_at(planned)
    if eps_planned <= target_epsilon:
        return planned, eps_planned
    low, high, eps_high = 0, planned, eps_planned
    while high - low > 1:
        mid = (low + high) // 2
        eps_mid = eps_at(mid)
        if eps_mid <= target_epsilon:
            low = mid
        else:
            high, eps_high = mid, eps_mid
    return low, eps_high


# -- model preparation -------------------------------------------------------------------


def _own_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def make_dp_compatible(model: torch.nn.Module) -> tuple[torch.nn.Module, list[str]]:
    """Repair the layers Opacus cannot train, where that keeps what the model computes.

    ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and ``nn.MultiheadAttention`` are rebuilt by Opacus'
    ``ModuleValidator.fix`` as their DP twins with the same weights. Any other trainable layer
    Opacus rejects (batch normalisation, normalisation with running statistics, a trainable
    layer holding buffers) raises :class:`~audit.errors.ConfigError` naming the layer: Opacus'
    own fix (BatchNorm -> GroupNorm) would throw away what the layer learned.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place where possible; use the returned module.

    Returns
    -------
    model : torch.nn.Module
    repaired : list of str
        ``"name (OldType -> NewType)"`` for every replaced layer.
    """
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()
    to_fix: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        if not _own_params(module):
            continue
        validator = ModuleValidator.VALIDATORS.get(type(module))
        problems = validator(module) if validator is not None else []
        if problems and isinstance(module, _SOUND_FIXES):
            to_fix.append((name, type(module).__name__))
            continue
        if problems or any(True for _ in module.buffers(recurse=False)):
            reason = str(problems[0]).split(". ")[0] if problems else "it keeps buffers (statistics of the data) that DP-SGD does not make private"
            raise ConfigError(
                f"Layer {name or '<root>'!r} ({type(module).__name__}) cannot be trained with DP-SGD: {reason}. "
                "Opacus' automatic fix would replace it and lose what it learned. Freeze it with "
                "trainable_layers (e.g. 'head' or a list of parameter-name prefixes) or use a model without it."
            )
    repaired: list[str] = []
    if to_fix:
        model = ModuleValidator.fix(model)
        for name, old in to_fix:
            repaired.append(f"{name} ({old} -> {type(model.get_submodule(name)).__name__})")
    model.train(was_training)
    return model, repaired


def _lean_pass_inputs(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the first ghost-clipping pass differentiates: the trainable 1-D parameters (biases,
    norm scales: their gradients are sums, not matrix products) and the embedding tables (whose
    inputs are token ids, so nothing below them would make their layer's hooks fire)."""
    wanted = [p for p in module.parameters() if p.requires_grad and p.ndim == 1]
    for layer in module.modules():
        if isinstance(layer, torch.nn.Embedding) and layer.weight.requires_grad:
            wanted.append(layer.weight)
    return wanted


def ghost_backward(loss: Any) -> None:
    """Opacus' ghost-clipping backward (``DPTensorFastGradientClipping.backward``) with a lighter first pass.

    Opacus' first pass, which only feeds the per-example norm hooks, is a full ``backward()``:
    it also computes every weight gradient, then throws them away. Here that pass is
    ``torch.autograd.grad`` towards :func:`_lean_pass_inputs`, so gradients still flow through every
    layer (each layer's hook sees the same output gradient and activations, hence the same norms and
    clipping coefficients) but the weight-gradient matrix products are skipped. A layer the pass did
    not reach (a layer without bias below the others) is caught: every trainable parameter's norm is
    cleared before and checked after, and Opacus' full first pass runs instead. The second pass is
    Opacus' own.
    """
    module, per_sample = loss.module, loss.loss_per_sample
    reduced = per_sample.mean(dim=0) if loss.loss_reduction == "mean" else per_sample.sum(dim=0)
    params = list(module.trainable_parameters)
    for param in params:
        param._norm_sample = None
    wanted = _lean_pass_inputs(module)
    if wanted:
        torch.autograd.grad(reduced, wanted, retain_graph=True, allow_unused=True)
    if any(getattr(param, "_norm_sample", None) is None for param in params):
        reduced.backward(retain_graph=True)
    loss.optimizer.zero_grad()
    coeff = module.get_clipping_coef()
    second = torch.sum(coeff.to(per_sample.device) * per_sample)
    module.disable_hooks()
    try:
        second.backward()
    finally:
        module.enable_hooks()


def _freeze_running_stats(model: torch.nn.Module) -> None:
    # A frozen normalisation layer in training mode would still update its running statistics
    # from the private batches, outside the guarantee: keep such layers in eval mode.
    for module in model.modules():
        if getattr(module, "track_running_stats", False) and not _own_params(module):
            module.eval()


def _untie_output_embeddings(model: Any) -> bool:
    """Give a tied LM head its own copy of the weights (Opacus' ghost clipping cannot clip a
    parameter used by two layers). The model computes the same function afterwards."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or inp is None or out.weight is not inp.weight:
        return False
    out.weight = torch.nn.Parameter(out.weight.detach().clone(), requires_grad=out.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text_config is not None and text_config is not model.config:
        text_config.tie_word_embeddings = False
    return True


def _block_list(model: Any) -> tuple[str, int] | None:
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or getattr(model.config, "n_layer", 0) or 0)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and n_layers and len(module) == n_layers:
            return name, n_layers
    return None


def _select_trainable(model: Any, spec: Any, task: str) -> list[str]:
    """Set ``requires_grad`` from the ``trainable_layers`` spec; return the trainable names."""
    names = [n for n, _ in model.named_parameters()]
    prefix = getattr(model, "base_model_prefix", "") or ""
    base = [n for n in names if prefix and n.startswith(prefix + ".")]
    head = [n for n in names if n not in base]
    if task == "causal-lm":
        out = model.get_output_embeddings()
        head_ids = {id(p) for p in out.parameters()} if out is not None else set()
        head = [n for n, p in model.named_parameters() if id(p) in head_ids]
    if spec == "all":
        chosen = set(names)
    elif spec == "head":
        chosen = set(head)
    elif isinstance(spec, int) and not isinstance(spec, bool):
        blocks = _block_list(model)
        if blocks is None:
            raise ConfigError(f"trainable_layers={spec} needs a model whose transformer blocks can be found; "
                              f"{type(model).__name__} has none. Use 'all', 'head' or parameter-name prefixes.")
        block_prefix, n_layers = blocks
        if spec > n_layers:
            raise ConfigError(f"trainable_layers={spec} but the model has {n_layers} transformer blocks. "
                              f"Use 0 to {n_layers}, 'all' or 'head'.")
        in_blocks = [n for n in names if n.startswith(block_prefix + ".")]
        last = tuple(f"{block_prefix}.{i}." for i in range(n_layers - spec, n_layers))
        # Embedding tables and the modules around them (BERT's embeddings.LayerNorm) stay frozen;
        # what sits between the blocks and the head (pooler, final norm) trains with the top blocks.
        embedding_modules = tuple(f"{name}." for name, module in model.named_modules() if name and (
            isinstance(module, torch.nn.Embedding) or name.rsplit(".", 1)[-1].startswith(("embed", "wte", "wpe"))))
        top = [n for n in base if n not in in_blocks and not n.startswith(embedding_modules)]
        chosen = set(head) | {n for n in in_blocks if n.startswith(last)} | (set(top) if spec else set())
    else:
        prefixes = [str(p) for p in spec]
        unmatched = [p for p in prefixes if not any(n == p or n.startswith(p.rstrip(".") + ".") for n in names)]
        if unmatched:
            tops = sorted({".".join(n.split(".")[:2]) for n in names})[:12]
            raise ConfigError(f"trainable_layers: {unmatched} match no parameter of {type(model).__name__}. "
                              f"Parameter names start with e.g. {tops}. Use prefixes of those names.")
        chosen = {n for n in names if any(n == p or n.startswith(p.rstrip(".") + ".") for p in prefixes)}
    if not chosen:
        raise ConfigError(f"trainable_layers={spec!r} selects no parameter of {type(model).__name__}. "
                          "Use 'all', 'head', a number of top blocks or parameter-name prefixes.")
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return sorted(chosen)


# -- loading ---------------------------------------------------------------------------------


@dataclass
class _Source:
    model: Any
    tokenizer: Any
    task: str
    model_id: str
    path: Path | None
    fingerprint: str
    records: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    head_initialised: bool = False


def _state_fingerprint(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def _is_causal_lm(model: Any) -> bool:
    return type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def _resolve_task(task: str, kind: str) -> str:
    if task == "auto":
        return "causal-lm" if kind == "causal-lm" else "sequence-classification"
    return task


def _load_from_path(path: Path, model_id: str, task: str, classes: list[Any] | None,
                    records: dict[str, Any] | None = None) -> _Source:
    import transformers
    from transformers.models.auto import modeling_auto

    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(f"Model path {model_id!r} is not a Hugging Face model directory (no config.json). "
                             "Give a directory written by save_pretrained.")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ModelLoadError(f"Model directory {model_id!r} has no *.safetensors weights. Re-save it with "
                             "model.save_pretrained(dir) (safetensors is the default).")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError here
        raise ModelLoadError(f"Model {model_id!r}: config.json cannot be read ({str(exc).splitlines()[0][:200]}). "
                             "Re-save the model with save_pretrained.") from None
    kind = detect_kind(config)
    model_type = getattr(config, "model_type", "?")
    notes: list[str] = []
    head_initialised = False
    kwargs: dict[str, Any] = {}
    if task == "sequence-classification":
        if model_type not in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise ConfigError(
                f"Model {model_id!r} is a {model_type!r} model ({kind}), which has no sequence-classification "
                "head in transformers, so it cannot be fine-tuned for classification. Use a text encoder "
                "(BERT-like) or decoder (GPT-2-like) checkpoint."
            )
        assert classes is not None
        names = [str(c) for c in classes]
        existing = kind == "sequence-classification"
        if existing and int(config.num_labels) == len(classes):
            old = [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
            if sorted(old) == sorted(names):
                names = old
        else:
            head_initialised = True
            notes.append(f"The classification head ({len(classes)} classes) was newly initialised at random "
                         "and trained under DP with the rest of the trainable layers.")
            kwargs["ignore_mismatched_sizes"] = existing
        kwargs.update(num_labels=len(names), id2label=dict(enumerate(names)),
                      label2id={n: i for i, n in enumerate(names)})
        auto = transformers.AutoModelForSequenceClassification
    else:
        if kind != "causal-lm" or model_type not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ConfigError(
                f"task='causal-lm' needs a causal language model, but {model_id!r} is a {model_type!r} model "
                f"({kind}). Give a label column to fine-tune it as a classifier, or use a GPT-2-like model."
            )
        auto = transformers.AutoModelForCausalLM
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises OSError, ValueError, TypeError here
        raise ModelLoadError(f"Tokenizer of {model_id!r} cannot be loaded ({str(exc).splitlines()[0][:200]}). "
                             "Save the tokenizer beside the model with tokenizer.save_pretrained(dir).") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verbosity = transformers.utils.logging.get_verbosity()
        transformers.utils.logging.set_verbosity_error()
        try:
            model = auto.from_pretrained(path, use_safetensors=True, **kwargs)
        except (ValueError, OSError, RuntimeError) as exc:
            raise ModelLoadError(f"Model {model_id!r} cannot be loaded for {task} "
                                 f"({str(exc).splitlines()[0][:200]}).") from None
        finally:
            transformers.utils.logging.set_verbosity(verbosity)
    return _Source(model=model.float(), tokenizer=tokenizer, task=task, model_id=model_id, path=path,
                   fingerprint=model_fingerprint(path), records=records if records is not None else read_records(path),
                   notes=notes, head_initialised=head_initialised)


def _peek_task(model: Any, task: str) -> str:
    """The task ``"auto"`` resolves to for ``model``, read without loading any weights."""
    if task != "auto":
        return task
    if isinstance(model, AuditTarget):
        return _resolve_task(task, model.kind)
    if isinstance(model, (str, os.PathLike)):
        config = Path(model).expanduser() / "config.json"
        try:
            architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures")
        except (OSError, ValueError, AttributeError):
            architectures = None  # _load_source reports a missing or broken config
        return _resolve_task(task, detect_kind(_Architectures(architectures)))
    return _resolve_task(task, "causal-lm" if _is_causal_lm(model) else "encoder")


@dataclass
class _Architectures:
    """Just enough of a config for :func:`~audit.target.detect_kind`."""

    architectures: list[str] | None


def _load_source(model: Any, tokenizer: Any, task: str, classes: list[Any] | None) -> _Source:
    """The model to train, as a private copy: the caller's model is never touched."""
    if isinstance(model, AuditTarget):
        return _load_from_path(model.path, model.model_id, task, classes, records=dict(model.records))
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelLoadError(f"Model path {os.fspath(model)!r} does not exist. Give a directory written by "
                                 "save_pretrained (with config.json).")
        return _load_from_path(path.resolve(), os.fspath(model), task, classes)
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        if tokenizer is None:
            raise ConfigError(f"fit() got a {type(model).__name__} object but no tokenizer. Pass tokenizer=..., "
                              "or pass the model's directory instead.")
        if task == "causal-lm" and not _is_causal_lm(model):
            raise ConfigError(f"task='causal-lm' needs a causal language model, got {type(model).__name__}. "
                              "Pass a *ForCausalLM model or its directory.")
        if task == "sequence-classification":
            assert classes is not None
            if not type(model).__name__.endswith("ForSequenceClassification"):
                raise ConfigError(f"fit() got a {type(model).__name__} object for sequence classification. Pass "
                                  "the model's directory so a classification head can be added, or a "
                                  "*ForSequenceClassification model.")
            if int(model.config.num_labels) != len(classes):
                raise ConfigError(f"The model has {model.config.num_labels} labels but the data has "
                                  f"{len(classes)} classes {[str(c) for c in classes]}. Pass the model's "
                                  "directory to train a new head, or data with matching classes.")
        own = copy.deepcopy(model).float()
        return _Source(model=own, tokenizer=copy.deepcopy(tokenizer), task=task, model_id=type(model).__name__,
                       path=None, fingerprint=_state_fingerprint(model), records={})
    raise ConfigError(f"fit() needs a model directory, an AuditTarget or a transformers model, got "
                      f"{type(model).__name__}. Pass one of those.")


# -- data ------------------------------------------------------------------------------------


@dataclass
class _Data:
    texts: list[str]
    labels: list[Any] | None
    path: str
    fingerprint: str
    text_column: str
    label_column: str | None


def _frame_fingerprint(frame: Any, columns: list[str]) -> str:
    payload = frame[columns].to_csv(index=False).encode("utf-8")
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def _read_data(dataset: Any, text_column: str, label_column: str | None, needs_labels: bool) -> _Data:
    import pandas as pd

    if isinstance(dataset, AuditDataset):
        frame, path, fingerprint = dataset.frame, dataset.path, dataset.fingerprint
        text_column = dataset.text_column
        label_column = dataset.label_column if dataset.label_column is not None else label_column
    elif isinstance(dataset, (str, os.PathLike)):
        loaded = load_dataset(dataset, text_column=text_column, label_column=label_column if needs_labels else None)
        frame, path, fingerprint = loaded.frame, loaded.path, loaded.fingerprint
    elif isinstance(dataset, pd.DataFrame):
        frame, path, fingerprint = dataset, "<in-memory DataFrame>", ""
    else:
        raise DataError(f"fit() needs a data file path, an AuditDataset or a pandas DataFrame, got "
                        f"{type(dataset).__name__}. Pass one of those.")
    columns = [str(c) for c in frame.columns]
    wanted = [("text_column", text_column)] + ([("label_column", label_column)] if needs_labels else [])
    for role, column in wanted:
        if column is None:
            raise DataError(f"Sequence classification needs a label column, but {role} is None. "
                            "Set label_column (--label-column), or use a causal LM without labels.")
        if column not in columns:
            raise DataError(f"Column {column!r} ({role}) is not in {path}. Columns: {columns}. "
                            f"Set {role} to one of them.")
    if len(frame) == 0:
        raise DataError(f"The training data {path} has no rows. Give data with at least batch_size rows.")
    texts = frame[text_column]
    missing = int(texts.isna().sum())
    if missing:
        raise DataError(f"Text column {text_column!r} of {path} has {missing} missing value(s). "
                        "Drop or fill those rows.")
    labels = None
    if needs_labels:
        assert label_column is not None
        series = frame[label_column]
        missing = int(series.isna().sum()) + int((series.astype(str).str.strip() == "").sum())
        if missing:
            raise DataError(f"Label column {label_column!r} of {path} has {missing} missing value(s). "
                            "Drop or fill those rows.")
        labels = series.tolist()
    if not fingerprint:
        fingerprint = _frame_fingerprint(frame, [c for c, _ in ((text_column, 0), (label_column, 0))
                                                 if c is not None and (c != label_column or needs_labels)])
    return _Data([str(t) for t in texts.tolist()], labels, str(path), fingerprint, text_column,
                 label_column if needs_labels else None)


def _sorted_classes(labels: Sequence[Any]) -> list[Any]:
    unique = list(dict.fromkeys(labels))
    try:
        return sorted(unique)
    except TypeError:
        return sorted(unique, key=str)


# -- training ----------------------------------------------------------------------------------


class _CausalLMLoss(torch.nn.Module):
    """Next-token cross-entropy, averaged over each sequence's own tokens (the unit of privacy is
    the sequence), then reduced over the batch as ``reduction`` says ("none" for ghost clipping)."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
            ignore_index=-100, reduction="none",
        ).view(shift_labels.shape)
        per_sequence = per_token.sum(1) / (shift_labels != -100).sum(1).clamp(min=1)
        if self.reduction == "none":
            return per_sequence
        return per_sequence.sum() if self.reduction == "sum" else per_sequence.mean()


def _entropy_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from operating-system entropy; the seed is dropped at once, never recorded."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("opacus", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover - all three are dependencies
            out[name] = "not installed"
    return out


class DPFineTuner:
    """Fine-tune a Hugging Face model with DP-SGD (Abadi et al. 2016) under a hard privacy budget.

    Configuration is stored as given; :meth:`fit` does the work on a private copy of the model and
    :meth:`save` writes the new model directory (safetensors) with its privacy record
    (``rai_audit_record.json``, section ``"dp"``) beside it.

    Parameters
    ----------
    target_epsilon : float, default=8.0
        Privacy budget. Training never spends more: the noise is calibrated so the planned steps
        fit, and training stops early (with a :class:`PrivacyBudgetWarning`) if one more step
        would pass it.
    target_delta : float, optional
        Delta of the guarantee. Default :func:`default_delta` of the training-set size, below
        ``1/N``; a value of ``1/N`` or more is accepted with a warning.
    max_grad_norm : float, default=1.0
        Per-example gradient clipping norm (flat clipping over all trainable parameters).
    epochs : int, default=3
        Planned passes over the training data (each pass is ``1/q`` Poisson-sampled steps).
    batch_size : int, default=64
        Expected logical batch size; the sampling rate is ``1 / ceil(N / batch_size)``, as in Opacus.
    max_physical_batch_size : int, default=32
        Largest batch run through the model at once (Opacus' ``BatchMemoryManager``); logical
        batches larger than this are accumulated, which does not change the guarantee.
    learning_rate : float, default=5e-4
        AdamW learning rate (no weight decay).
    noise_multiplier : float, optional
        Fix sigma instead of calibrating it to the budget; training then stops when the budget
        is spent.
    accountant : {"prv", "rdp"}, default="prv"
        Opacus' PRV accountant (Gopi et al. 2021) or RDP accountant with the Balle et al. 2020
        conversion.
    grad_sample_mode : {"ghost", "hooks"}, default="ghost"
        Ghost clipping (Li et al. 2022; per-example norms without per-example gradients) or
        Opacus' per-example gradient hooks.
    trainable_layers : "all", "head", int or sequence of str, default="all"
        Everything; only the task head; the head plus the top ``k`` transformer blocks (and the
        pooler or final norm); or parameter-name prefixes.
    task : {"auto", "sequence-classification", "causal-lm"}, default="auto"
        ``"auto"``: causal-lm for a causal language model, otherwise sequence classification
        (a new head is added to encoders and masked LMs).
    text_column, label_column : str, default="text", "label"
        Columns of the training data (an :class:`~audit.data.AuditDataset` brings its own).
        ``label_column`` is ignored for causal LMs.
    max_length : int, default=128
        Token limit; longer texts are truncated.
    eval_fraction : float, default=0.2
        Share of rows held out (stratified) to measure utility; they are never trained on.
    baseline : bool, default=False
        Also train a non-private copy for the same number of steps and report its utility.
    canaries : sequence of int, default=()
        Causal LMs: plant one random canary per entry, repeated that many times, e.g.
        ``(1, 10, 100)`` (:class:`privacy.leakage.CanarySet`, Carlini et al. 2019). They are
        recorded so the ``canary_exposure`` probe can measure what the model memorised.
    audit_canaries : int, default=0
        Empirical one-run audit (:mod:`privacy.dp_audit`, Steinke, Nasr and Jagielski 2023): plant
        this many random canaries, each trained on with probability 1/2 (OS entropy), guess from
        the trained model which were, and record a 95% lower bound on epsilon beside the
        accountant's (``record_["empirical_epsilon_lower_bound"]``). 0: no audit.
    secure_mode : bool, default=False
        Opacus' secure mode (noise from ``torchcsprng``, hardened Gaussian sampling). Refused with
        a :class:`~audit.errors.ConfigError` when ``torchcsprng`` is not installed (it has no
        release for current torch). Without it the noise and the Poisson sampling still come
        from generators seeded by operating-system entropy, never from ``seed``.
    record_private_stats : bool, default=False
        Also write statistics of the private training rows that the accountant does not cover
        (the training-loss curve, the non-private baseline's score, the count of empty Poisson
        batches) into the saved record, labelled as not covered by the guarantee. They stay
        available in memory (``history_``, ``utility_``, ``record_``) either way.
    seed : int, default=0
        Fixes the data split, the canary positions, the initialisation of new layers and dropout;
        never the DP noise, the Poisson sampling or the canary secrets.
    device : str, default="auto"
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    progress : bool, default=False
        Show a progress bar with the loss and the epsilon spent so far (on a terminal).

    Attributes
    ----------
    model_ : transformers.PreTrainedModel
        The trained model (evaluation mode, on the CPU).
    tokenizer_ : tokenizer
    epsilon_ : float
        Epsilon spent, from the accountant, at ``target_delta_``.
    target_delta_ : float
    noise_multiplier_ : float
    sample_rate_ : float
    steps_ : int
        Noisy optimizer steps taken (empty Poisson batches included: they are released too).
    stopped_early_ : bool
        Whether the budget stopped training before the planned steps.
    history_ : list of dict
        Training curve: ``step``, ``epoch``, ``loss`` (mean since the previous point), ``epsilon``.
        The loss is a statistic of the private batches that the accountant does not cover.
    utility_ : dict
        Held-out metric with DP, and without DP when ``baseline=True`` (the baseline is trained on
        the private rows without DP: its score is not covered by the guarantee).
    record_ : dict
        The full ``"dp"`` section, every statistic included. :meth:`save` writes it without the
        statistics the guarantee does not cover unless ``record_private_stats=True``, and with
        the data fingerprint keyed (:func:`audit.records.data_digest`).

    Examples
    --------
    >>> from privacy.dp import DPFineTuner
    >>> tuner = DPFineTuner(target_epsilon=8.0, target_delta=1e-5).fit("path/to/model", "train.csv")  # doctest: +SKIP
    >>> tuner.epsilon_ <= 8.0  # doctest: +SKIP
    True
    >>> tuner.save("model-dp")  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        target_epsilon: float = 8.0,
        target_delta: float | None = None,
        max_grad_norm: float = 1.0,
        epochs: int = 3,
        batch_size: int = 64,
        max_physical_batch_size: int = 32,
        learning_rate: float = 5e-4,
        noise_multiplier: float | None = None,
        accountant: Accountant = "prv",
        grad_sample_mode: GradSampleMode = "ghost",
        trainable_layers: str | int | Sequence[str] = "all",
        task: Task = "auto",
        text_column: str = "text",
        label_column: str | None = "label",
        max_length: int = 128,
        eval_fraction: float = 0.2,
        baseline: bool = False,
        canaries: Sequence[int] = (),
        audit_canaries: int = 0,
        secure_mode: bool = False,
        record_private_stats: bool = False,
        seed: int = 0,
        device: str = "auto",
        progress: bool = False,
    ) -> None:
        self.target_epsilon = target_epsilon
        self.target_delta = target_delta
        self.max_grad_norm = max_grad_norm
        self.epochs = epochs
        self.batch_size = batch_size
        self.max_physical_batch_size = max_physical_batch_size
        self.learning_rate = learning_rate
        self.noise_multiplier = noise_multiplier
        self.accountant = accountant
        self.grad_sample_mode = grad_sample_mode
        self.trainable_layers = trainable_layers
        self.task = task
        self.text_column = text_column
        self.label_column = label_column
        self.max_length = max_length
        self.eval_fraction = eval_fraction
        self.baseline = baseline
        self.canaries = canaries
        self.audit_canaries = audit_canaries
        self.secure_mode = secure_mode
        self.record_private_stats = record_private_stats
        self.seed = seed
        self.device = device
        self.progress = progress

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments, as given."""
        return {name: getattr(self, name) for name in inspect.signature(type(self).__init__).parameters
                if name != "self"}

    # -- checks ------------------------------------------------------------------------------
    def _validate_params(self) -> None:
        eps = self.target_epsilon
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"target_epsilon must be a positive finite number, got {eps!r}. "
                              "Use e.g. 8.0 (common for fine-tuning) or 1.0 (strong privacy).")
        if self.target_delta is not None:
            _check_delta(self.target_delta)
        _check_positive("max_grad_norm", self.max_grad_norm)
        _check_positive("epochs", self.epochs, integer=True)
        _check_positive("batch_size", self.batch_size, integer=True)
        _check_positive("max_physical_batch_size", self.max_physical_batch_size, integer=True)
        _check_positive("learning_rate", self.learning_rate)
        _check_positive("max_length", self.max_length, integer=True)
        canaries = self.canaries
        if isinstance(canaries, (str, bytes)) or not isinstance(canaries, Sequence) or not all(
                isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in canaries):
            raise ConfigError(f"canaries must be a sequence of positive repetition counts, e.g. (1, 10, 100), got "
                              f"{canaries!r}. Use () for none.")
        from privacy.dp_audit import check_audit_canaries

        check_audit_canaries(self.audit_canaries)
        if self.noise_multiplier is not None:
            _check_positive("noise_multiplier", self.noise_multiplier)
        _check_choice("accountant", self.accountant, ACCOUNTANTS)
        _check_choice("grad_sample_mode", self.grad_sample_mode, GRAD_SAMPLE_MODES)
        _check_choice("task", self.task, TASKS)
        if self.secure_mode and importlib.util.find_spec("torchcsprng") is None:
            raise ConfigError(SECURE_MODE_UNAVAILABLE)
        if not (isinstance(self.eval_fraction, (int, float)) and 0 <= self.eval_fraction < 1):
            raise ConfigError(f"eval_fraction must be in [0, 1), got {self.eval_fraction!r}. Use e.g. 0.2, "
                              "or 0 to skip the utility measurement.")
        spec = self.trainable_layers
        valid = spec in ("all", "head") or (isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0) or (
            isinstance(spec, Sequence) and not isinstance(spec, str) and len(spec) > 0
            and all(isinstance(s, str) and s for s in spec))
        if not valid:
            raise ConfigError(f"trainable_layers must be 'all', 'head', a non-negative number of top blocks or "
                              f"a list of parameter-name prefixes, got {spec!r}.")

    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"Unknown device {self.device!r}. Use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, model: Any, dataset: Any, *, tokenizer: Any = None) -> DPFineTuner:
        """Fine-tune a private copy of ``model`` on ``dataset`` with DP-SGD.

        Parameters
        ----------
        model : path, AuditTarget or transformers model
            A directory written by ``save_pretrained`` (safetensors), a loaded
            :class:`~audit.target.AuditTarget` (reloaded from its directory), or a model object
            (``*ForSequenceClassification`` with as many labels as the data has classes, or a
            causal LM) together with ``tokenizer``. It is never changed.
        dataset : path, AuditDataset or pandas.DataFrame
            CSV, JSONL, Parquet or saved Hugging Face dataset; one example per row.
        tokenizer : tokenizer, optional
            Needed only when ``model`` is a model object.

        Returns
        -------
        self
        """
        self._validate_params()
        started = time.perf_counter()
        device = self._device()
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            torch.manual_seed(self.seed)
            task = _peek_task(model, self.task)
            data = _read_data(dataset, self.text_column, self.label_column, task == "sequence-classification")
            classes = None
            if data.labels is not None:
                classes = _sorted_classes(data.labels)
                if len(classes) < 2:
                    raise DataError(f"Label column {data.label_column!r} of {data.path} has one class "
                                    f"({str(classes[0])!r}); a classifier needs at least two. Give data with "
                                    "examples of every class.")
            source = _load_source(model, tokenizer, task, classes)
            self.input_records_ = dict(source.records)
            self._fit(source, data, device)
        self.duration_s_ = time.perf_counter() - started
        self.record_ = self._build_record(source, data)
        return self

    def _split(self, data: _Data, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n = len(data.texts)
        order = rng.permutation(n)
        if self.eval_fraction == 0:
            return np.sort(order), np.array([], dtype=int)
        n_eval = max(1, round(n * self.eval_fraction))
        if n - n_eval < 1:
            raise DataError(f"The data has {n} row(s); holding out eval_fraction={self.eval_fraction} leaves none "
                            "to train on. Give more data or lower eval_fraction.")
        if data.labels is None:
            return np.sort(order[n_eval:]), np.sort(order[:n_eval])
        # Stratified: the same share of each class is held out.
        labels = np.asarray([str(v) for v in data.labels])
        eval_idx: list[int] = []
        for cls in dict.fromkeys(labels[order]):
            members = order[labels[order] == cls]
            take = round(len(members) * n_eval / n)
            # Every class keeps at least one training row; a singleton class is never held out.
            take = min(max(take, 1), len(members) - 1) if len(members) > 1 else 0
            eval_idx.extend(members[:take].tolist())
        eval_set = set(eval_idx)
        train = np.array(sorted(i for i in range(n) if i not in eval_set), dtype=int)
        return train, np.array(sorted(eval_set), dtype=int)

    def _encode(self, tokenizer: Any, texts: list[str], task: str) -> tuple[torch.Tensor, torch.Tensor]:
        bos = getattr(tokenizer, "bos_token_id", None)
        encoded = tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)["input_ids"]
        if task == "causal-lm" and bos is not None:
            # The first word is predicted too (from BOS), so a canary's every token counts.
            encoded = [([bos, *ids] if not ids or ids[0] != bos else ids)[: self.max_length] for ids in encoded]
        width = max(1, max(len(ids) for ids in encoded))
        pad = tokenizer.pad_token_id
        ids_t = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            ids_t[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        return ids_t, mask

    def _inputs(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        width = max(1, int(mask.sum(1).max()))
        # Contiguous: Opacus' embedding norm sampler views the ids as one column.
        ids, mask = ids[:, :width].contiguous().to(device), mask[:, :width].contiguous().to(device)
        batch = {"input_ids": ids, "attention_mask": mask}
        # Opacus needs these at the full batch size: the models' own buffers have batch size 1,
        # and per-example gradients of the position / token-type embeddings need every row.
        if self._token_types:
            batch["token_type_ids"] = torch.zeros_like(ids)
        if self._positions:
            batch["position_ids"] = torch.arange(width, device=device).unsqueeze(0).repeat(ids.shape[0], 1)
        return batch

    def _fit(self, source: _Source, data: _Data, device: torch.device) -> None:
        rng = np.random.default_rng(self.seed)
        task = source.task
        tokenizer = source.tokenizer
        tokenizer.padding_side = "right"
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token is None:
                raise ModelLoadError(f"Tokenizer of {source.model_id!r} has neither a padding nor an end-of-text "
                                     "token, so batches cannot be padded. Add a pad token and save it.")
            tokenizer.pad_token = tokenizer.eos_token
        model = source.model
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        classes = None
        if task == "sequence-classification":
            classes = _sorted_classes(data.labels or [])
            id2label = model.config.id2label
            names = [str(id2label.get(i, i)) for i in range(len(classes))]
            by_name = {str(c): c for c in classes}
            classes = [by_name[n] for n in names] if sorted(names) == sorted(by_name) else classes
            model.config.id2label = {i: str(c) for i, c in enumerate(classes)}
            model.config.label2id = {str(c): i for i, c in enumerate(classes)}
        self.classes_ = classes
        train_idx, eval_idx = self._split(data, rng)
        train_texts = [data.texts[i] for i in train_idx]
        self._private_texts = list(train_texts)  # the rows the guarantee covers, for the keyed data digest
        eval_texts = [data.texts[i] for i in eval_idx]
        label_index = {str(c): i for i, c in enumerate(classes or [])}
        train_y = [label_index[str(data.labels[i])] for i in train_idx] if classes else [0] * len(train_idx)
        eval_y = [label_index[str(data.labels[i])] for i in eval_idx] if classes else [0] * len(eval_idx)
        self.canaries_ = None
        if self.canaries:
            if task != "causal-lm":
                raise ConfigError("canaries apply to causal LMs: the canary_exposure probe ranks their "
                                  "log-perplexity. Drop canaries for a classifier.")
            from privacy.leakage import CanarySet

            # The secrets come from OS entropy: derived from the recorded seed, they would be no secret.
            secret_rng = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
            self.canaries_ = CanarySet.generate(repetitions=tuple(self.canaries), rng=secret_rng)
            train_texts = self.canaries_.insert(train_texts, rng=rng)
            train_y = [0] * len(train_texts)
        self.audit_ = None
        if self.audit_canaries:
            from privacy.dp_audit import OneRunAudit

            # Canaries and inclusion bits from OS entropy (the secrets module), never from the seed.
            self.audit_ = OneRunAudit(n_canaries=self.audit_canaries)
            train_texts, train_y = self.audit_.plant(train_texts, train_y, tokenizer=tokenizer,
                                                     n_classes=len(classes or []))
        n_train = len(train_texts)
        self.n_train_, self.n_eval_, self.n_rows_ = n_train, len(eval_texts), len(data.texts)
        # Rows that could be sampled, every audit canary counted whether or not its secret bit put it in:
        # the batch count and sampling rate follow from this, so the record does not reveal the bits' sum.
        self.public_train_rows_ = n_train + (self.audit_canaries - self.audit_.included_rows if self.audit_ else 0)
        self.eval_rows_ = eval_idx.tolist()
        n_public = self.public_train_rows_
        if n_public < self.batch_size:
            held = f" after holding out {len(eval_texts)} for evaluation" if len(eval_texts) else ""
            held += f", counting the {self.audit_canaries} audit canaries" if self.audit_ else ""
            raise DataError(f"The training set has {n_public} example(s){held}, fewer than batch_size="
                            f"{self.batch_size}. Lower batch_size to at most {n_public} or give more data.")
        if self.target_delta is None:
            self.target_delta_ = default_delta(n_public)
        else:
            self.target_delta_ = float(self.target_delta)
            if self.target_delta_ >= 1.0 / n_public:
                warnings.warn(
                    f"target_delta={self.target_delta_:g} is not below 1/N = {1.0 / n_public:.3g} (N={n_public} "
                    "training examples): a mechanism that publishes a few examples in full meets such a delta. "
                    f"Use a delta well below 1/N, e.g. {default_delta(n_public):g} (the default).",
                    UserWarning, stacklevel=3,
                )
        ids, mask = self._encode(tokenizer, train_texts, task)
        labels_t = torch.as_tensor(train_y, dtype=torch.long)
        eval_ids, eval_mask = self._encode(tokenizer, eval_texts, task) if eval_texts else (None, None)

        self.untied_embeddings_ = bool(task == "causal-lm" and self.grad_sample_mode == "ghost"
                                       and _untie_output_embeddings(model))
        trainable = _select_trainable(model, self.trainable_layers, task)
        model, repaired = make_dp_compatible(model)
        self.repaired_layers_ = repaired
        self.trainable_parameters_ = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
        self.total_parameters_ = int(sum(p.numel() for p in model.parameters()))
        self.trainable_names_ = trainable
        forward_params = inspect.signature(model.forward).parameters
        self._token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ()) and "token_type_ids" in forward_params
        self._positions = "position_ids" in forward_params
        model.to(device)
        initial_state = copy.deepcopy(model.state_dict()) if self.baseline else None
        if self.audit_ is not None:
            self.audit_.score_before(self._audit_losses(model, tokenizer, task, device))

        self._train_private(model, ids, mask, labels_t, task, device)
        self.model_ = model.cpu().eval()
        self.tokenizer_ = tokenizer
        if self.audit_ is not None:
            self.audit_.score_after(self._audit_losses(self.model_, tokenizer, task, torch.device("cpu")),
                                    delta=self.target_delta_, epsilon=self.epsilon_)
        self.notes_ = list(source.notes)
        metric = "accuracy" if task == "sequence-classification" else "eval_loss"
        self.utility_ = {"metric": metric, "split": "held-out rows (never trained on)", "rows": len(eval_texts),
                         "private": None, "non_private": None,
                         "coverage": "The DP model's score on held-out rows that were never trained on: "
                                     "post-processing of the DP model, but a statistic of those rows, which DP "
                                     "does not protect."}
        if eval_ids is not None:
            eval_labels = torch.as_tensor(eval_y, dtype=torch.long)
            self.utility_["private"] = self._evaluate(self.model_, eval_ids, eval_mask, eval_labels, task, torch.device("cpu"))
            if task == "sequence-classification":
                counts = np.bincount(np.asarray(eval_y), minlength=len(classes or []))
                self.utility_["majority_class"] = float(counts.max() / counts.sum())
            else:
                self.utility_["private_perplexity"] = _finite(math.exp(min(self.utility_["private"], 700)))
        if self.baseline:
            self.utility_["non_private_coverage"] = "The non-private baseline was trained on the private rows: " + NOT_COVERED
            base_model = copy.deepcopy(self.model_).to(device)
            base_model.load_state_dict(initial_state)
            self.baseline_history_ = self._train_non_private(base_model, ids, mask, labels_t, task, device)
            if eval_ids is not None:
                self.utility_["non_private"] = self._evaluate(base_model.cpu().eval(), eval_ids, eval_mask,
                                                              torch.as_tensor(eval_y, dtype=torch.long), task,
                                                              torch.device("cpu"))
                if task == "causal-lm":
                    self.utility_["non_private_perplexity"] = _finite(math.exp(min(self.utility_["non_private"], 700)))
            del base_model

    def _audit_losses(self, model: Any, tokenizer: Any, task: str, device: torch.device) -> Any:
        """Per-canary losses under ``model``, encoded and batched as in training (for the one-run audit)."""
        from privacy.dp_audit import example_losses

        def losses(texts: list[str], labels: list[int]) -> np.ndarray:
            ids, mask = self._encode(tokenizer, texts, task)
            return example_losses(model, ids, mask, torch.as_tensor(labels, dtype=torch.long), task=task,
                                  inputs=lambda i, m: self._inputs(model, i, m, device),
                                  batch_size=self.max_physical_batch_size)

        return losses

    def _criterion(self, task: str) -> torch.nn.Module:
        return torch.nn.CrossEntropyLoss() if task == "sequence-classification" else _CausalLMLoss()

    def _loss(self, model: Any, criterion: Any, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor,
              task: str, device: torch.device) -> Any:
        batch = self._inputs(model, ids, mask, device)
        logits = model(**batch).logits
        if task == "sequence-classification":
            return criterion(logits, y.to(device))
        return criterion(logits, batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100))

    def _train_private(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                       task: str, device: torch.device) -> None:
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.utils.batch_memory_manager import BatchMemoryManager
        from torch.utils.data import DataLoader, TensorDataset

        # Opacus' Poisson sampler draws from this loader's generator: it must not derive from the seed.
        # Its rate is 1 / len(loader): one batch per batch_size of the public row count, never of the
        # actual rows (their number includes the audit canaries' secret bits). The batches listed here
        # are never drawn; Opacus replaces the sampler with its own over every row of the dataset.
        steps_per_epoch = math.ceil(self.public_train_rows_ / self.batch_size)
        loader = DataLoader(TensorDataset(ids, mask, labels), batch_sampler=[[0]] * steps_per_epoch,
                            generator=_entropy_generator())
        sample_rate = 1.0 / steps_per_epoch  # what Opacus' Poisson loader and accountant use
        planned = self.epochs * steps_per_epoch

        if self.noise_multiplier is None:
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Optimal order is the")
                    sigma = float(get_noise_multiplier(target_epsilon=float(self.target_epsilon),
                                                       target_delta=self.target_delta_, sample_rate=sample_rate,
                                                       steps=planned, accountant=self.accountant))
            except ValueError:
                raise ConfigError(f"target_epsilon={self.target_epsilon} cannot be met for {planned} steps at "
                                  f"sampling rate {sample_rate:.3g} with any noise level. Raise target_epsilon, or "
                                  "lower epochs or batch_size.") from None
        else:
            sigma = float(self.noise_multiplier)
        eps_at = _EpsilonAt(noise_multiplier=sigma, sample_rate=sample_rate, target_delta=self.target_delta_,
                            accountant=self.accountant)
        max_steps, eps_next = _max_steps_within(float(self.target_epsilon), planned, eps_at)
        if max_steps == 0:
            raise ConfigError(f"noise_multiplier={sigma:g} spends epsilon {eps_next:.3g} in a single step, above "
                              f"target_epsilon={self.target_epsilon}. Raise noise_multiplier or target_epsilon, or "
                              "leave noise_multiplier unset to calibrate it.")
        self.noise_multiplier_, self.sample_rate_ = sigma, sample_rate
        self.steps_per_epoch_, self.planned_steps_ = steps_per_epoch, planned
        self.stopped_early_ = max_steps < planned
        self.stop_reason_ = None
        if self.stopped_early_:
            self.stop_reason_ = (
                f"Stopped after {max_steps} of {planned} planned steps ({max_steps / steps_per_epoch:.2f} of "
                f"{self.epochs} epochs): one more step would spend epsilon {eps_next:.3f}, above "
                f"target_epsilon={self.target_epsilon}."
            )
            warnings.warn(self.stop_reason_, PrivacyBudgetWarning, stacklevel=4)

        model.train()
        _freeze_running_stats(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=0.0)
        engine = PrivacyEngine(accountant=self.accountant, secure_mode=self.secure_mode)
        noise_generator = None if self.secure_mode else _entropy_generator(device)
        prepared = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, criterion=self._criterion(task),
            noise_multiplier=sigma, max_grad_norm=float(self.max_grad_norm), poisson_sampling=True,
            grad_sample_mode=self.grad_sample_mode, noise_generator=noise_generator,
        )
        if self.grad_sample_mode == "ghost":
            dp_model, dp_optimizer, criterion, dp_loader = prepared
        else:
            (dp_model, dp_optimizer, dp_loader), criterion = prepared, self._criterion(task)

        def accounted() -> int:
            return int(sum(n for _, _, n in engine.accountant.history))

        log_every = max(1, math.ceil(max_steps / 10))
        history: list[dict[str, Any]] = []
        bar = self._bar(max_steps)
        steps, loss_sum, loss_n, empty = 0, 0.0, 0, 0
        try:
            with BatchMemoryManager(data_loader=dp_loader, max_physical_batch_size=self.max_physical_batch_size,
                                    optimizer=dp_optimizer) as physical:
                for _ in range(self.epochs):
                    for batch_ids, batch_mask, batch_y in physical:
                        if len(batch_ids) == 0:
                            empty += 1
                            self._zero_grads(params)
                        else:
                            loss = self._loss(dp_model, criterion, batch_ids, batch_mask, batch_y, task, device)
                            ghost_backward(loss) if self.grad_sample_mode == "ghost" else loss.backward()
                            loss_sum += float(loss.item()) * len(batch_ids)
                            loss_n += len(batch_ids)
                        before = accounted()
                        dp_optimizer.step()
                        dp_optimizer.zero_grad()
                        if accounted() == before:
                            continue  # a physical batch inside a logical one: no step yet
                        steps += 1
                        bar.update(1)
                        if steps % log_every == 0 or steps == max_steps:
                            eps = eps_at(accounted())
                            mean_loss = loss_sum / loss_n if loss_n else float("nan")
                            history.append({"step": steps, "epoch": round(steps / steps_per_epoch, 4),
                                            "loss": _finite(mean_loss), "epsilon": eps})
                            bar.set_postfix(loss=f"{mean_loss:.4f}", eps=f"{eps:.3f}")
                            loss_sum, loss_n = 0.0, 0
                        if steps >= max_steps:
                            break
                    if steps >= max_steps:
                        break
        finally:
            bar.close()
            dp_model.to_standard_module()  # removes Opacus' hooks and per-example attributes
        self.accountant_history_ = [list(h) for h in engine.accountant.history]
        if any((h[0], h[1]) != (sigma, sample_rate) for h in self.accountant_history_):
            raise RuntimeError(f"Opacus accounted {self.accountant_history_}, not sigma={sigma}, q={sample_rate}; "
                               "the recorded guarantee would be wrong.")
        self.steps_ = accounted()
        self.empty_batches_ = empty
        self.epochs_completed_ = self.steps_ / steps_per_epoch
        self.epsilon_ = float(engine.accountant.get_epsilon(self.target_delta_))
        self.history_ = history

    def _zero_grads(self, params: list[torch.nn.Parameter]) -> None:
        # An empty Poisson batch is still a released step: the optimizer must add noise to a
        # zero gradient (skipping it would reveal that the batch was empty). The hooks optimizer
        # clips per-example gradients (none here); the ghost one reads the summed gradient.
        for p in params:
            if self.grad_sample_mode == "hooks":
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            p.grad = torch.zeros_like(p)

    def _train_non_private(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                           task: str, device: torch.device) -> list[dict[str, Any]]:
        from torch.utils.data import DataLoader, TensorDataset

        model.train()
        _freeze_running_stats(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=0.0)
        criterion = self._criterion(task)
        loader = DataLoader(TensorDataset(ids, mask, labels), batch_size=self.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(self.seed))
        history, steps, total = [], 0, self.steps_
        while steps < total:
            for batch_ids, batch_mask, batch_y in loader:
                optimizer.zero_grad()
                batch_loss = 0.0
                for start in range(0, len(batch_ids), self.max_physical_batch_size):
                    part = slice(start, start + self.max_physical_batch_size)
                    loss = self._loss(model, criterion, batch_ids[part], batch_mask[part], batch_y[part], task, device)
                    share = len(batch_ids[part]) / len(batch_ids)
                    (loss * share).backward()
                    batch_loss += float(loss.item()) * share
                optimizer.step()
                steps += 1
                history.append({"step": steps, "loss": _finite(batch_loss)})
                if steps >= total:
                    break
        return history

    def _evaluate(self, model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, task: str,
                  device: torch.device) -> float:
        model.eval()
        correct, token_loss, tokens = 0, 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(ids), self.max_physical_batch_size):
                part = slice(start, start + self.max_physical_batch_size)
                batch = self._inputs(model, ids[part], mask[part], device)
                logits = model(**batch).logits
                if task == "sequence-classification":
                    correct += int((logits.argmax(-1).cpu() == labels[part]).sum())
                else:
                    targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
                    token_loss += float(torch.nn.functional.cross_entropy(
                        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                        ignore_index=-100, reduction="sum"))
                    tokens += int((targets != -100).sum())
        if task == "sequence-classification":
            return correct / len(ids)
        return token_loss / max(tokens, 1)

    def _bar(self, total: int) -> Any:
        from audit.progress import progress

        return progress(total, desc="DP-SGD", unit="step", enabled=self.progress)

    # -- record and saving ----------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "record_"):
            raise NotFittedError("This DPFineTuner is not fitted yet. Call fit(model, dataset) first, then save(out_dir).")

    def _build_record(self, source: _Source, data: _Data) -> dict[str, Any]:
        epsilon = self.epsilon_
        record: dict[str, Any] = {
            "technique": "DP-SGD (Abadi et al. 2016): Poisson sampling, per-example gradient clipping, Gaussian noise",
            "guarantee": f"({epsilon:.4g}, {self.target_delta_:.3g})-differential privacy with respect to "
                         f"{UNIT_OF_PRIVACY}, for the released model and every intermediate model.",
            "unit_of_privacy": UNIT_OF_PRIVACY,
            "epsilon": epsilon,
            "delta": self.target_delta_,
            "target_epsilon": float(self.target_epsilon),
            "delta_source": "user" if self.target_delta is not None else "default: largest power of ten <= 1/(10 N)",
            "noise_multiplier": self.noise_multiplier_,
            "noise_calibrated": self.noise_multiplier is None,
            "sampling": "Poisson",
            "sample_rate": self.sample_rate_,
            "expected_batch_size": self.sample_rate_ * self.public_train_rows_,
            "max_physical_batch_size": self.max_physical_batch_size,
            "steps": self.steps_,
            "planned_steps": self.planned_steps_,
            "empty_batches": self.empty_batches_,
            "epochs": self.epochs_completed_,
            "requested_epochs": self.epochs,
            "stopped_by_budget": self.stopped_early_,
            "stop_reason": self.stop_reason_,
            "max_grad_norm": float(self.max_grad_norm),
            "clipping": "flat (one norm over all trainable parameters)",
            "accountant": self.accountant,
            "accountant_description": ACCOUNTANT_DESCRIPTIONS[self.accountant],
            "conversion": CONVERSION_NAMES[self.accountant],
            "grad_sample_mode": self.grad_sample_mode,
            "optimizer": "AdamW (weight decay 0)",
            "learning_rate": float(self.learning_rate),
            "task": source.task,
            "trainable_layers": self.trainable_layers if isinstance(self.trainable_layers, (str, int)) else list(self.trainable_layers),
            "trainable_parameters": self.trainable_parameters_,
            "total_parameters": self.total_parameters_,
            "head_initialised": source.head_initialised,
            "repaired_layers": self.repaired_layers_,
            "untied_embeddings": self.untied_embeddings_,
            "secure_rng": bool(self.secure_mode),
            "noise_rng": "torchcsprng (Opacus secure mode)" if self.secure_mode else NOISE_RNG,
            "noise_rng_description": NOISE_RNG_DESCRIPTION,
            "seed": self.seed,
            "seed_fixes": SEEDED_BY_SEED,
            "dataset": {
                "path": data.path,
                "fingerprint": data.fingerprint,
                "rows": self.n_rows_,
                "train_rows": self.n_train_ - self._canary_rows() - (self.audit_.included_rows if self.audit_ else 0),
                "canary_rows": self._canary_rows(),
                "eval_rows": self.n_eval_,
                "text_column": data.text_column,
                "label_column": data.label_column,
                "classes": [str(c) for c in self.classes_] if self.classes_ else None,
                "max_length": self.max_length,
            },
            "base_model": {"id": source.model_id, "path": str(source.path) if source.path else None,
                           "fingerprint": source.fingerprint},
            "curve": self.history_,
            "curve_coverage": "training loss of the private batches: " + NOT_COVERED,
            "utility": self.utility_,
            "notes": list(self.notes_),
            "library_versions": _versions(),
            "duration_s": round(self.duration_s_, 2),
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        if self.untied_embeddings_:
            record["notes"].append("The language-model head was untied from the input embeddings (same initial "
                                   "weights) because ghost clipping cannot clip a parameter shared by two layers.")
        if self.canaries_ is not None:
            record["canaries"] = self.canaries_.to_record()
            record["notes"].append(
                f"{len(self.canaries_.secrets)} random canaries were planted, repeated {list(self.canaries_.repetitions)} "
                "times. A row repeated k times is protected only by group privacy (about k x epsilon), so the "
                "frequent canaries are expected to be less protected than one row.")
        if self.audit_ is not None:
            record["audit"] = self.audit_.to_record()
            record["empirical_epsilon_lower_bound"] = record["audit"]["epsilon_lower_bound"]
            record["notes"].append(
                f"One-run audit: {self.audit_canaries} random canaries were planted, each trained on with probability "
                "1/2 (the canaries and the bits sealed in the record); the bound is what guessing them from the model "
                "refutes at 95% confidence.")
        return record

    def _canary_rows(self) -> int:
        return sum(self.canaries_.repetitions) if self.canaries_ is not None else 0

    def save(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the trained model (safetensors), its tokenizer and ``rai_audit_record.json``.

        The record keeps every section of the input model's record and adds ``"dp"``; an earlier
        ``"dp"`` section is kept inside the new one (``earlier_dp``) with the basic-composition
        total, which applies when the two trainings used data about the same people.

        Returns
        -------
        pathlib.Path
            The output directory.
        """
        self._check_fitted()
        source_path = Path(self.record_["base_model"]["path"]) if self.record_["base_model"]["path"] else None
        out = _check_output_dir(out_dir, overwrite=overwrite, source=source_path)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"Output directory {str(out)!r} cannot be created ({exc.strerror or exc}). "
                              "Choose another --out or fix its permissions.") from None
        records = dict(self.input_records_)
        digest = data_digest(self._private_texts)
        dp = self._published_record(digest)
        if "dp" in records and isinstance(records["dp"], dict):
            earlier = records["dp"]
            dp["earlier_dp"] = earlier
            try:
                dp["composed_with_earlier"] = {
                    "epsilon": float(earlier["epsilon"]) + self.epsilon_,
                    "delta": float(earlier["delta"]) + self.target_delta_,
                    "rule": "basic composition (Dwork et al. 2006): epsilons and deltas add up",
                    "applies_if": "both trainings used data about the same people",
                }
            except (KeyError, TypeError, ValueError):
                dp["composed_with_earlier"] = None
        records["dp"] = dp
        records = append_step(records, chain_entry(step="dp", technique="dp-sgd", digest=digest,
                                                   uses_user_data=True, private=True))
        self.model_.save_pretrained(out, safe_serialization=True)
        self.tokenizer_.save_pretrained(out)
        write_json_atomic(out / RECORD_FILENAME, records)
        return out

    def _published_record(self, digest: Mapping[str, Any] | None) -> dict[str, Any]:
        """The ``dp`` section as saved: keyed data fingerprint; uncovered statistics only on request."""
        record = copy.deepcopy(self.record_)
        record["dataset"]["fingerprint"] = digest["fingerprint"] if digest else None
        record["dataset"]["fingerprint_kind"] = DATA_FINGERPRINT_KIND
        if self.record_private_stats:
            record["private_stats"] = PRIVATE_STATS_INCLUDED
            record["empty_batches_coverage"] = "how many Poisson batches were empty: " + NOT_COVERED
            return record
        for key in ("curve", "curve_coverage", "empty_batches", "duration_s"):
            record.pop(key, None)
        for key in ("non_private", "non_private_perplexity", "non_private_coverage"):
            record["utility"].pop(key, None)
        record["private_stats"] = PRIVATE_STATS_LEFT_OUT
        return record


def _check_output_dir(out_dir: str | os.PathLike[str], *, overwrite: bool, source: Path | None) -> Path:
    """Fail early, creating nothing, when ``out_dir`` cannot take the new model."""
    out = Path(out_dir).expanduser()
    if source is not None and out.exists() and out.resolve() == source.resolve():
        raise OutputError(f"Output directory {str(out)!r} is the input model's directory; the input model is never "
                          "overwritten. Choose another --out.")
    if out.exists() and not out.is_dir():
        raise OutputError(f"Output path {str(out)!r} is a file. Choose a directory for --out.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"Output directory {str(out)!r} is not empty. Choose a new directory for --out, or pass "
                          "--overwrite (overwrite=True).")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise OutputError(f"Output directory {str(out)!r} cannot be created or written ({str(existing)!r} is not a "
                          "writable directory). Choose another --out or fix its permissions.")
    return out


def _describe(record: Mapping[str, Any]) -> str:
    """One line for the command line."""
    return (f"epsilon={record['epsilon']:.3f} (target {record['target_epsilon']:g}), delta={record['delta']:.3g}, "
            f"noise multiplier {record['noise_multiplier']:.3f}, sampling rate {record['sample_rate']:.3g}, "
            f"{record['steps']} steps ({record['epochs']:.2f} epochs), accountant {record['accountant']}")
