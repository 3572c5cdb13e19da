"""Any Hugging Face text model: the architecture matrix (tiny random models of many families, every probe),
classifier heads read right (multi-label sigmoid, single scores, decoder classifiers without a pad token),
non-text models refused, PEFT adapters, ALBERT's shared layers, Gemma 3 text use, chat templates and
models split across devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from audit import AuditConfig, Auditor, load_target
from audit.errors import ModelLoadError, NotApplicableError
from tests.tiny_families import CASES, NON_TEXT, build, build_lora_adapter

REPO = Path(__file__).resolve().parents[1]

#: Cheap settings, so that every probe runs on ~30 models within a few minutes on two cores.
CHEAP = {
    "seat": {"tests": ["weat6"], "n_samples": 100, "n_boot": 50},
    "counterfactual": {"axes": ["gender"], "n_boot": 50, "n_resamples": 200, "max_texts": 16},
    "attribution": {"methods": ["integrated_gradients", "saliency"], "max_examples": 1, "max_pairs": 1,
                    "n_steps": 4, "max_n_steps": 4},
    "faithfulness": {"methods": ["saliency"], "max_examples": 2, "n_random": 1, "percentages": [10, 50],
                     "randomization_examples": 1, "n_boot": 50},
    "decision_path": {"max_examples": 1},
    "attention": {"max_examples": 1, "max_tokens": 16},
    "generation": {"max_prompts_per_group": 2, "max_new_tokens": 2, "n_boot": 50, "n_resamples": 100},
    "pii_generation": {"max_new_tokens": 2, "engine": "pattern"},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("families")


def _model(models: Path, name: str) -> Path:
    path = models / name
    return path if (path / "config.json").is_file() else build(name, path)


def _cheap_config(name: str) -> AuditConfig:
    probes = {probe: {"params": dict(params)} for probe, params in CHEAP.items()}
    if name == "roberta-multilabel":  # three independent labels: the favourable one must be named
        probes["counterfactual"]["params"]["positive_label"] = "toxic"
    return AuditConfig.model_validate({"probes": probes})


def _check_every_probe(results) -> None:
    errored = {r.probe: r.error.message if r.error else r.summary for r in results.results if r.status == "errored"}
    assert not errored, errored
    for r in results.results:
        assert r.summary.strip(), f"{r.probe} is {r.status} without saying why"


# -- the matrix ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_architecture_matrix(models, name):
    path = _model(models, name)
    target = load_target(path, progress=False, device="cpu")
    assert target.kind == CASES[name].kind
    _check_every_probe(Auditor(_cheap_config(name)).run(target))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "bart"])
def test_seq2seq_in_the_matrix(models, family):
    from tests.tiny import make_tiny_seq2seq

    target = load_target(make_tiny_seq2seq(family, models / family), progress=False, device="cpu")
    assert target.kind == "seq2seq"
    _check_every_probe(Auditor(_cheap_config(family)).run(target))


@pytest.mark.slow
def test_lora_adapter_in_the_matrix(models):
    adapter = build_lora_adapter(_model(models, "gpt2"), models / "gpt2-lora")
    target = load_target(adapter, progress=False, device="cpu")
    assert target.kind == "causal-lm"
    results = Auditor(_cheap_config("gpt2-lora")).run(target)
    _check_every_probe(results)
    assert results.manifest.loading["adapter"]["base_fingerprint"] == load_target(
        models / "gpt2", progress=False, device="cpu").fingerprint


# -- classifier heads ----------------------------------------------------------------------
def _logits(target, texts):
    batch = target.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return target.model(**batch).logits.float()


def test_multi_label_head_uses_sigmoid_not_softmax(models):
    target = load_target(_model(models, "roberta-multilabel"), progress=False, device="cpu")
    assert target.head == "multi-label"
    text = "she is a nurse"
    expected = 1 / (1 + np.exp(-_logits(target, [text]).numpy()))
    got = target.predict_proba([text])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.isclose(got.sum(), 1.0)  # independent labels: a softmax would sum to 1


def test_multi_label_attribution_explains_the_sigmoid(models):
    from probes.attribution import Explainer

    target = load_target(_model(models, "roberta-multilabel"), progress=False, device="cpu")
    explainer = Explainer.for_target(target)
    enc = explainer.encode("he is a doctor")
    f_x = explainer.output([enc.ids], [1])[0]
    assert f_x == pytest.approx(float(torch.sigmoid(_logits(target, ["he is a doctor"])[0, 1])), rel=1e-5)


def test_multi_label_counterfactual_asks_which_label_and_uses_its_sigmoid(models):
    from audit.errors import ConfigError
    from probes.counterfactual import CounterfactualProbe, resolve_positive_label

    target = load_target(_model(models, "roberta-multilabel"), progress=False, device="cpu")
    with pytest.raises(ConfigError, match="multi-label head whose 3 labels"):
        resolve_positive_label(target, None, "counterfactual")
    result = Auditor(probes=[CounterfactualProbe(positive_label="insult", **CHEAP["counterfactual"])]).run(
        target).result("counterfactual")
    assert result.status != "errored", result.error
    scores = target.predict_scores(["he is a doctor", "she is a doctor"])[:, 1]
    np.testing.assert_allclose(scores, torch.sigmoid(_logits(target, ["he is a doctor", "she is a doctor"])[:, 1]),
                               rtol=1e-5)


def test_single_score_head_is_audited_as_a_score(models):
    from probes.attribution import Explainer

    target = load_target(_model(models, "bert-single-logit"), progress=False, device="cpu")
    assert target.head == "score"
    text = "the man is a nurse"
    raw = float(_logits(target, [text])[0, 0])
    assert target.predict_scores([text])[0, 0] == pytest.approx(raw, rel=1e-5)
    with pytest.raises(NotApplicableError, match="single-score head"):
        target.predict_proba([text])
    explainer = Explainer.for_target(target)
    enc = explainer.encode(text)
    for method in ("saliency", "input_x_gradient", "integrated_gradients"):
        scores = explainer.attribute([enc], [0], method, n_steps=16)[0].scores
        # A softmax over one logit is 1.0 whatever the input: every attribution would be exactly 0.
        assert np.abs(scores[enc.content]).max() > 1e-6, method
    assert explainer.output([enc.ids], [0])[0] == pytest.approx(raw, rel=1e-5)


def test_single_score_counterfactual_headline_is_the_score_gap(models):
    from probes.counterfactual import CounterfactualProbe

    target = load_target(_model(models, "bert-single-logit"), progress=False, device="cpu")
    result = Auditor(probes=[CounterfactualProbe(**CHEAP["counterfactual"])]).run(target).result("counterfactual")
    assert result.status != "errored", result.error
    assert result.headline == "max_score_gap"
    gaps = [m.value for k, m in result.metrics.items() if k.startswith("max_score_gap[")]
    assert result.metrics["max_score_gap"].value == pytest.approx(max(gaps)) and max(gaps) > 0


def test_decoder_classifier_without_pad_token_batches(models):
    target = load_target(_model(models, "gpt2-classifier"), progress=False, device="cpu")
    assert target.model.config.pad_token_id == target.tokenizer.eos_token_id
    texts = ["she is here", "the man is a very good doctor", "he"]
    batched = target.predict_proba(texts)
    for text, row in zip(texts, batched, strict=True):
        one = torch.softmax(_logits(target, [text])[0], dim=-1).numpy()  # a single text needs no padding
        np.testing.assert_allclose(row, one, rtol=1e-4, atol=1e-5)


# -- refused models ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NON_TEXT))
def test_non_text_models_are_refused_in_one_line(tmp_path, name):
    import transformers

    config_name, settings = NON_TEXT[name]
    getattr(transformers, config_name)(**settings).save_pretrained(tmp_path / name)
    with pytest.raises(ModelLoadError, match="is not a text model rai-audit can audit: found model type"):
        load_target(tmp_path / name, progress=False)
    proc = subprocess.run([sys.executable, "-m", "audit.cli", "run", "--model", str(tmp_path / name), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"'{name}'" in lines[0] and "rai-audit audits text models" in lines[0], proc.stderr


# -- adapters ------------------------------------------------------------------------------
def test_lora_adapter_loads_on_its_base_and_matches_peft(models, tmp_path):
    import peft
    import transformers

    base_dir = _model(models, "gpt2")
    adapter = build_lora_adapter(base_dir, tmp_path / "adapter")
    target = load_target(adapter, progress=False, device="cpu")
    base = load_target(base_dir, progress=False, device="cpu")
    reference = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base_dir),
                                               str(adapter)).eval()
    text_ids = base.tokenizer("the man is a nurse")["input_ids"]
    ids = torch.tensor([[base.tokenizer.bos_token_id, *text_ids]])  # the target scores every token after a BOS
    with torch.no_grad():
        logp = torch.log_softmax(reference(input_ids=ids).logits[0, :-1], dim=-1)
    expected = float(logp.gather(-1, ids[0, 1:, None]).sum())
    assert target.log_likelihood(["the man is a nurse"])[0] == pytest.approx(expected, rel=1e-4)
    assert base.log_likelihood(["the man is a nurse"])[0] != pytest.approx(expected, rel=1e-4)
    assert target.fingerprint != base.fingerprint
    assert target.adapter["base_fingerprint"] == base.fingerprint
    assert target.fingerprint_parts["base"] == base.fingerprint and "adapter_weights" in target.fingerprint_parts


def test_adapter_fingerprint_changes_with_the_adapter_weights(models, tmp_path):
    base_dir = _model(models, "gpt2")
    one = load_target(build_lora_adapter(base_dir, tmp_path / "a", seed=1), progress=False, device="cpu")
    two = load_target(build_lora_adapter(base_dir, tmp_path / "b", seed=2), progress=False, device="cpu")
    assert one.fingerprint != two.fingerprint
    assert one.adapter["base_fingerprint"] == two.adapter["base_fingerprint"]


def test_adapter_base_model_override_and_missing_base(models, tmp_path):
    base_dir = _model(models, "gpt2")
    adapter = build_lora_adapter(base_dir, tmp_path / "adapter")
    meta = json.loads((adapter / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = "nobody/not-on-this-machine"
    (adapter / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="Pass --base-model PATH"):
        load_target(adapter, progress=False)
    target = load_target(adapter, base_model=base_dir, progress=False, device="cpu")
    assert target.adapter["base_path"] == str(base_dir.resolve())


# -- families ------------------------------------------------------------------------------
def test_albert_decision_path_says_why_and_faithfulness_keeps_its_randomisation(models):
    from probes.decision_path import DecisionPathProbe
    from probes.faithfulness import FaithfulnessProbe

    target = load_target(_model(models, "albert-classifier"), progress=False, device="cpu")
    results = Auditor(probes=[DecisionPathProbe(max_examples=1), FaithfulnessProbe(**CHEAP["faithfulness"])]).run(
        target)
    path = results.result("decision_path")
    assert path.status == "not_applicable" and "shares 1 set(s) of layer weights" in path.summary
    faith = results.result("faithfulness")
    assert faith.status != "errored", faith.error
    assert any(k.startswith("randomized_rank_correlation[") for k in faith.metrics), faith.summary
    assert "share 1 weight set(s) (ALBERT)" in faith.summary


def test_gemma3_conditional_generation_is_audited_as_a_causal_lm(models):
    target = load_target(_model(models, "gemma3"), progress=False, device="cpu")
    assert target.kind == "causal-lm" and target.num_layers == 2
    assert np.isfinite(target.log_likelihood(["she is a nurse"])).all()


def test_undecodable_tokens_do_not_stop_attribution(models):
    from probes.attribution import Explainer

    target = load_target(_model(models, "gpt2"), progress=False, device="cpu")
    explainer = Explainer.for_target(target)
    for text in ["我是一个护士", "the nurse said \u00e9"]:  # byte-level BPE: partial UTF-8 bytes
        enc = explainer.encode(text, reserve=2)
        continuation = list(explainer.predict([enc])[0])
        for method in ("integrated_gradients", "saliency"):
            scores = explainer.attribute([enc], [continuation], method, n_steps=4)[0].scores
            assert np.isfinite(scores).all()


def test_cjk_and_byte_fragment_examples_run_through_attribution_and_faithfulness(models):
    from probes.attribution import AttributionProbe
    from probes.faithfulness import FaithfulnessProbe

    target = load_target(_model(models, "gpt2"), progress=False, device="cpu")
    examples = ["我是一个护士", "the nurse said \u00e9\u00e9", "she is a doctor"]
    attribution = {**CHEAP["attribution"], "max_examples": 3, "use_counterfactual": False}
    results = Auditor(probes=[AttributionProbe(examples=examples, **attribution),
                              FaithfulnessProbe(examples=examples, **{**CHEAP["faithfulness"], "max_examples": 3})]
                      ).run(target)
    _check_every_probe(results)


# -- instruction models ----------------------------------------------------------------------
def test_generation_applies_the_chat_template_and_records_it(models):
    target = load_target(_model(models, "llama-chat"), progress=False, device="cpu")
    prompt = "the nurse said"
    got = target.generate([prompt], max_new_tokens=4)
    assert target.loading["chat_template"]["applied"] is True
    text = target.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                add_generation_prompt=True)
    ids = target.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = target.model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert got == [target.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)]
    target.use_chat_template = False
    target.clear_cache()
    plain = target.generate([prompt], max_new_tokens=4)
    assert target.loading["chat_template"] == {"applied": False, "reason": "turned off (--no-chat-template)"}
    ids = target.tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = target.model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert plain == [target.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)]


# -- large models ----------------------------------------------------------------------------
def test_device_map_splits_the_model_and_gives_the_same_numbers(models, tmp_path):
    path = _model(models, "llama")
    whole = load_target(path, progress=False, device="cpu")
    size = sum(p.numel() * p.element_size() for p in whole.model.parameters())
    split = load_target(path, progress=False, device="cpu", device_map="auto",
                        max_memory={"cpu": size * 4 // 5}, offload_folder=tmp_path / "offload")
    devices = split.loading["device_map"]["devices"]
    assert "disk" in devices and "cpu" in devices, split.loading
    texts = ["the man is here", "she is a nurse"]
    np.testing.assert_allclose(split.log_likelihood(texts), whole.log_likelihood(texts), rtol=1e-5)
    assert split.generate(["the man"], max_new_tokens=3) == whole.generate(["the man"], max_new_tokens=3)


def test_dtype_is_loaded_and_recorded(models):
    target = load_target(_model(models, "gpt2"), progress=False, device="cpu", dtype="bfloat16")
    assert target.dtypes == ["bfloat16"] and target.loading["dtype"] == "bfloat16"


def test_split_model_runs_the_probes_and_faithfulness_says_what_it_skipped(models, tmp_path):
    from probes.attribution import AttributionProbe
    from probes.faithfulness import FaithfulnessProbe

    path = _model(models, "llama")
    size = sum(p.numel() * p.element_size() for p in load_target(path, progress=False).model.parameters())
    split = load_target(path, progress=False, device="cpu", device_map="auto", max_memory={"cpu": size * 4 // 5},
                        offload_folder=tmp_path / "offload")
    results = Auditor(probes=[AttributionProbe(**CHEAP["attribution"]),
                              FaithfulnessProbe(**CHEAP["faithfulness"])]).run(split)
    _check_every_probe(results)
    # re-initialising a copy's disk-offloaded weights would change nothing: the check must not "pass"
    assert "offloaded to disk" in results.result("faithfulness").summary
    assert results.manifest.loading["device_map"]["devices"] == ["cpu", "disk"]


def test_cli_loading_options_reach_the_loader_and_bad_ones_are_one_line(tmp_path, capsys):
    from audit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["run", "--dtype", "float8", "--out", str(tmp_path / "o")])
    assert info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    code = main(["run", "--model", str(tmp_path / "missing"), "--max-memory", "cpu", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--max-memory takes DEVICE=SIZE" in err[0]
