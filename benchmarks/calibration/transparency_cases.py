"""Calibration cases of the transparency verdicts, on tiny BERT classifiers wired by hand.

The weights are set so that where the decision is made is known by construction:

* a block whose attention-output and feed-forward-output projections are zero passes its input
  through unchanged (each LayerNorm sees an already normalised vector), so the [CLS] state, and
  with it the head's read-out, only changes in the blocks left working;
* with every block's attention output zeroed, [CLS] never sees another token: the output does
  not depend on the text at all, so no attribution method can be faithful to it;
* a "keyword" model gives one word an embedding along a direction the head reads, and one block
  with uniform attention (query and key weights zero) averages the tokens into [CLS]: the keyword
  is the token that decides, by an amount set by its weight.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.context import AuditContext
from benchmarks.calibration.core import Case, Outcome

__all__ = ["build_classifier", "transparency_cases"]

_KEYWORD = "terrible"
_BASE_LOGIT = float(np.log(0.25))
_FILLER = ["the", "a", "movie", "film", "food", "was", "very", "really", "it", "this", "that", "people", "office",
           "home", "family", "science", "art", "poetry", "we", "talked", "about"]


def build_classifier(seed: int, *, n_layers: int, working: Sequence[int], head_scale: float = 1.0,
                     keyword_weight: float | None = None, keyword: str = _KEYWORD) -> Any:
    """A tiny BERT classifier (hidden 32) saved and loaded as an AuditTarget; only the blocks in
    ``working`` (1-based) change the hidden state. With ``keyword_weight``, the keyword model."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from audit import load_target
    from tests.tiny import save_bert_tokenizer, word_vocab

    torch.manual_seed(seed % 2**31)
    directory = Path(tempfile.mkdtemp(prefix="rai-calibration-bert-"))
    save_bert_tokenizer(directory)
    config = BertConfig(vocab_size=len(word_vocab()), hidden_size=32, num_hidden_layers=n_layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        for index, block in enumerate(model.bert.encoder.layer, start=1):
            if index not in working:
                for linear in (block.attention.output.dense, block.output.dense):
                    linear.weight.zero_()
                    linear.bias.zero_()
        if keyword_weight is not None:
            _wire_keyword(model, keyword_weight, head_scale, keyword)
        else:
            model.classifier.weight.mul_(head_scale)
    model.save_pretrained(directory, safe_serialization=True)
    return load_target(directory, progress=False, device="cpu")


def _wire_keyword(model: Any, weight: float, head_scale: float, keyword: str) -> None:
    import torch

    from tests.tiny import word_vocab

    hidden = model.config.hidden_size
    direction = torch.zeros(hidden)
    direction[0] = 1.0
    emb = model.bert.embeddings
    # Word vectors of unit scale whose other dimensions sum to zero, so each LayerNorm is close to
    # linear in the keyword's weight; only the keyword carries the read direction (dimension 0).
    words = emb.word_embeddings.weight
    words[:, 1:] = torch.randn_like(words[:, 1:])
    words[:, 1:] -= words[:, 1:].mean(dim=1, keepdim=True)
    for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
        table.weight[:, 0] = 0.0
    words[word_vocab().index(keyword), 0] = weight
    first = model.bert.encoder.layer[0]
    first.attention.self.query.weight.zero_()
    first.attention.self.key.weight.zero_()
    first.attention.self.query.bias.zero_()
    first.attention.self.key.bias.zero_()  # uniform attention: [CLS] gets the mean of the tokens
    first.attention.self.value.weight.copy_(torch.eye(hidden))
    first.attention.self.value.bias.zero_()
    first.attention.output.dense.weight.copy_(torch.eye(hidden))
    first.attention.output.dense.bias.zero_()
    first.output.dense.weight.zero_()
    first.output.dense.bias.zero_()
    model.bert.pooler.dense.weight.copy_(torch.eye(hidden))
    model.bert.pooler.dense.bias.zero_()
    model.classifier.weight.zero_()
    model.classifier.bias.zero_()
    model.classifier.weight[1, 0] = head_scale
    model.classifier.weight[0, 0] = -head_scale
    model.classifier.bias[1] = _BASE_LOGIT  # without the keyword, p(positive) is about 0.2


def _texts(rng: np.random.Generator, n: int, *, keyword: bool) -> list[str]:
    out = []
    for _ in range(n):
        words = list(rng.choice(_FILLER, size=int(rng.integers(6, 11))))
        if keyword:
            words.insert(int(rng.integers(len(words) + 1)), _KEYWORD)
        out.append(" ".join(words))
    return out


# -- decision path ------------------------------------------------------------------------------
def _decision_layers(result: Any) -> list[int]:
    """The decision layer of each decided example, from the probe's per-example table."""
    for table in result.tables:
        if table.title.startswith("Decision layer per example") and "decision layer" in table.columns:
            col = table.columns.index("decision layer")
            return [int(row[col]) for row in table.rows if isinstance(row[col], (int, float))]
    return []


def _decision_path_case() -> Case:
    n_layers, null_scale = 3, 64.0

    def run(seed: int, effect: float) -> Outcome:
        from probes.decision_path import DecisionPathProbe

        planted = effect > 0
        target = build_classifier(seed, n_layers=n_layers, working=(1,) if planted else (n_layers,),
                                  head_scale=effect if planted else null_scale)
        rng = np.random.default_rng(seed)
        result = DecisionPathProbe(examples=_texts(rng, 4, keyword=False)).run(
            target, AuditContext(seed=seed).for_probe("decision_path"))
        share = result.metrics.get("decided_before_last_layer")
        claimed = bool(share is not None and share.value is not None and share.value > 0)
        decided = _decision_layers(result)
        located = None if not decided else all(layer == (1 if planted else n_layers) for layer in decided)
        return Outcome(status=result.status, alarm=claimed, covered={"decision layer located": located},
                       truth=1.0 if planted else float(n_layers))

    return Case(
        probe="decision_path", verdict="claim: decided before the last layer",
        description=(f"Tiny BERT classifiers with {n_layers} blocks and random weights, in which only one block "
                     "changes the hidden state (the others' output projections are zero, so they pass it through): "
                     f"the null has only the last block working (head weights x{null_scale:g}), so nothing can "
                     "decide earlier (layer 0 reads [CLS], the same for every text); planted: only block 1 works, "
                     "so the decision is made at layer 1 and merely carried to the top. 4 random texts per run."),
        effect_unit="scale of the classifier head's weights (a larger scale gives larger margins)",
        effects={"null": 0.0, "small": 16.0, "medium": 64.0, "large": 256.0},
        run=run, alarm_means="decided_before_last_layer > 0 (some example decided before the last layer)",
        interval="not an interval: the share of runs in which every decided example's decision layer is the true one",
        settings={"probe params": "examples (4 random texts), otherwise defaults (min_margin=0.1)"},
        max_null_runs=60,
    )


# -- faithfulness ---------------------------------------------------------------------------------
_HEAD = 8.0


def _verdicts(result: Any) -> dict[str, str]:
    """Method -> verdict, from the probe's "which method to trust" table."""
    for table in result.tables:
        if "verdict" in table.columns and "method" in table.columns:
            m, v = table.columns.index("method"), table.columns.index("verdict")
            return {str(row[m]): str(row[v]) for row in table.rows}
    return {}


def _faithfulness_case() -> Case:
    def run(seed: int, effect: float) -> Outcome:
        from probes.faithfulness import FaithfulnessProbe

        rng = np.random.default_rng(seed)
        if effect > 0:
            target = build_classifier(seed, n_layers=2, working=(1,), keyword_weight=effect, head_scale=_HEAD)
        else:
            target = build_classifier(seed, n_layers=2, working=(), head_scale=_HEAD)  # content-blind
        texts = _texts(rng, 8, keyword=True)
        # The truth on the probe's scale: how much the keyword moves p(positive), text by text.
        without = [t.replace(_KEYWORD, "movie") for t in texts]
        truth = float(np.mean(target.predict_proba(texts)[:, 1] - target.predict_proba(without)[:, 1]))
        result = FaithfulnessProbe(examples=texts).run(target, AuditContext(seed=seed).for_probe("faithfulness"))
        trusted = result.metrics.get("n_trusted_methods")
        n_trusted = 0 if trusted is None or trusted.value is None else int(trusted.value)
        flags = {f"trusted: {method}": verdict == "trust" for method, verdict in _verdicts(result).items()}
        return Outcome(status=result.status, alarm=n_trusted > 0, truth=truth, flags=flags)

    return Case(
        probe="faithfulness", verdict="trust (any method)",
        description=("Tiny BERT classifiers wired by hand (2 blocks). Null: every block's attention output is zero, "
                     "so [CLS] never sees another token and the output does not depend on the text: no attribution "
                     "can be faithful, and any 'trust' is a false alarm. Planted: the keyword model, in which one "
                     f"word ('{_KEYWORD}') carries an embedding along the direction the head reads and a uniform-"
                     "attention block averages it into [CLS]; the keyword decides, by an amount set by its weight. "
                     "8 random texts per run, each with the keyword at a random position."),
        effect_unit=("the keyword's embedding weight along the read direction (truth: mean change in p(positive) "
                     "when the keyword is replaced; without it p is about 0.2)"),
        effects={"null": 0.0, "small": 2.0, "medium": 4.0, "large": 10.0},
        run=run, alarm_means="n_trusted_methods > 0 (some method trusted)",
        interval="none",
        settings={"probe params": "examples (8 random texts with the keyword), otherwise defaults"},
        max_null_runs=60,
    )


# -- attribution: is the share on demographic terms a finding? -------------------------------------
#: Demographic terms of the built-in list that the tiny tokenizer knows as single words.
_TERMS = ["he", "she", "him", "her", "man", "woman", "boy", "girl", "father", "mother", "son", "daughter",
          "brother", "sister", "uncle", "aunt", "black", "white", "asian", "christian", "muslim", "jewish"]


def _attribution_case() -> Case:
    def run(seed: int, effect: float) -> Outcome:
        from probes.attribution import AttributionProbe

        rng = np.random.default_rng(seed)
        terms = list(rng.permutation(_TERMS)[:8])
        if effect > 0:  # planted: one demographic term is the keyword that decides
            keyword = terms[0]
            target = build_classifier(seed, n_layers=2, working=(1,), keyword_weight=effect, head_scale=_HEAD,
                                      keyword=keyword)
            texts = [_with_word(rng, keyword) for _ in range(8)]
        else:  # null: the keyword is not demographic; the terms are ordinary words to the model
            target = build_classifier(seed, n_layers=2, working=(1,), keyword_weight=4.0, head_scale=_HEAD)
            texts = [_with_word(rng, term, also=_KEYWORD) for term in terms]
        probe = AttributionProbe(methods=["integrated_gradients"], examples=texts, use_counterfactual=False)
        result = probe.run(target, AuditContext(seed=seed).for_probe("attribution"))
        excess = result.metrics.get("demographic_share_excess[integrated_gradients]")
        finding = bool(excess is not None and excess.value is not None and excess.p_value is not None
                       and excess.p_value <= probe.alpha and excess.note is None)
        return Outcome(status=result.status, alarm=finding, flags={"status warned": result.status == "warned"})

    return Case(
        probe="attribution", verdict="finding: demographic terms get more attribution than position explains",
        description=("The keyword classifiers of the faithfulness case (tiny BERT wired by hand). Null: the keyword "
                     f"is '{_KEYWORD}', and each of 8 texts holds one demographic term (a different one per text) at a "
                     "random position among random filler words: to the model the terms are words like any other "
                     "(their embeddings are drawn like every other word's), so a finding is a false alarm. "
                     "Planted: the keyword that decides is itself a demographic term, in every text."),
        effect_unit="the demographic keyword's embedding weight along the read direction",
        effects={"null": 0.0, "small": 2.0, "medium": 4.0, "large": 10.0},
        run=run, alarm_means="demographic_share_excess p <= alpha with enough examples (the probe's 'finding')",
        interval="none",
        settings={"probe params": "methods=['integrated_gradients'], 8 configured examples, use_counterfactual=False, "
                                  "otherwise defaults (position_controls=3, alpha=0.05)"},
        max_null_runs=200,
    )


def wide_vocab_causal_lm(seed: int, *, n_words: int = 1500) -> Any:
    """A fresh random tiny GPT-2 (hidden 32, 2 layers) whose byte-level BPE knows about 1,500 whole words.

    The tests' tiny GPT-2 knows 56 whole words, so position-matched controls of different
    examples keep drawing the same few replacements and are not independent, as the rank test
    assumes (and as they are with a real vocabulary: GPT-2 has tens of thousands of whole-word
    tokens). The words are the bundled MiniLM's whole-word WordPiece entries after the 2,000 most
    frequent, plus the tests' corpus (which holds the demographic terms).
    """
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from audit import load_target
    from audit.target import default_model_path
    from tests.tiny import CORPUS

    entries = (Path(default_model_path()) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = list(dict.fromkeys([*CORPUS, *[w for w in entries[2000:] if w.isalpha() and w.isascii()
                                           and len(w) >= 3][:n_words]]))
    text = " ".join(words)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text, text.capitalize()], vocab_size=2 * len(words) + 300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    directory = Path(tempfile.mkdtemp(prefix="rai-calibration-wide-lm-"))
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(directory)
    torch.manual_seed(seed % 2**31)
    config = GPT2Config(vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).eval().save_pretrained(directory, safe_serialization=True)
    return load_target(directory, progress=False, device="cpu")


def _position_case() -> Case:
    def run(seed: int, effect: float) -> Outcome:
        from probes.attribution import AttributionProbe

        rng = np.random.default_rng(seed)
        terms = list(rng.permutation(_TERMS)[:8])
        # Each prompt ends with a demographic term, where a causal LM's attribution piles up by position alone.
        texts = [" ".join([*rng.choice(_FILLER, size=int(rng.integers(5, 9))), term]) for term in terms]
        probe = AttributionProbe(methods=["integrated_gradients"], examples=texts, use_counterfactual=False)
        result = probe.run(wide_vocab_causal_lm(seed), AuditContext(seed=seed).for_probe("attribution"))
        excess = result.metrics.get("demographic_share_excess[integrated_gradients]")
        share = result.metrics.get("demographic_share[integrated_gradients]")
        finding = bool(excess is not None and excess.value is not None and excess.p_value is not None
                       and excess.p_value <= probe.alpha and excess.note is None)
        return Outcome(status=result.status, alarm=finding,
                       flags={"raw share above 0.5": bool(share and share.value is not None and share.value > 0.5)})

    return Case(
        probe="attribution", verdict="finding on a random causal LM, terms at the end of the prompt (null only)",
        description=("A fresh random tiny GPT-2 per run (it knows nothing of demographic terms) with a vocabulary of "
                     "about 1,500 whole words (the tests' tiny GPT-2 has 56, too few for independent controls); "
                     "8 prompts of random "
                     "filler words, each ending with a different demographic term, where attribution piles up by "
                     "position alone. Any finding is a false alarm; the flag shows how often the raw share, "
                     "uncontrolled for position, exceeds one half."),
        effect_unit="none (null only)", effects={"null": 0.0}, run=run,
        alarm_means="demographic_share_excess p <= alpha with enough examples (the probe's 'finding')",
        interval="none",
        settings={"probe params": "methods=['integrated_gradients'], 8 configured examples, use_counterfactual=False"},
        max_null_runs=200,
    )


def _with_word(rng: np.random.Generator, word: str, also: str | None = None) -> str:
    words = list(rng.choice(_FILLER, size=int(rng.integers(6, 11))))
    for extra in (word, also):
        if extra is not None:
            words.insert(int(rng.integers(len(words) + 1)), extra)
    return " ".join(words)


def transparency_cases() -> list[Case]:
    return [_attribution_case(), _position_case(), _decision_path_case(), _faithfulness_case()]
