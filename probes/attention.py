"""Attention maps per layer and head, head-averaged maps and attention rollout (Abnar and Zuidema 2020)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch

from audit.context import AuditContext
from audit.errors import ConfigError, DataError, NotApplicableError
from audit.figures import heatmap_grid as _heatmap_grid
from audit.probe import KINDS, Figure, Metric, Probe, ProbeResult, Table
from audit.seq2seq import encoder_of, is_encoder_decoder
from audit.target import AuditTarget
from probes.attribution import Encoded, collect_examples, encode, heat_colors, redact_for_display
from probes.display import data_masker

__all__ = ["AttentionProbe", "attention_maps", "attention_rollout", "eager_attention", "heatmap_grid"]


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Run ``model`` with the eager attention implementation, then restore the one it had.

    Fused kernels (SDPA, flash attention) never materialise the attention weights, so
    ``output_attentions=True`` returns nothing under them. Only the implementation switch changes;
    the weights are untouched and the outputs are the same up to floating-point rounding.
    """
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in (None, "eager"):
        yield
        return
    if not hasattr(model, "set_attn_implementation"):
        raise NotApplicableError(
            f"The model uses {current!r} attention, which returns no attention weights, and this transformers "
            "version cannot switch it to 'eager'. Upgrade transformers, or load the model with "
            "attn_implementation='eager'."
        )
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def attention_maps(model: Any, ids: Sequence[int], *, device: Any = "cpu") -> np.ndarray:
    """Attention weights of one token sequence: an array (layers, heads, tokens, tokens).

    Row ``i`` of each map is the distribution of query token ``i`` over the key tokens; it sums to 1.
    For an encoder-decoder (T5, BART) these are the encoder's self-attention weights (what the full
    model returns as ``encoder_attentions``): they depend on the text alone, the decoder's on its output too.
    """
    base = encoder_of(model) if is_encoder_decoder(model) else getattr(model, "base_model", model)
    input_ids = torch.as_tensor([list(ids)], dtype=torch.long, device=device)
    with eager_attention(model), torch.no_grad():
        out = base(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_attentions=True,
                   return_dict=True)
    layers = getattr(out, "attentions", None)
    if not layers or any(a is None for a in layers):
        raise NotApplicableError(
            f"{type(model).__name__} returned no attention weights with output_attentions=True. "
            "Use a transformer model that exposes them."
        )
    return np.stack([a[0].float().cpu().numpy() for a in layers])


def attention_rollout(attentions: np.ndarray, *, residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar and Zuidema 2020): how much each token's final representation
    draws on each input token, following attention through every layer.

    Per layer the heads are averaged; with ``residual`` the skip connection is modelled as
    ``0.5 * A + 0.5 * I`` and the rows renormalised; the layers are multiplied from the first
    up: ``R = A_L ... A_2 A_1``. Each row of ``R`` sums to 1.

    Parameters
    ----------
    attentions : array of shape (layers, heads, tokens, tokens)
    residual : bool, default=True

    Examples
    --------
    >>> import numpy as np
    >>> from probes.attention import attention_rollout
    >>> uniform = np.full((2, 1, 3, 3), 1 / 3)
    >>> np.allclose(attention_rollout(uniform).sum(-1), 1.0)
    True
    """
    n = attentions.shape[-1]
    eye = np.eye(n)
    rollout = eye.copy()
    for layer in attentions.astype(np.float64):
        a = layer.mean(axis=0)
        if residual:
            a = 0.5 * a + 0.5 * eye
        a = a / a.sum(axis=-1, keepdims=True)
        rollout = a @ rollout
    return rollout


def heatmap_grid(mats: Sequence[np.ndarray], titles: Sequence[str], *, tokens: Sequence[str] | None = None,
                 ncols: int = 4, panel: float = 2.6, suptitle: str = "") -> str:
    """Square heatmaps (rows: queries, columns: keys) in a grid on one colour scale, as an SVG string."""
    return _heatmap_grid(mats, titles, tokens=tokens, ncols=ncols, panel=panel, suptitle=suptitle,
                         label="attention weight")


def _entropy_stats(maps: np.ndarray, special: np.ndarray, causal: bool) -> dict[str, np.ndarray]:
    """Per layer: normalised entropy, shares on the first token, special tokens, itself, the previous token."""
    n_layers, _, n, _ = maps.shape
    keys = np.arange(1, n + 1) if causal else np.full(n, n)
    rows = keys > 1
    p = np.clip(maps, 1e-12, 1.0)
    entropy = -(maps * np.log(p)).sum(-1)
    norm = np.where(rows, np.log(np.maximum(keys, 2)), 1.0)
    idx = np.arange(n)
    prev = np.zeros((n_layers, maps.shape[1], n))
    prev[:, :, 1:] = maps[:, :, idx[1:], idx[1:] - 1]
    return {
        "entropy": (entropy / norm)[:, :, rows].mean(axis=(1, 2)),
        "first": maps[:, :, rows, 0].mean(axis=(1, 2)),
        "special": maps[:, :, :, special].sum(-1)[:, :, rows].mean(axis=(1, 2)) if special.any() else
        np.full(n_layers, np.nan),
        "self": maps[:, :, idx, idx][:, :, rows].mean(axis=(1, 2)),
        "previous": prev[:, :, 1:].mean(axis=(1, 2)) if n > 1 else np.zeros(n_layers),
    }


class AttentionProbe(Probe):
    """Where the model's attention goes: per-layer and per-head maps, head averages and rollout.

    For each example the card shows every head's attention map, the head-averaged map of every
    layer and the attention rollout of Abnar and Zuidema (2020), which follows attention through
    the layers (heads averaged, the residual connection added as ``0.5 A + 0.5 I``). The table
    gives, per layer, the normalised entropy of the attention rows (1 = uniform, 0 = one token) and
    the share of attention that goes to the first token, to special tokens, to the token itself and
    to the previous token. Attention is not explanation (Jain and Wallace 2019): read these maps as
    a description of the mechanism, and the attribution and faithfulness probes for why a decision
    was made.

    Parameters
    ----------
    examples : sequence of str, optional
        Texts to show; by default a seeded sample of the data, else a short built-in list.
    max_examples : int, default=3
    per_head_examples : int, default=1
        For this many of the examples (the first ones), also draw every head's map (layers x heads
        panels); the others get the head averages and the rollout only.
    residual : bool, default=True
        Model the residual connection in the rollout.
    max_tokens : int, default=48
        Heatmaps of longer texts show their first ``max_tokens`` tokens (the numbers use all of them).
    """

    name: ClassVar[str] = "attention"
    category: ClassVar[str] = "transparency"
    kinds: ClassVar[frozenset[str]] = frozenset(KINDS)
    description: ClassVar[str] = "Attention maps per layer and head, head averages and attention rollout"
    version: ClassVar[str] = "1"

    def __init__(self, *, examples: Sequence[Any] | None = None, max_examples: int = 3, per_head_examples: int = 1,
                 residual: bool = True, max_tokens: int = 48) -> None:
        self.examples = examples
        self.max_examples = max_examples
        self.per_head_examples = per_head_examples
        self.residual = residual
        self.max_tokens = max_tokens
        if isinstance(examples, str):
            raise ConfigError("Probe 'attention': examples must be a list of texts, got one string. Write examples: [\"...\"].")
        if max_examples < 1 or max_tokens < 2 or per_head_examples < 0:
            raise ConfigError(f"Probe 'attention': max_examples must be >= 1, max_tokens >= 2 and per_head_examples "
                              f">= 0, got {max_examples!r}, {max_tokens!r}, {per_head_examples!r}.")

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        examples, notes = collect_examples(probe=self.name, examples=self.examples, context=context,
                                           max_examples=self.max_examples)
        causal = target.kind == "causal-lm"
        seq2seq = target.kind == "seq2seq"
        if seq2seq:
            notes.append("Seq2seq model: the maps are the encoder's self-attention (encoder_attentions); the "
                         "decoder's self- and cross-attention depend on its output and are not shown.")
        target.tokenize([ex.text for ex in examples])  # counts truncated texts for the card's manifest
        encs: list[Encoded] = []
        for i, ex in enumerate(examples):
            enc = encode(target.tokenizer, ex.text, max_length=target.max_length, keep="end" if causal else "start")
            if not len(enc.content):
                received = "its text is not shown" if ex.private else f"received {ex.text[:60]!r}"
                raise DataError(f"Probe 'attention': example {i} ({ex.source}) has no tokens ({received}). "
                                "Remove it or give a text with at least one word.")
            encs.append(enc)
        per_layer: list[dict[str, np.ndarray]] = []
        figures, out_examples, top_rows = [], [], []
        masker = data_masker(context)
        if masker is not None:
            masker.prepare([ex.text for ex in examples if ex.private])
        n_layers = n_heads = 0
        for i, (enc, ex) in enumerate(zip(encs, examples, strict=True)):
            maps = attention_maps(target.model, enc.ids, device=target.device)
            n_layers, n_heads = maps.shape[0], maps.shape[1]
            special = np.asarray(enc.special, dtype=bool)
            per_layer.append(_entropy_stats(maps, special, causal))
            rollout = attention_rollout(maps, residual=self.residual)
            text, tokens = redact_for_display(enc, masker) if ex.private and masker is not None \
                else (enc.text, list(enc.tokens))
            # The representation a decision is read from: [CLS] (first) for encoders, the last token for causal LMs.
            source = len(enc) - 1 if causal else 0
            # A seq2seq decoder reads every encoder token (cross-attention), so no one row stands for it.
            flow = rollout.mean(axis=0) if seq2seq else rollout[source]
            from_token = "mean over encoder tokens" if seq2seq else tokens[source]
            content = enc.content
            ranked = content[np.argsort(-flow[content], kind="stable")][:5]
            top_rows.append([i + 1, ex.source, from_token,
                             ", ".join(f"{tokens[j]} ({flow[j]:.2f})" for j in ranked),
                             float(flow[special].sum()) if special.any() else None, enc.truncated])
            out_examples.append({
                "example": i + 1, "source": ex.source, "text": text, "tokens": tokens, "from_token": from_token,
                "rollout": [float(f"{v:.4g}") for v in flow], "rollout_colors": heat_colors(flow, signed=False),
                "truncated": enc.truncated,
            })
            shown = min(len(enc), self.max_tokens)
            crop = "" if shown == len(enc) else f" (first {shown} of {len(enc)} tokens shown)"
            averaged = [maps[layer].mean(0)[:shown, :shown] for layer in range(n_layers)]
            figures.append(Figure(
                title=f"Example {i + 1}: head-averaged attention per layer and rollout",
                svg=heatmap_grid([*averaged, rollout[:shown, :shown]],
                                 [f"layer {layer + 1}" for layer in range(n_layers)] + ["rollout"],
                                 tokens=tokens[:shown], ncols=min(4, n_layers + 1)),
                caption=f"Rows: attending (query) tokens; columns: attended (key) tokens{crop}. Rollout after "
                        f"Abnar and Zuidema (2020){' with the residual connection' if self.residual else ''}.",
            ))
            if i < self.per_head_examples:
                panels = [maps[layer, head][:shown, :shown] for layer in range(n_layers) for head in range(n_heads)]
                titles = [f"L{layer + 1} H{head + 1}" for layer in range(n_layers) for head in range(n_heads)]
                figures.append(Figure(
                    title=f"Example {i + 1}: every head (layers x heads)",
                    svg=heatmap_grid(panels, titles, tokens=tokens[:shown], ncols=min(n_heads, 12), panel=1.15),
                    caption=f"One panel per head, rows = layers; same orientation as above{crop}.",
                ))

        stats = {key: np.stack([s[key] for s in per_layer]) for key in per_layer[0]}
        stats = {key: (np.full(n_layers, np.nan) if np.isnan(v).all() else np.nanmean(v, axis=0))
                 for key, v in stats.items()}
        layer_rows = [[layer + 1, *(None if np.isnan(stats[k][layer]) else float(stats[k][layer])
                                    for k in ("entropy", "first", "special", "self", "previous"))]
                      for layer in range(n_layers)]
        metrics = {
            "mean_attention_entropy": Metric(
                value=float(np.mean(stats["entropy"])),
                description="Entropy of attention rows divided by its maximum, mean over layers, heads and tokens "
                            "(1 = attention spread evenly, 0 = on one token)"),
            "first_token_share": Metric(
                value=float(np.mean(stats["first"])),
                description="Share of attention that goes to the first token (an 'attention sink' when large)"),
        }
        if not np.all(np.isnan(stats["special"])):
            metrics["special_token_share"] = Metric(
                value=float(np.nanmean(stats["special"])),
                description="Share of attention that goes to special tokens such as [CLS] and [SEP]")
        truncated = sum(e.truncated for e in encs)
        if truncated:
            notes.append(f"{truncated} example(s) were longer than {target.max_length} tokens and were truncated.")
        sink = max(stats["first"]) if len(stats["first"]) else 0.0
        summary = (f"Attention of {len(encs)} example(s) over {n_layers} layers x {n_heads} heads: normalised entropy "
                   f"{metrics['mean_attention_entropy'].value:.2f}, {metrics['first_token_share'].value:.0%} of attention "
                   f"on the first token (up to {sink:.0%} in one layer).")
        if notes:
            summary += " " + " ".join(notes)
        return self.result(
            status="passed", summary=summary, metrics=metrics, headline="mean_attention_entropy",
            tables=[
                Table(title="Attention per layer", columns=[
                    "layer", "normalised entropy", "share on first token", "share on special tokens",
                    "share on itself", "share on previous token"], rows=layer_rows,
                      caption=f"Means over heads, attending tokens and the {len(encs)} example(s)."),
                Table(title="Attention rollout: input tokens that feed the summary token most", columns=[
                    "example", "source", "from token", "top input tokens (rollout weight)",
                    "rollout weight on special tokens", "truncated"], rows=top_rows,
                      caption="Rollout row of the token a decision is read from ([CLS] for encoders, the last "
                              "token for causal LMs; for seq2seq LMs the mean row over the encoder's tokens, "
                              "which the decoder all reads); weights over all input tokens sum to 1."),
            ],
            figures=figures, examples=out_examples,
        )
