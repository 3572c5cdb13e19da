"""How a decision forms through the layers: the model's own head applied to every layer's representation.

For a sequence classifier this gives the class probabilities the model would output if its stack
stopped at layer ``l``; for a causal LM it is the logit lens (nostalgebraist 2020): the next-token
distribution read from each layer through the final normalisation and the unembedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from audit.context import AuditContext
from audit.errors import ConfigError, DataError, NotApplicableError
from audit.families import shared_layers
from audit.figures import to_svg
from audit.heads import scores_from_logits
from audit.probe import Figure, Metric, Probe, ProbeResult, Table
from audit.target import AuditTarget
from probes.attribution import collect_examples, encode, redact_for_display, transformer_blocks
from probes.display import data_masker

__all__ = ["DecisionPathProbe", "decision_layer", "input_dependent_layers", "layer_logits", "layer_margins"]


def _replace_hidden(output: Any, hidden: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    output[0] = hidden  # a ModelOutput
    return output


def layer_logits(model: Any, ids: Sequence[int], *, device: Any = "cpu") -> np.ndarray:
    """The model's output logits read from every layer: an array (layers + 1, outputs).

    Row ``l`` is what the model outputs when layer ``l``'s hidden state (0 = embeddings) takes the
    place of the last block's output, so everything after the blocks (final normalisation, pooler,
    classifier or unembedding) is applied to it unchanged; the last row is the model's real output.
    A classifier gives its class logits; a causal LM the next-token logits at the last position.
    """
    blocks = transformer_blocks(model)
    if blocks is None:
        raise NotApplicableError(
            f"Could not find the layer stack of {type(model).__name__} (a ModuleList as long as "
            "config.num_hidden_layers), so its head cannot be applied per layer."
        )
    input_ids = torch.as_tensor([list(ids)], dtype=torch.long, device=device)
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
        n_layers = len(hidden) - 1
        final = out.logits[0, -1] if out.logits.dim() == 3 else out.logits[0]
        rows = [None] * n_layers
        if n_layers:
            stacked = torch.cat(list(hidden[:n_layers]), dim=0)
            handle = blocks[-1].register_forward_hook(lambda _m, _i, output: _replace_hidden(output, stacked))
            try:
                sub = model(input_ids=input_ids.expand(n_layers, -1), attention_mask=mask.expand(n_layers, -1),
                            return_dict=True).logits
            finally:
                handle.remove()
            rows = list(sub[:, -1] if sub.dim() == 3 else sub)
    return torch.stack([*rows, final]).float().cpu().numpy()


def input_dependent_layers(model: Any, ids: Sequence[int], reference: Sequence[int], *,
                           device: Any = "cpu") -> np.ndarray:
    """Per layer, whether its read-out changes when every content token changes.

    ``reference`` is ``ids`` with each content token replaced by another one. A layer whose
    logits are the same for both reads a state that does not depend on the input: for a
    BERT-style classifier, layer 0 (the embeddings) at the [CLS] position, which is
    ``LayerNorm(E[CLS] + P[0] + T[0])`` for every text. Such a layer can never be where a
    decision is made.
    """
    a = layer_logits(model, ids, device=device)
    b = layer_logits(model, reference, device=device)
    return ~np.all(np.isclose(a, b, rtol=1e-5, atol=1e-6), axis=-1)


def layer_margins(probs: np.ndarray) -> np.ndarray:
    """Per layer, the probability of the final prediction minus that of the strongest other output."""
    final = int(np.argmax(probs[-1]))
    others = np.delete(probs, final, axis=-1)
    return probs[:, final] - (others.max(axis=-1) if others.shape[-1] else 0.0)


def decision_layer(probs: np.ndarray, *, min_margin: float = 0.0,
                   informative: Sequence[bool] | None = None) -> int | None:
    """The first layer from which every later layer decides for the final prediction, or ``None``.

    A layer decides when the final prediction leads the strongest other output there by at least
    ``min_margin`` (in probability) and its read-out depends on the input (``informative``,
    see :func:`input_dependent_layers`). ``None`` when even the last layer does not decide: the
    model's output is too close to call.
    """
    probs = np.asarray(probs, dtype=float)
    final = int(np.argmax(probs[-1]))
    ok = (probs.argmax(axis=-1) == final) & (layer_margins(probs) >= min_margin)
    if informative is not None:
        ok &= np.asarray(informative, dtype=bool)
    if not ok[-1]:
        return None
    layer = len(ok) - 1
    while layer > 0 and ok[layer - 1]:
        layer -= 1
    return layer


def _reference_ids(ids: Sequence[int], special: Sequence[bool], tokenizer: Any) -> list[int]:
    """``ids`` with every content token replaced by another token (for :func:`input_dependent_layers`)."""
    candidates = [getattr(tokenizer, f"{n}_token_id", None) for n in ("unk", "pad", "mask", "eos", "bos")]
    pool = list(dict.fromkeys([c for c in candidates if isinstance(c, int)] + [0, 1]))
    return [i if s else next(c for c in pool if c != i) for i, s in zip(ids, special, strict=True)]


def _layer_scores(target: AuditTarget, ids: Sequence[int]) -> np.ndarray:
    """Each layer's read-out as the head's scores: softmax for a causal LM or a single-label head,
    each label's sigmoid for a multi-label head (through :func:`audit.heads.scores_from_logits`)."""
    logits = torch.as_tensor(layer_logits(target.model, ids, device=target.device))
    return scores_from_logits(logits, target.head or "single-label").numpy().astype(float)


def check_decision_path_applies(target: AuditTarget) -> None:
    """Refuse the heads and families where "the layer that decides" has no meaning, saying why."""
    if target.head == "score":
        raise NotApplicableError(
            f"{target.model_id!r} has a single-score head (num_labels=1): there is no choice between outputs for a "
            "layer to decide, so the decision path does not apply. Its score is audited by the other probes.")
    shared = shared_layers(target.model.config)
    if shared is not None:
        raise NotApplicableError(
            f"{target.model_id!r} shares {shared} set(s) of layer weights across its "
            f"{target.model.config.num_hidden_layers} layers (ALBERT): replacing one layer's output re-enters the "
            "same weights, so a per-layer read-out does not isolate a layer. The decision path does not apply.")


def line_chart(series: dict[str, Sequence[float]], *, xlabel: str, ylabel: str, marks: Sequence[str] | None = None,
               decided: int | None = None) -> str:
    """One line per series over the layers, as an SVG string; ``marks`` labels each layer's point."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    n = len(next(iter(series.values())))
    x = np.arange(n)
    for label, values in series.items():
        ax.plot(x, values, marker="o", markersize=3.5, linewidth=1.6, label=str(label)[:40])
    if marks is not None:
        for xi, text in zip(x, marks, strict=True):
            ax.annotate(str(text)[:14], (xi, 1.02), fontsize=6.5, rotation=45, ha="left", va="bottom",
                        xycoords=("data", "axes fraction"), annotation_clip=False)
    if decided is not None:
        ax.axvline(decided, color="#b4442c", linewidth=0.9, linestyle="--")
    ax.set_xticks(x)
    ax.set_xticklabels(["emb"] + [str(i) for i in range(1, n)])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return to_svg(fig)


class DecisionPathProbe(Probe):
    """How the decision forms through the layers.

    For a sequence classifier, each layer's hidden state is passed through what follows the layer
    stack (final normalisation, pooler, classifier) to give class probabilities per layer; for a
    causal LM, the logit lens (nostalgebraist 2020) reads the next-token distribution from each
    layer through the final normalisation and the unembedding. The decision layer of an example is
    the first layer from which every later layer decides for the final prediction: it leads the
    strongest other output by at least ``min_margin`` in probability, and the layer's read-out
    depends on the input (checked by replacing every content token: a BERT-style classifier's
    layer 0 reads [CLS] at the embeddings, the same state for every text, and never counts). An
    early decision layer means the deeper layers only confirm a decision made near the input; an
    example whose last layer itself has a margin below ``min_margin`` is undecided and left out
    of the depth statistics. One line chart per example.

    Parameters
    ----------
    examples : sequence of str, optional
        Texts to trace; by default a seeded sample of the data, else a short built-in list.
    max_examples : int, default=4
    top_k : int, default=5
        Next tokens listed per layer for a causal LM (classes drawn for a classifier with many).
    min_margin : float, default=0.1
        Lead in probability of the final prediction over the runner-up for a layer to count as deciding.
    """

    name: ClassVar[str] = "decision_path"
    category: ClassVar[str] = "transparency"
    kinds: ClassVar[frozenset[str]] = frozenset({"sequence-classification", "causal-lm"})
    description: ClassVar[str] = "Class probabilities per layer (classifiers) and the logit lens (causal LMs)"
    version: ClassVar[str] = "2"

    def __init__(self, *, examples: Sequence[Any] | None = None, max_examples: int = 4, top_k: int = 5,
                 min_margin: float = 0.1) -> None:
        self.examples = examples
        self.max_examples = max_examples
        self.top_k = top_k
        self.min_margin = min_margin
        if not 0 <= min_margin < 1:
            raise ConfigError(f"Probe 'decision_path': min_margin is a probability lead in [0, 1), got {min_margin!r}.")
        if isinstance(examples, str):
            raise ConfigError("Probe 'decision_path': examples must be a list of texts, got one string. "
                              "Write examples: [\"...\"].")
        if max_examples < 1 or top_k < 1:
            raise ConfigError(f"Probe 'decision_path': max_examples and top_k must be at least 1, got "
                              f"{max_examples!r}, {top_k!r}.")

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        check_decision_path_applies(target)
        examples, notes = collect_examples(probe=self.name, examples=self.examples, context=context,
                                           max_examples=self.max_examples)
        causal = target.kind == "causal-lm"
        labels = target.labels if not causal else []
        target.tokenize([ex.text for ex in examples])  # counts truncated texts for the card's manifest
        tables, figures, out_examples, depths, layers_at = [], [], [], [], []
        constant_layers: set[int] = set()
        n_layers = 0
        masker = data_masker(context)
        if masker is not None:
            masker.prepare([ex.text for ex in examples if ex.private])
        for i, ex in enumerate(examples):
            enc = encode(target.tokenizer, ex.text, max_length=target.max_length, keep="end" if causal else "start")
            if not len(enc.content):
                received = "its text is not shown" if ex.private else f"received {ex.text[:60]!r}"
                raise DataError(f"Probe 'decision_path': example {i} ({ex.source}) has no tokens ({received}). "
                                "Remove it or give a text with at least one word.")
            private = ex.private and masker is not None
            text = redact_for_display(enc, masker)[0] if private and masker is not None else enc.text
            # A predicted token may copy a word of a private row: mask the words it shares with the data.
            decode = (lambda ids: context.scrub(target.tokenizer.decode(ids))) if private else target.tokenizer.decode
            probs = _layer_scores(target, enc.ids)
            n_layers = probs.shape[0] - 1
            predicted = probs.argmax(-1).tolist()
            informative = input_dependent_layers(target.model, enc.ids,
                                                 _reference_ids(enc.ids, enc.special, target.tokenizer),
                                                 device=target.device)
            layer = decision_layer(probs, min_margin=self.min_margin, informative=informative)
            constant_layers.update(int(k) for k in np.flatnonzero(~informative))
            if layer is not None:
                depths.append(layer / max(n_layers, 1))
            layers_at.append(layer)
            final = predicted[-1]
            layer_names = ["embeddings"] + [f"layer {k}" for k in range(1, n_layers + 1)]
            if causal:
                rows = []
                for k in range(n_layers + 1):
                    top = np.argsort(-probs[k])[: self.top_k]
                    rows.append([layer_names[k], ", ".join(f"{decode([int(t)])!r} ({probs[k, t]:.2f})"
                                                           for t in top), float(probs[k, final])])
                final_name = decode([final])
                tables.append(Table(title=f"Example {i + 1}: logit lens", columns=[
                    "layer", f"top {self.top_k} next tokens (probability)", f"p({final_name!r}), the final top token"],
                    rows=rows, caption=f"{ex.source}: {text[:200]}"))
                final_top = np.argsort(-probs[-1])[:3]
                series = {repr(decode([int(t)])): probs[:, t] for t in final_top}
                marks = [decode([int(t)]) for t in predicted]
                ylabel = "next-token probability"
            else:
                names = [labels[c] if c < len(labels) else str(c) for c in range(probs.shape[1])]
                tables.append(Table(title=f"Example {i + 1}: class probabilities per layer", columns=[
                    "layer", *names[:20], "predicted"], rows=[[layer_names[k], *[float(p) for p in probs[k, :20]],
                                                               names[predicted[k]]] for k in range(n_layers + 1)],
                    caption=f"{ex.source}: {text[:200]}"))
                shown = np.argsort(-probs[-1])[: max(2, min(self.top_k, probs.shape[1]))]
                series = {names[c]: probs[:, c] for c in shown}
                marks = None
                final_name = names[final]
                ylabel = "class probability"
            figures.append(Figure(
                title=f"Example {i + 1}: decision path",
                svg=line_chart(series, xlabel="layer (emb = embeddings)", ylabel=ylabel, marks=marks, decided=layer),
                caption=f"{text[:120]}{'...' if len(text) > 120 else ''} "
                        + ("Undecided: no layer, not even the last, leads by the required margin"
                           if layer is None else "Dashed line: the decision layer")
                        + ("; labels on top: each layer's top token" if causal else "") + ".",
            ))
            out_examples.append({"example": i + 1, "source": ex.source, "text": text, "prediction": final_name,
                                 "probability": float(probs[-1, final]), "decision_layer": layer,
                                 "layers": n_layers, "truncated": enc.truncated})
        truncated = sum(e["truncated"] for e in out_examples)
        if truncated:
            notes.append(f"{truncated} example(s) were longer than {target.max_length} tokens and were truncated.")
        metrics, summary = self._metrics(layers_at, depths, n_layers, constant_layers, causal)
        if notes:
            summary += " " + " ".join(notes)
        summary_table = Table(title="Decision layer per example", columns=[
            "example", "source", "text", "prediction", "probability", "decision layer", "truncated"],
            rows=[[e["example"], e["source"], e["text"][:160], e["prediction"], e["probability"],
                   "undecided" if e["decision_layer"] is None else e["decision_layer"], e["truncated"]]
                  for e in out_examples],
            caption=f"Decision layer: the first layer from which every later layer predicts the final output with a "
                    f"lead of at least {self.min_margin:g} in probability over the runner-up (0 = the embeddings); a "
                    "layer whose read-out is the same for every input never counts; undecided: even the last "
                    "layer's lead is smaller.")
        return self.result(status="passed", summary=summary, metrics=metrics, headline="mean_decision_depth",
                           tables=[summary_table, *tables], figures=figures)

    def _metrics(self, layers_at: list[int | None], depths: list[float], n_layers: int, constant_layers: set[int],
                 causal: bool) -> tuple[dict[str, Metric], str]:
        decided = [layer for layer in layers_at if layer is not None]
        n, n_decided = len(layers_at), len(decided)
        why = f"no example's final prediction leads the runner-up by {self.min_margin:g} or more"
        metrics = {
            "mean_decision_depth": Metric(
                value=float(np.mean(depths)) if depths else None, note=None if depths else why,
                description=f"Decision layer / number of layers, mean over the {n_decided} decided examples "
                            "(0 = decided at the embeddings, 1 = only at the last layer)"),
            "decided_before_last_layer": Metric(
                value=float(np.mean([layer < n_layers for layer in decided])) if decided else None,
                note=None if decided else why,
                description=f"Share of the decided examples whose final prediction leads by {self.min_margin:g} "
                            "from some layer before the last one on"),
            "undecided_share": Metric(
                value=float(1 - n_decided / max(n, 1)),
                description=f"Share of examples whose final prediction leads the runner-up by less than "
                            f"{self.min_margin:g}: no decision layer"),
        }
        how = "logit lens" if causal else "classifier head on each layer"
        summary = f"Traced {n} example(s) through {n_layers} layers ({how}); "
        if decided:
            summary += (f"the final prediction is decided (lead of at least {self.min_margin:g}) at layer "
                        f"{round(float(np.mean(decided)), 1):g} of {n_layers} on average over {n_decided} decided example(s)")
        else:
            summary += f"no decision layer: {why}"
        if n_decided < n and decided:
            summary += f"; {n - n_decided} undecided"
        if constant_layers:
            names = ", ".join("the embeddings" if k == 0 else f"layer {k}" for k in sorted(constant_layers))
            summary += f"; {names} read the same state for every input and never count as deciding"
        return metrics, summary + "."
