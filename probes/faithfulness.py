"""Are the attributions faithful to the model? ERASER removal curves and the model-randomisation check.

* ERASER (DeYoung et al. 2020): comprehensiveness ``p(y|x) - p(y|x without the top-k% tokens)``
  and sufficiency ``p(y|x) - p(y|only the top-k% tokens)``, averaged over k in {1, 5, 10, 20, 50}%
  (the area over the perturbation curve, AOPC), for each method and for tokens removed in a random
  order. A faithful method removes more of the decision than random removal does (higher
  comprehensiveness) and keeps more of it when only its top tokens remain (lower sufficiency).
* Model randomisation (Adebayo et al. 2018): re-initialise the model's weights from the top down
  (the head, then the last layer, ..., down to the first, then the embedding block and a tied
  unembedding) in a copy of the model and measure the Spearman rank correlation of each method's
  attributions with the original ones. A method whose attributions survive randomisation (in
  either direction: |rho|) describes the input more than the model, and is flagged.

For a seq2seq LM (T5, BART) ``y`` is the explained decoder output, the tokens removed are the
encoder's input tokens, and the cascade's layers are the encoder's: the "head" stage holds the
whole decoder (with the LM head), re-initialised first, as it sits above the encoder.

The verdict rule, its minimum number of examples and its effect-size threshold are in
:class:`FaithfulnessProbe`.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from scipy import stats as _st

from audit.context import AuditContext
from audit.errors import ConfigError, NotApplicableError
from audit.families import shared_layers
from audit.figures import to_svg
from audit.probe import Figure, Metric, Probe, ProbeResult, Table
from audit.stats import bootstrap_ci, holm_bonferroni, paired_permutation_test
from audit.target import AuditTarget
from probes.attribution import (
    EXPLAINABLE_KINDS,
    METHODS,
    TITLES,
    Encoded,
    Explainer,
    TokenAttribution,
    check_common_params,
    collect_examples,
    encode_examples,
    resolve_targets,
    transformer_blocks,
)

__all__ = [
    "EMBEDDING_STAGE",
    "PERCENTAGES",
    "FaithfulnessProbe",
    "cascade_stages",
    "checked_stages",
    "eraser_curves",
    "min_examples_for",
    "randomize_",
    "rank_correlation",
    "rank_correlation_p_value",
    "removal_order",
    "survival_statistic",
    "untie_output_embeddings_",
]

PERCENTAGES: tuple[float, ...] = (1, 5, 10, 20, 50)
#: Name of the cascade's last stage, which re-initialises the embedding block.
EMBEDDING_STAGE = "embeddings"
_EMBEDDING_NAME = re.compile(r"(^|\.)(embeddings?|embed_\w+|\w*_embeddings?|wte|wpe|word_embeddings)$")


def removal_order(scores: np.ndarray, enc: Encoded) -> np.ndarray:
    """Content-token positions from the largest |attribution| down (ties keep text order)."""
    content = enc.content
    return content[np.argsort(-np.abs(np.asarray(scores)[content]), kind="stable")]


def _n_tokens(n_content: int, percentage: float) -> int:
    return min(n_content, max(1, math.ceil(n_content * percentage / 100.0)))


def eraser_curves(explainer: Explainer, encs: Sequence[Encoded], targets: Sequence[Any],
                  orders: Sequence[Sequence[np.ndarray]], percentages: Sequence[float] = PERCENTAGES,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Comprehensiveness and sufficiency of token orders at each percentage (DeYoung et al. 2020).

    ``orders[i]`` holds one or more orders of example ``i``'s content tokens (most important first);
    the top ``ceil(k% x n)`` tokens (at least one) are deleted (comprehensiveness) or kept alone with
    the special tokens (sufficiency). Returns ``p(y|x)`` per example and the two curves, each of
    shape (examples, orders, percentages).
    """
    seqs: list[list[int]] = []
    owners: list[Any] = []
    for i, enc in enumerate(encs):
        seqs.append(list(enc.ids))
        owners.append(targets[i])
        n = len(enc.content)
        for order in orders[i]:
            for pct in percentages:
                top = set(int(j) for j in order[:_n_tokens(n, pct)])
                removed = [t for j, t in enumerate(enc.ids) if j not in top]
                kept = [t for j, t in enumerate(enc.ids) if j in top or enc.special[j]]
                for seq in (removed, kept):
                    # A causal LM needs at least one token to predict from.
                    seqs.append(seq if seq else [explainer.baseline_id])
                    owners.append(targets[i])
    scores = explainer.score(seqs, owners)
    n_orders, n_pct = max(len(o) for o in orders), len(percentages)
    full = np.zeros(len(encs))
    comp = np.full((len(encs), n_orders, n_pct), np.nan)
    suff = np.full((len(encs), n_orders, n_pct), np.nan)
    pos = 0
    for i in range(len(encs)):
        full[i] = scores[pos]
        pos += 1
        for o in range(len(orders[i])):
            for k in range(n_pct):
                comp[i, o, k] = full[i] - scores[pos]
                suff[i, o, k] = full[i] - scores[pos + 1]
                pos += 2
    return full, comp, suff


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two attribution magnitudes (NaN when either is constant)."""
    a, b = np.abs(np.asarray(a, dtype=float)), np.abs(np.asarray(b, dtype=float))
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(_st.spearmanr(a, b).statistic)


def _embedding_storage(model: Any) -> set[int]:
    return {p.data_ptr() for p in model.get_input_embeddings().parameters()}


def untie_output_embeddings_(model: Any) -> bool:
    """Give a tied output embedding (GPT-2's unembedding) its own copy of the weights, in place.

    The cascade then re-initialises the unembedding with the head and the input embeddings only
    at the last stage, as Adebayo et al. (2018) randomise from the output down. Only for copies.
    Returns whether the model had a tied output embedding.
    """
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    if not isinstance(weight, torch.nn.Parameter) or weight.data_ptr() not in _embedding_storage(model):
        return False
    out.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)
    return True


def cascade_stages(model: Any) -> list[tuple[str, list[tuple[str, torch.nn.Parameter]]]]:
    """The cascade of Adebayo et al. (2018) from the top down: the head, each layer (last first), the embeddings.

    The head is every parameter outside the layer stack and the embedding modules (pooler,
    classifier, final normalisation, an untied unembedding). The last stage, ``"embeddings"``,
    holds every parameter not in an earlier stage: the embedding block (word, position and
    token-type embeddings and their normalisation) and an output embedding still tied to the
    input one. After the last stage every parameter has been re-initialised; a Saliency map that
    survives up to it comes from the embedding normalisation (each token scaled by
    ``gamma / sigma_i``), which no layer above changes.
    """
    blocks = transformer_blocks(model)
    shared = blocks is None and shared_layers(model.config) is not None
    if shared:
        blocks = shared_blocks(model)
    if blocks is None:
        return []
    tied = _embedding_storage(model)
    in_blocks = {id(p) for p in blocks.parameters()}
    embedding_owned: set[int] = set()
    for name, module in model.named_modules():
        if _EMBEDDING_NAME.search(name):
            embedding_owned.update(id(p) for p in module.parameters())
    head = [(n, p) for n, p in model.named_parameters()
            if id(p) not in in_blocks and id(p) not in embedding_owned and p.data_ptr() not in tied]
    stages = [("head", head)] if head else []
    for index in range(len(blocks) - 1, -1, -1):
        name = f"shared layer group {index + 1} (all layers)" if shared else f"layer {index + 1}"
        stages.append((name, [(f"{name}.{n}", p) for n, p in blocks[index].named_parameters()
                              if p.data_ptr() not in tied]))
    done = {id(p) for _, params in stages for _, p in params}
    rest = [(n, p) for n, p in model.named_parameters(remove_duplicate=True) if id(p) not in done]
    if rest:
        stages.append((EMBEDDING_STAGE, rest))
    return stages


def shared_blocks(model: Any) -> Any:
    """The ``ModuleList`` of the weight sets a model shares across its layers (ALBERT's layer groups), or None."""
    groups = shared_layers(model.config)
    if groups is None:
        return None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == groups and "group" in name:
            return module
    return None


def offloaded(model: Any) -> bool:
    """Whether accelerate keeps some of the model's weights on disk (``meta`` tensors in memory)."""
    return any(p.device.type == "meta" for p in model.parameters())


def randomisation_notes(model: Any, *, randomization: bool, ran: bool) -> list[str]:
    """What the card must say about the randomisation check: shared layers, or why it did not run."""
    if not randomization:
        return ["Model randomisation check not run (randomization=False)."]
    if offloaded(model):
        return ["Model randomisation check not run: some layers are offloaded to disk (device_map), and a copy's "
                "offloaded weights cannot be re-initialised; verdicts rest on ERASER alone."]
    if not ran:
        return [f"Model randomisation check not run: the layer stack of {type(model).__name__} was not found, so it "
                "cannot be re-initialised from the top down; verdicts rest on ERASER alone."]
    groups = shared_layers(model.config)
    if groups is not None:
        return [f"The {model.config.num_hidden_layers} layers share {groups} weight set(s) (ALBERT), so the "
                "randomisation cascade re-initialises each shared set once, for every layer that uses it."]
    return []


def randomize_(params: Sequence[tuple[str, torch.nn.Parameter]], *, std: float, generator: torch.Generator) -> None:
    """Re-initialise parameters in place as at model creation: matrices ~ N(0, std), biases 0,
    normalisation weights 1. Only for copies: a probe never touches the target's own weights."""
    with torch.no_grad():
        for name, p in params:
            if p.dim() >= 2:
                noise = torch.randn(p.shape, generator=generator, dtype=torch.float32) * std
                p.copy_(noise.to(p.device, p.dtype))
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def _line_chart(x_labels: Sequence[str], series: dict[str, Sequence[float]], *, xlabel: str, ylabel: str,
                dashed: Sequence[str] = (), threshold: float | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    x = np.arange(len(x_labels))
    for label, values in series.items():
        ax.plot(x, values, marker="o", markersize=3.5, linewidth=1.6, label=label,
                linestyle="--" if label in dashed else "-", color="#777777" if label in dashed else None)
    if threshold is not None:
        for level in {threshold, -threshold}:
            ax.axhline(level, color="#b4442c", linewidth=0.9, linestyle=":")
    ax.set_xticks(x)
    ax.set_xticklabels(x_labels, rotation=30 if len(x_labels) > 5 else 0, ha="right" if len(x_labels) > 5 else "center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return to_svg(fig)


def min_examples_for(n_tests: int, alpha: float) -> int:
    """Fewest examples with which any of ``n_tests`` exact one-sided sign-flip tests can pass Holm at ``alpha``.

    On ``n`` examples the smallest such p-value is ``1 / 2 ** n`` (every example favouring the
    method), and Holm multiplies the smallest of ``n_tests`` by ``n_tests``: the verdict needs
    ``n_tests / 2 ** n <= alpha``. With fewer examples no method can be called better than random.
    """
    return max(1, math.ceil(math.log2(max(n_tests, 1) / alpha) - 1e-12))


def checked_stages(stage_names: Sequence[str]) -> list[int]:
    """Indices of the cascade stages the randomisation check reads.

    The stage that re-initialises the last remaining layer (the whole stack and the head are then
    random, the embeddings not yet) and the embeddings stage after it.
    """
    first = len(stage_names) - 2 if stage_names and stage_names[-1] == EMBEDDING_STAGE else len(stage_names) - 1
    return list(range(max(first, 0), len(stage_names)))


def survival_statistic(stage_rhos: Sequence[float | None], stage_names: Sequence[str]) -> float | None:
    """The randomisation check's statistic: the largest |mean Spearman rho| at the :func:`checked_stages`.

    A reversed ranking (rho near -1) is as much a survivor as an unchanged one: the map is still
    a function of the input that the model's learned layers do not control (Adebayo et al. 2018).
    """
    checked = [abs(r) for k in checked_stages(stage_names) if k < len(stage_rhos)
               for r in [stage_rhos[k]] if r is not None]
    return float(max(checked)) if checked else None


def rank_correlation_p_value(pairs: Sequence[tuple[np.ndarray, np.ndarray]], observed: float, *,
                             rng: np.random.Generator, n_resamples: int = 2000) -> float:
    """Two-sided permutation p-value of a mean Spearman rho of |attributions| under independence.

    Each example's ranks of the randomised model's |attributions| are shuffled (``rng``) and the
    mean over examples recomputed; p is ``(k + 1) / (n + 1)`` for the ``k`` shuffles whose
    |mean rho| reaches ``|observed|``. Pairs where either side is constant are left out, as in
    :func:`rank_correlation`.
    """
    null = np.zeros(n_resamples)
    used = 0
    for a, b in pairs:
        ra, rb = _st.rankdata(np.abs(a)), _st.rankdata(np.abs(b))
        if ra.size < 2 or np.ptp(ra) == 0 or np.ptp(rb) == 0:
            continue
        shuffled = rng.permuted(np.tile(rb, (n_resamples, 1)), axis=1)
        ca, cb = ra - ra.mean(), shuffled - rb.mean()
        null += (cb @ ca) / (np.linalg.norm(ca) * np.linalg.norm(rb - rb.mean()))
        used += 1
    if not used:
        return 1.0
    null /= used
    hits = np.count_nonzero(np.abs(null) >= abs(observed) - 1e-12)
    return float((hits + 1) / (n_resamples + 1))


class FaithfulnessProbe(Probe):
    """Which attribution method to trust for this model: ERASER removal curves and a randomisation check.

    For each method, comprehensiveness and sufficiency (DeYoung et al. 2020) are averaged over
    removing or keeping the top 1, 5, 10, 20 and 50% of tokens (AOPC) and compared, example by
    example, with removing tokens in a random order (``n_random`` orders). The effect size of an
    example is its gain over random divided by ``p(y|x)``, the share of the explained
    probability that the method's top tokens remove beyond what random ones remove.

    Verdict rule (each method):

    1. *Survives randomisation* (do not trust): the model-randomisation cascade of Adebayo et
       al. (2018) re-initialises a copy of the model from the top down (head, layers last to
       first, then the embedding block and a tied unembedding); if ``|mean Spearman rho|`` of
       the method's |attributions| with the original ones, over ``randomization_examples``
       examples, is at or above ``max_rank_correlation`` once the whole layer stack is random
       (with or without the embeddings), and a permutation test of no correlation
       (:func:`rank_correlation_p_value`, Bonferroni over those two stages) has p <= ``alpha``,
       the map describes the input, not the model. The test bounds how often a method whose
       maps are erased is flagged, whatever the lengths of the texts. |rho| at or above the
       threshold without that evidence makes the verdict undetermined, never "trust".
    2. *Undetermined*: fewer examples than :func:`min_examples_for` (``ceil(log2(m / alpha))``
       for ``m`` methods; 6 for three methods at 0.05), where no test could pass.
    3. *Better than random* (needed for trust): a one-sided sign-flip test of
       ``mean(gain_i - min_gain) > 0`` on the comprehensiveness gains, exact up to 2^20 sign
       vectors, Holm-adjusted across the methods at family-wise level ``alpha``: the mean gain
       must be significantly above ``min_gain``, not merely above zero. Sufficiency is tested the
       same way as a second family and reported, not used in the verdict.
    4. *Trust* when 3 holds and 1 does not; without the cascade, "faithful by ERASER".

    The cascade works on a deep copy of the model, so it needs memory for a second copy; its
    re-initialisations draw from the audit's seeded generator, so a seed gives the same verdicts.

    Parameters
    ----------
    methods : sequence of {"integrated_gradients", "saliency", "input_x_gradient"}, default=all three
    examples : sequence of str or mapping, optional
        Texts to test on; by default a seeded sample of the data, else a short built-in list.
    max_examples : int, default=16
        At least :func:`min_examples_for` are needed for a verdict (6 with three methods).
    target : int or str, optional
        As in the attribution probe: class (classifier) or continuation (causal LM); default the prediction.
    percentages : sequence of float, default=(1, 5, 10, 20, 50)
        The k% of tokens removed or kept (ERASER's bins).
    n_random : int, default=5
        Random removal orders per example for the baseline.
    n_steps, max_n_steps, max_delta, internal_batch_size, baselines
        Integrated Gradients settings, as in the attribution probe (Captum's names). The cascade
        uses ``n_steps`` as given, without raising it.
    randomization : bool, default=True
        Run the model-randomisation cascade.
    randomization_examples : int, default=4
        Examples re-attributed at every stage of the cascade.
    max_rank_correlation : float, default=0.5
        A method whose |mean Spearman correlation| after the stack is randomised is at or above this is flagged.
    min_gain : float, default=0.05
        Smallest mean comprehensiveness gain over random, as a share of ``p(y|x)``, that can earn trust.
    alpha : float, default=0.05
        Family-wise level for "better than random" after Holm-Bonferroni.
    n_boot : int, default=2000
    """

    name: ClassVar[str] = "faithfulness"
    category: ClassVar[str] = "transparency"
    kinds: ClassVar[frozenset[str]] = EXPLAINABLE_KINDS
    description: ClassVar[str] = "ERASER comprehensiveness/sufficiency vs random and the model-randomisation check"
    version: ClassVar[str] = "2"

    def __init__(
        self,
        *,
        methods: Sequence[str] = METHODS,
        examples: Sequence[Any] | None = None,
        max_examples: int = 16,
        target: int | str | None = None,
        percentages: Sequence[float] = PERCENTAGES,
        n_random: int = 5,
        n_steps: int = 50,
        max_n_steps: int = 400,
        max_delta: float = 0.05,
        internal_batch_size: int | None = None,
        baselines: str | int = "pad",
        randomization: bool = True,
        randomization_examples: int = 4,
        max_rank_correlation: float = 0.5,
        min_gain: float = 0.05,
        alpha: float = 0.05,
        n_boot: int = 2000,
    ) -> None:
        self.methods = methods
        self.examples = examples
        self.max_examples = max_examples
        self.target = target
        self.percentages = percentages
        self.n_random = n_random
        self.n_steps = n_steps
        self.max_n_steps = max_n_steps
        self.max_delta = max_delta
        self.internal_batch_size = internal_batch_size
        self.baselines = baselines
        self.randomization = randomization
        self.randomization_examples = randomization_examples
        self.max_rank_correlation = max_rank_correlation
        self.min_gain = min_gain
        self.alpha = alpha
        self.n_boot = n_boot
        check_common_params(self.name, methods=methods, examples=examples, max_examples=max_examples,
                            n_steps=n_steps, baselines=baselines)
        if isinstance(percentages, str) or not percentages or not all(0 < p <= 100 for p in percentages):
            raise ConfigError(f"Probe 'faithfulness': percentages must be a list of numbers in (0, 100], "
                              f"got {percentages!r}.")
        if n_random < 1 or randomization_examples < 1 or n_boot < 1:
            raise ConfigError(f"Probe 'faithfulness': n_random, randomization_examples and n_boot must be "
                              f"positive, got {n_random!r}, {randomization_examples!r}, {n_boot!r}.")
        if max_n_steps < n_steps:
            raise ConfigError(f"Probe 'faithfulness': max_n_steps ({max_n_steps}) must be at least n_steps ({n_steps}).")
        if not 0 < alpha < 1 or not 0 <= max_rank_correlation <= 1:
            raise ConfigError(f"Probe 'faithfulness': alpha must be in (0, 1) and max_rank_correlation in [0, 1] "
                              f"(it bounds |rho|), got {alpha!r}, {max_rank_correlation!r}.")
        if not 0 <= min_gain < 1:
            raise ConfigError(f"Probe 'faithfulness': min_gain is a share of p(y|x) in [0, 1), got {min_gain!r}.")

    def _attribute(self, explainer: Explainer, encs: list[Encoded], targets: list[Any], *,
                   raise_steps: bool = True) -> dict[str, list[TokenAttribution]]:
        out = {}
        for method in self.methods:
            if method == "integrated_gradients" and raise_steps:
                out[method] = explainer.integrated_gradients(
                    encs, targets, n_steps=self.n_steps, max_delta=self.max_delta, max_n_steps=self.max_n_steps,
                    internal_batch_size=self.internal_batch_size)
            else:
                out[method] = explainer.attribute(encs, targets, method, n_steps=self.n_steps,
                                                  internal_batch_size=self.internal_batch_size)
        return out

    def _tests(self, gains: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Holm-adjusted one-sided p-values of ``mean(gain - min_gain) > 0``, one per row, and the rejections."""
        p_values = [paired_permutation_test(row - self.min_gain, np.zeros_like(row), rng=rng,
                                            alternative="greater").p_value for row in gains]
        return holm_bonferroni(p_values, alpha=self.alpha)

    def _survival(self, rhos: Sequence[float | None], p_values: Sequence[float | None],
                  stage_names: Sequence[str]) -> tuple[float | None, float | None, bool]:
        """The survival statistic, its adjusted p-value and the outcome of the randomisation check.

        ``"survives"`` when, at some checked stage, ``|mean rho| >= max_rank_correlation`` and the
        permutation p-value times the number of checked stages is at most ``alpha``, so that a
        method whose maps are erased is flagged at most ``alpha`` of the time whatever the lengths
        of the texts; ``"inconclusive"`` when |mean rho| reaches the threshold without that
        evidence (too few or too short examples: not trusted either); ``"erased"`` otherwise.
        """
        stages = [k for k in checked_stages(stage_names) if k < len(rhos) and rhos[k] is not None]
        if not stages:
            return None, None, "erased"
        n_checked = len(checked_stages(stage_names))
        adjusted = {k: min(1.0, (p_values[k] if p_values[k] is not None else 1.0) * n_checked) for k in stages}
        big = [k for k in stages if abs(rhos[k]) >= self.max_rank_correlation]
        outcome = "survives" if any(adjusted[k] <= self.alpha for k in big) else "inconclusive" if big else "erased"
        shown = min(big, key=lambda k: adjusted[k]) if big else max(stages, key=lambda k: abs(rhos[k]))
        return survival_statistic(rhos, stage_names), float(adjusted[shown]), outcome

    def _verdict(self, *, survival: str, checked: bool, enough: bool, beats: bool, n: int, n_min: int) -> str:
        if survival == "survives":
            return "do not trust: survives model randomisation"
        if survival == "inconclusive":
            return (f"undetermined: |rho| after randomisation reaches {self.max_rank_correlation:g} but is not "
                    f"significant at {self.alpha:g} (use more randomization_examples)")
        if not enough:
            return f"undetermined: {n} examples, at least {n_min} needed"
        if not beats:
            return f"do not trust: not better than random removal by at least {self.min_gain:g} of p(y|x)"
        return "trust" if checked else "faithful by ERASER (randomisation check not run)"

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        if target.head == "score":
            raise NotApplicableError(
                f"{target.model_id!r} has a single-score head (num_labels=1): ERASER measures the share of a "
                "predicted probability that removing tokens takes away, and a raw score is not a probability. "
                "The attribution probe explains its score.")
        explainer = Explainer.for_target(target, baselines=self.baselines)
        examples, notes = collect_examples(probe=self.name, examples=self.examples, context=context,
                                           max_examples=self.max_examples)
        encs = encode_examples(explainer, target, examples, probe=self.name)
        labels = target.labels if explainer.kind == "sequence-classification" else []
        targets = resolve_targets(explainer, encs, examples, self.target, probe=self.name, labels=labels)
        attributions = self._attribute(explainer, encs, targets)
        methods = list(attributions)
        pct = tuple(float(p) for p in self.percentages)

        orders = [[removal_order(attributions[m][i].scores, enc) for m in methods] +
                  [context.rng.permutation(enc.content) for _ in range(self.n_random)]
                  for i, enc in enumerate(encs)]
        full, comp, suff = eraser_curves(explainer, encs, targets, orders, pct)
        n_m = len(methods)
        comp_aopc, suff_aopc = comp.mean(axis=2), suff.mean(axis=2)  # (examples, orders)
        rand_comp, rand_suff = comp_aopc[:, n_m:].mean(axis=1), suff_aopc[:, n_m:].mean(axis=1)
        scale = np.maximum(full, 1e-12)
        comp_gain = (comp_aopc[:, :n_m] - rand_comp[:, None]).T / scale  # (methods, examples)
        suff_gain = (rand_suff[:, None] - suff_aopc[:, :n_m]).T / scale
        comp_p, comp_reject = self._tests(comp_gain, context.rng)
        suff_p, _ = self._tests(suff_gain, context.rng)
        n_min = min_examples_for(n_m, self.alpha)

        cascade, stage_names, cascade_p = self._cascade(target, explainer, encs, targets, attributions, context) \
            if self.randomization else ({}, [], {})
        notes = [*notes, *randomisation_notes(target.model, randomization=self.randomization, ran=bool(cascade))]
        metrics: dict[str, Metric] = {}
        rows, verdicts = [], {}
        for j, method in enumerate(methods):
            c_gain = bootstrap_ci(comp_gain[j], rng=context.rng, n_resamples=self.n_boot)
            c_ci = bootstrap_ci(comp_aopc[:, j], rng=context.rng, n_resamples=self.n_boot)
            s_ci = bootstrap_ci(suff_aopc[:, j], rng=context.rng, n_resamples=self.n_boot)
            metrics[f"comprehensiveness[{method}]"] = Metric(
                value=c_ci.estimate, ci=c_ci.as_tuple(), ci_level=c_ci.level, p_value=float(comp_p[j]),
                direction="higher_is_better",
                description=f"ERASER comprehensiveness AOPC of {TITLES[method]} (p: gain over random removal above "
                            f"{self.min_gain:g} of p(y|x), one-sided sign-flip, Holm-adjusted over the methods)")
            metrics[f"comprehensiveness_gain[{method}]"] = Metric(
                value=c_gain.estimate, ci=c_gain.as_tuple(), ci_level=c_gain.level, p_value=float(comp_p[j]),
                threshold=self.min_gain, direction="higher_is_better",
                description=f"Comprehensiveness of {TITLES[method]} minus that of random removal, as a share of "
                            f"p(y|x), mean over examples; trust needs it significantly above {self.min_gain:g}")
            metrics[f"sufficiency[{method}]"] = Metric(
                value=s_ci.estimate, ci=s_ci.as_tuple(), ci_level=s_ci.level, p_value=float(suff_p[j]),
                direction="lower_is_better",
                description=f"ERASER sufficiency AOPC of {TITLES[method]} (p: better than random by {self.min_gain:g} "
                            "of p(y|x), Holm-adjusted; reported, not used in the verdict)")
            final_rho, survival_p, survival = self._survival(cascade.get(method, []), cascade_p.get(method, []),
                                                             stage_names)
            if cascade:
                metrics[f"randomized_rank_correlation[{method}]"] = Metric(
                    value=final_rho, threshold=self.max_rank_correlation, direction="lower_is_better",
                    p_value=survival_p,
                    note=None if final_rho is not None else "attributions of the randomised model were constant",
                    description=f"|mean Spearman correlation| of |{TITLES[method]}| with the original once every "
                                "layer and the head (and then the embeddings) are re-initialised, the larger of the "
                                "two (Adebayo et al. 2018); p: permutation test of no correlation, Bonferroni over "
                                "the two stages")
            survives = survival == "survives"
            verdict = self._verdict(survival=survival, checked=bool(cascade), enough=len(encs) >= n_min,
                                    beats=bool(comp_reject[j]), n=len(encs), n_min=n_min)
            verdicts[method] = verdict
            rows.append([TITLES[method], float(comp_aopc[:, j].mean()), float(rand_comp.mean()),
                         f"{c_gain.estimate:+.3f} [{c_gain.low:+.3f}, {c_gain.high:+.3f}]",
                         float(comp_p[j]), float(suff_aopc[:, j].mean()), float(rand_suff.mean()),
                         float(suff_p[j]), final_rho, survives, verdict])
        for measure, values in (("comprehensiveness", rand_comp), ("sufficiency", rand_suff)):
            metrics[f"{measure}[random]"] = Metric(
                value=float(values.mean()), description=f"ERASER {measure} AOPC of random removal orders "
                                                        f"({self.n_random} per example)")
        trusted = [m for m in methods if verdicts[m] == "trust" or verdicts[m].startswith("faithful")]
        best = max(trusted, key=lambda m: comp_gain[methods.index(m)].mean()) if trusted else None
        metrics["n_trusted_methods"] = Metric(value=float(len(trusted)), direction="higher_is_better",
                                              description=f"Methods that pass both checks, of {len(methods)}")
        metrics["min_examples_for_verdict"] = Metric(
            value=float(n_min), description=f"Fewest examples with which a method can pass the better-than-random "
                                            f"test ({n_m} Holm-adjusted tests at {self.alpha:g}); this run used "
                                            f"{len(encs)}")
        tables = [Table(
            title="Which attribution method to trust",
            columns=["method", "comprehensiveness", "random", "gain over random, share of p(y|x) [95% CI]",
                     "p (Holm)", "sufficiency", "random", "p (Holm)", "|rank correlation| after randomisation",
                     "survives randomisation", "verdict"],
            rows=rows,
            caption=f"AOPC over the top {', '.join(f'{p:g}' for p in pct)}% of tokens, mean of {len(encs)} examples; "
                    "comprehensiveness: higher is better; sufficiency: lower is better. Trust needs the gain over "
                    f"random removal to be significantly above {self.min_gain:g} of p(y|x) (one-sided sign-flip test, "
                    f"Holm over {n_m} methods at {self.alpha:g}), which is possible only with at least {n_min} "
                    "examples. A method survives randomisation when |Spearman rho| stays at or above "
                    f"{self.max_rank_correlation:g} once every layer is re-initialised (a reversed ranking counts) "
                    f"and a permutation test of no correlation gives p <= {self.alpha:g}.")]
        figures = self._figures(methods, comp, suff, pct, n_m, cascade, stage_names)
        if cascade:
            tables.append(Table(title="Model randomisation cascade (Adebayo et al. 2018)",
                                columns=["randomised up to", *[TITLES[m] for m in methods]],
                                rows=[[stage, *[cascade[m][s] for m in methods]] for s, stage in enumerate(stage_names)],
                                caption=f"Mean Spearman correlation of |attribution| with the trained model's, over "
                                        f"{min(self.randomization_examples, len(encs))} examples; each row "
                                        "re-initialises one more part of a copy of the model, from the top down; "
                                        "the last re-initialises the embeddings (and a tied unembedding)."))
        summary = self._summary(methods, verdicts, best, comp_aopc, rand_comp, len(encs), n_min)
        if notes:
            summary += " " + " ".join(notes)
        status = "passed" if len(trusted) == len(methods) else "warned"
        return self.result(status=status, summary=summary, metrics=metrics,
                           headline=f"comprehensiveness[{best or methods[0]}]", tables=tables, figures=figures)

    def _summary(self, methods: list[str], verdicts: dict[str, str], best: str | None, comp_aopc: np.ndarray,
                 rand_comp: np.ndarray, n: int, n_min: int) -> str:
        flagged = [TITLES[m] for m in methods if verdicts[m].startswith("do not trust: survives")]
        if best is not None and verdicts[best] == "trust":
            summary = f"Trust {TITLES[best]} for this model: it removes the most of the decision "
            summary += f"(comprehensiveness {comp_aopc[:, methods.index(best)].mean():.3f} vs {rand_comp.mean():.3f} random)"
        elif best is not None:
            summary = (f"{TITLES[best]} is faithful by ERASER (comprehensiveness "
                       f"{comp_aopc[:, methods.index(best)].mean():.3f} vs {rand_comp.mean():.3f} random); the "
                       "randomisation check was not run")
        elif n < n_min:
            summary = "No verdict on any attribution method: too few examples to show one better than random"
        else:
            summary = "No attribution method passed both checks on this model"
        if flagged:
            summary += f"; {', '.join(flagged)} survive{'s' if len(flagged) == 1 else ''} model randomisation"
        return summary + f" ({n} examples; a verdict needs at least {n_min})."

    def _cascade(self, target: AuditTarget, explainer: Explainer, encs: list[Encoded], targets: list[Any],
                 attributions: dict[str, list[TokenAttribution]], context: AuditContext,
                 ) -> tuple[dict[str, list[float | None]], list[str], dict[str, list[float | None]]]:
        """Mean Spearman rho per stage and method, the stage names, and the permutation p-values at the checked stages."""
        n = min(self.randomization_examples, len(encs))
        if offloaded(target.model):
            return {}, [], {}  # said by randomisation_notes
        model = copy.deepcopy(target.model)
        model.eval()
        untie_output_embeddings_(model)
        stages = cascade_stages(model)
        if not stages:
            return {}, [], {}
        std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
        generator = torch.Generator().manual_seed(int(context.rng.integers(2**31)))
        copy_explainer = Explainer(model, explainer.tokenizer, explainer.kind, max_length=explainer.max_length,
                                   device=explainer.device, baselines=self.baselines, batch_size=explainer.batch_size)
        out: dict[str, list[float | None]] = {m: [] for m in attributions}
        p_out: dict[str, list[float | None]] = {m: [] for m in attributions}
        names = [name for name, _ in stages]
        checked = set(checked_stages(names))
        for k, (_, params) in enumerate(stages):
            randomize_(params, std=std, generator=generator)
            # n_steps is not raised here: only the rank order matters, and a randomised model's
            # output path is rough enough that raising it would multiply the cost of every stage.
            fresh = self._attribute(copy_explainer, encs[:n], targets[:n], raise_steps=False)
            for method, rows in fresh.items():
                pairs = [(attributions[method][i].scores[encs[i].content], r.scores[encs[i].content])
                         for i, r in enumerate(rows)]
                rhos = [rank_correlation(a, b) for a, b in pairs]
                finite = [r for r in rhos if math.isfinite(r)]
                mean = float(np.mean(finite)) if finite else None
                out[method].append(mean)
                p_out[method].append(rank_correlation_p_value(pairs, mean, rng=context.rng)
                                     if k in checked and mean is not None else None)
        del model
        return out, names, p_out

    def _figures(self, methods: list[str], comp: np.ndarray, suff: np.ndarray, pct: tuple[float, ...], n_m: int,
                 cascade: dict[str, list[float | None]], stage_names: list[str]) -> list[Figure]:
        labels = [f"{p:g}%" for p in pct]
        figures = []
        for measure, curves, better in (("comprehensiveness", comp, "higher"), ("sufficiency", suff, "lower")):
            series = {TITLES[m]: curves[:, j].mean(axis=0) for j, m in enumerate(methods)}
            series["random order"] = curves[:, n_m:].mean(axis=(0, 1))
            figures.append(Figure(
                title=f"ERASER {measure} by share of tokens",
                svg=_line_chart(labels, series, xlabel="top tokens removed" if measure == "comprehensiveness"
                                else "top tokens kept", ylabel=f"{measure} ({better} is better)",
                                dashed=("random order",)),
                caption="Mean over examples; dashed grey: tokens taken in a random order."))
        if cascade:
            series = {TITLES[m]: [1.0, *[np.nan if v is None else v for v in cascade[m]]] for m in methods}
            figures.append(Figure(
                title="Model randomisation cascade",
                svg=_line_chart(["trained", *stage_names], series, xlabel="re-initialised from the top down to",
                                ylabel="Spearman correlation with original", threshold=self.max_rank_correlation),
                caption="A faithful method's correlation drops towards 0 as the model is randomised; dotted lines: "
                        "the flagging threshold on |rho| (a reversed ranking, far below 0, survives too), read once "
                        "every layer is re-initialised."))
        return figures
