"""Are the attributions faithful to the model? ERASER removal curves and the model-randomisation check.

* ERASER (DeYoung et al. 2020): comprehensiveness ``p(y|x) - p(y|x without the top-k% tokens)``
  and sufficiency ``p(y|x) - p(y|only the top-k% tokens)``, averaged over k in {1, 5, 10, 20, 50}%
  (the area over the perturbation curve, AOPC), for each method and for tokens removed in a random
  order. A faithful method removes more of the decision than random removal does (higher
  comprehensiveness) and keeps more of it when only its top tokens remain (lower sufficiency).
* Model randomisation (Adebayo et al. 2018): re-initialise the model's weights from the top down
  (the head, then the last layer, ..., down to the first) in a copy of the model and measure the
  Spearman rank correlation of each method's attributions with the original ones. A method whose
  attributions survive randomisation describes the input more than the model, and is flagged.
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
from audit.errors import ConfigError
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
    "PERCENTAGES",
    "FaithfulnessProbe",
    "cascade_stages",
    "eraser_curves",
    "randomize_",
    "rank_correlation",
    "removal_order",
]

PERCENTAGES: tuple[float, ...] = (1, 5, 10, 20, 50)
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


def cascade_stages(model: Any) -> list[tuple[str, list[tuple[str, torch.nn.Parameter]]]]:
    """The cascade of Adebayo et al. (2018) from the top down: the head, then each layer, last first.

    The head is every parameter outside the layer stack and the embeddings (pooler, classifier,
    final normalisation). The embeddings are never randomised: they are the input representation
    the attributions are taken over. Parameters tied to the input embeddings (a tied unembedding)
    are left out for the same reason.
    """
    blocks = transformer_blocks(model)
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
        stages.append((f"layer {index + 1}", [(f"layer {index + 1}.{n}", p) for n, p in blocks[index].named_parameters()
                                             if p.data_ptr() not in tied]))
    return stages


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
        ax.axhline(threshold, color="#b4442c", linewidth=0.9, linestyle=":")
    ax.set_xticks(x)
    ax.set_xticklabels(x_labels, rotation=30 if len(x_labels) > 5 else 0, ha="right" if len(x_labels) > 5 else "center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return to_svg(fig)


class FaithfulnessProbe(Probe):
    """Which attribution method to trust for this model: ERASER removal curves and a randomisation check.

    For each method, comprehensiveness and sufficiency (DeYoung et al. 2020) are averaged over
    removing or keeping the top 1, 5, 10, 20 and 50% of tokens (AOPC) and compared, example by
    example, with removing tokens in a random order (``n_random`` orders): a one-sided paired
    permutation test, Holm-adjusted across the methods and the two measures, with bootstrap
    intervals. Then the model-randomisation cascade of Adebayo et al. (2018) re-initialises a copy
    of the model from the top down and reports the Spearman rank correlation of each method's
    |attributions| with the original ones; a method still correlated above ``max_rank_correlation``
    after the whole stack is randomised is flagged: its maps describe the input, not the model.
    A method is trusted when it beats random removal and does not survive randomisation. The
    cascade works on a deep copy of the model, so it needs memory for a second copy.

    Parameters
    ----------
    methods : sequence of {"integrated_gradients", "saliency", "input_x_gradient"}, default=all three
    examples : sequence of str or mapping, optional
        Texts to test on; by default a seeded sample of the data, else a short built-in list.
    max_examples : int, default=8
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
        A method whose mean Spearman correlation after full randomisation is at or above this is flagged.
    alpha : float, default=0.05
        Family-wise level for "better than random" after Holm-Bonferroni.
    n_boot : int, default=2000
    """

    name: ClassVar[str] = "faithfulness"
    category: ClassVar[str] = "transparency"
    kinds: ClassVar[frozenset[str]] = EXPLAINABLE_KINDS
    description: ClassVar[str] = "ERASER comprehensiveness/sufficiency vs random and the model-randomisation check"
    version: ClassVar[str] = "1"

    def __init__(
        self,
        *,
        methods: Sequence[str] = METHODS,
        examples: Sequence[Any] | None = None,
        max_examples: int = 8,
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
        if not 0 < alpha < 1 or not -1 <= max_rank_correlation <= 1:
            raise ConfigError(f"Probe 'faithfulness': alpha must be in (0, 1) and max_rank_correlation in [-1, 1], "
                              f"got {alpha!r}, {max_rank_correlation!r}.")

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

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
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
        _, comp, suff = eraser_curves(explainer, encs, targets, orders, pct)
        n_m = len(methods)
        comp_aopc, suff_aopc = comp.mean(axis=2), suff.mean(axis=2)  # (examples, orders)
        rand_comp, rand_suff = comp_aopc[:, n_m:].mean(axis=1), suff_aopc[:, n_m:].mean(axis=1)

        tests, p_values = [], []
        for j, method in enumerate(methods):
            for measure, gain in (("comprehensiveness", comp_aopc[:, j] - rand_comp),
                                  ("sufficiency", rand_suff - suff_aopc[:, j])):
                result = paired_permutation_test(gain, np.zeros_like(gain), rng=context.rng, alternative="greater")
                tests.append((method, measure))
                p_values.append(result.p_value)
        adjusted, reject = holm_bonferroni(p_values, alpha=self.alpha)
        holm = {key: (float(p), bool(r)) for key, p, r in zip(tests, adjusted, reject, strict=True)}

        cascade, stage_names = self._cascade(target, explainer, encs, targets, attributions, context) \
            if self.randomization else ({}, [])
        metrics: dict[str, Metric] = {}
        rows, verdicts = [], {}
        for j, method in enumerate(methods):
            c_gain = bootstrap_ci(comp_aopc[:, j] - rand_comp, rng=context.rng, n_resamples=self.n_boot)
            c_ci = bootstrap_ci(comp_aopc[:, j], rng=context.rng, n_resamples=self.n_boot)
            s_ci = bootstrap_ci(suff_aopc[:, j], rng=context.rng, n_resamples=self.n_boot)
            metrics[f"comprehensiveness[{method}]"] = Metric(
                value=c_ci.estimate, ci=c_ci.as_tuple(), ci_level=c_ci.level,
                p_value=holm[(method, "comprehensiveness")][0], direction="higher_is_better",
                description=f"ERASER comprehensiveness AOPC of {TITLES[method]} (p: better than random removal, "
                            "Holm-adjusted)")
            metrics[f"sufficiency[{method}]"] = Metric(
                value=s_ci.estimate, ci=s_ci.as_tuple(), ci_level=s_ci.level,
                p_value=holm[(method, "sufficiency")][0], direction="lower_is_better",
                description=f"ERASER sufficiency AOPC of {TITLES[method]} (p: better than random, Holm-adjusted)")
            final_rho = cascade[method][-1] if cascade else None
            survives = final_rho is not None and final_rho >= self.max_rank_correlation
            if cascade:
                metrics[f"randomized_rank_correlation[{method}]"] = Metric(
                    value=final_rho, threshold=self.max_rank_correlation, direction="lower_is_better",
                    note=None if final_rho is not None else "attributions of the randomised model were constant",
                    description=f"Spearman correlation of |{TITLES[method]}| with the original after every layer "
                                "and the head are re-initialised (Adebayo et al. 2018)")
            beats = holm[(method, "comprehensiveness")][1]
            if survives:
                verdict = "do not trust: survives model randomisation"
            elif not beats:
                verdict = "do not trust: no better than removing tokens at random"
            elif not cascade:
                verdict = "faithful by ERASER (randomisation check not run)"
            else:
                verdict = "trust"
            verdicts[method] = verdict
            rows.append([TITLES[method], float(comp_aopc[:, j].mean()), float(rand_comp.mean()),
                         f"{c_gain.estimate:+.3f} [{c_gain.low:+.3f}, {c_gain.high:+.3f}]",
                         holm[(method, "comprehensiveness")][0], float(suff_aopc[:, j].mean()), float(rand_suff.mean()),
                         holm[(method, "sufficiency")][0], final_rho, survives, verdict])
        for measure, values in (("comprehensiveness", rand_comp), ("sufficiency", rand_suff)):
            metrics[f"{measure}[random]"] = Metric(
                value=float(values.mean()), description=f"ERASER {measure} AOPC of random removal orders "
                                                        f"({self.n_random} per example)")
        trusted = [m for m in methods if verdicts[m] == "trust" or verdicts[m].startswith("faithful")]
        best = max(trusted, key=lambda m: comp_aopc[:, methods.index(m)].mean()) if trusted else None
        metrics["n_trusted_methods"] = Metric(value=float(len(trusted)), direction="higher_is_better",
                                              description=f"Methods that pass both checks, of {len(methods)}")
        tables = [Table(
            title="Which attribution method to trust",
            columns=["method", "comprehensiveness", "random", "gain over random [95% CI]", "p (Holm)", "sufficiency",
                     "random", "p (Holm)", "rank correlation after randomisation", "survives randomisation", "verdict"],
            rows=rows,
            caption=f"AOPC over the top {', '.join(f'{p:g}' for p in pct)}% of tokens, mean of {len(encs)} examples; "
                    "comprehensiveness: higher is better; sufficiency: lower is better. A method survives "
                    f"randomisation when its Spearman correlation stays at or above {self.max_rank_correlation:g}.")]
        figures = self._figures(methods, comp, suff, pct, n_m, cascade, stage_names)
        if cascade:
            tables.append(Table(title="Model randomisation cascade (Adebayo et al. 2018)",
                                columns=["randomised up to", *[TITLES[m] for m in methods]],
                                rows=[[stage, *[cascade[m][s] for m in methods]] for s, stage in enumerate(stage_names)],
                                caption=f"Mean Spearman correlation of |attribution| with the trained model's, over "
                                        f"{min(self.randomization_examples, len(encs))} examples; each row "
                                        "re-initialises one more part of a copy of the model, from the top down."))
        flagged = [TITLES[m] for m in methods if verdicts[m].startswith("do not trust: survives")]
        if best is not None:
            summary = f"Trust {TITLES[best]} for this model: it removes the most of the decision "
            summary += f"(comprehensiveness {comp_aopc[:, methods.index(best)].mean():.3f} vs {rand_comp.mean():.3f} random)"
        else:
            summary = "No attribution method passed both checks on this model"
        if flagged:
            summary += f"; {', '.join(flagged)} survive{'s' if len(flagged) == 1 else ''} model randomisation"
        summary += f" ({len(encs)} examples)."
        if notes:
            summary += " " + " ".join(notes)
        status = "passed" if len(trusted) == len(methods) else "warned"
        return self.result(status=status, summary=summary, metrics=metrics,
                           headline=f"comprehensiveness[{best or methods[0]}]", tables=tables, figures=figures)

    def _cascade(self, target: AuditTarget, explainer: Explainer, encs: list[Encoded], targets: list[Any],
                 attributions: dict[str, list[TokenAttribution]], context: AuditContext,
                 ) -> tuple[dict[str, list[float | None]], list[str]]:
        n = min(self.randomization_examples, len(encs))
        model = copy.deepcopy(target.model)
        model.eval()
        stages = cascade_stages(model)
        if not stages:
            return {}, []
        std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
        generator = torch.Generator().manual_seed(int(context.rng.integers(2**31)))
        copy_explainer = Explainer(model, explainer.tokenizer, explainer.kind, max_length=explainer.max_length,
                                   device=explainer.device, baselines=self.baselines, batch_size=explainer.batch_size)
        out: dict[str, list[float | None]] = {m: [] for m in attributions}
        names = []
        for name, params in stages:
            randomize_(params, std=std, generator=generator)
            names.append(name)
            # n_steps is not raised here: only the rank order matters, and a randomised model's
            # output path is rough enough that raising it would multiply the cost of every stage.
            fresh = self._attribute(copy_explainer, encs[:n], targets[:n], raise_steps=False)
            for method, rows in fresh.items():
                rhos = [rank_correlation(attributions[method][i].scores[encs[i].content], r.scores[encs[i].content])
                        for i, r in enumerate(rows)]
                finite = [r for r in rhos if math.isfinite(r)]
                out[method].append(float(np.mean(finite)) if finite else None)
        del model
        return out, names

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
                caption="A faithful method's correlation drops towards 0 as the model is randomised; dotted line: "
                        "the flagging threshold."))
        return figures
