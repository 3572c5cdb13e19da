"""Loading targets safely and the batched operations, against direct transformers computations."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from audit import ConfigError, ModelLoadError, NotApplicableError, load_target
from audit.target import detect_kind
from tests.tiny import make_tiny_model

TEXTS = ["he is a doctor .", "she works as a nurse", "john", "zyxwv is unknown here", "the family was very happy and the children were great",
         "amy is an engineer", "he is a doctor ."]


@pytest.mark.parametrize("kind", ["encoder", "masked-lm", "causal-lm", "sequence-classification"])
def test_kind_is_detected_from_config(tiny_dirs, kind):
    target = load_target(tiny_dirs[kind], progress=False)
    assert target.kind == kind
    assert target.n_parameters == sum(p.numel() for p in target.model.parameters())


def test_kind_can_be_told(tiny_dirs):
    target = load_target(tiny_dirs["masked-lm"], kind="encoder", progress=False)
    assert target.kind == "encoder"
    with pytest.raises(ConfigError, match="Unknown model kind"):
        load_target(tiny_dirs["masked-lm"], kind="decoder")  # type: ignore[arg-type]


def test_detect_kind_from_architectures():
    from transformers import GPT2Config

    assert detect_kind(GPT2Config(architectures=["GPT2LMHeadModel"])) == "causal-lm"
    assert detect_kind(GPT2Config(architectures=["GPT2ForSequenceClassification"])) == "sequence-classification"


def test_fingerprint_weights_part_is_sha256_of_tensor_contents(tiny_dirs):
    """Independent computation: every tensor's name, dtype, shape and bytes (decoded by safetensors), in name order."""
    from safetensors import safe_open

    path = tiny_dirs["encoder"]
    codes = {torch.float32: "F32", torch.int64: "I64"}
    outer = hashlib.sha256()
    with safe_open(str(path / "model.safetensors"), framework="pt") as handle:
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name)
            one = hashlib.sha256(f"{name}\0{codes[tensor.dtype]}\0{list(tensor.shape)}\0".encode())
            one.update(tensor.numpy().tobytes())
            outer.update(f"{name}\0{one.hexdigest()}\n".encode())
    target = load_target(path, progress=False)
    assert target.fingerprint_parts["weights"] == "tensors:sha256:" + outer.hexdigest()
    assert target.files["model.safetensors"] == "sha256:" + hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert target.fingerprint.startswith("sha256:") and target.fingerprint != target.fingerprint_parts["weights"]


def test_fingerprint_changes_with_weights(tmp_path):
    a = make_tiny_model("encoder", tmp_path / "a", seed=0)
    b = make_tiny_model("encoder", tmp_path / "b", seed=1)
    assert load_target(a, progress=False).fingerprint != load_target(b, progress=False).fingerprint


def _direct_mean_embeddings(path, texts):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        return np.stack([model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0).numpy() for t in texts])


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_embed_matches_unbatched_transformers(tiny_dirs, batch_size):
    target = load_target(tiny_dirs["encoder"], progress=False, batch_size=batch_size)
    np.testing.assert_allclose(target.embed(TEXTS), _direct_mean_embeddings(tiny_dirs["encoder"], TEXTS), atol=1e-5)


def test_embed_pooling_and_layers(tiny_dirs):
    path = tiny_dirs["encoder"]
    target = load_target(path, progress=False, batch_size=3)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = [model(**tok(t, return_tensors="pt"), output_hidden_states=True) for t in TEXTS]
    np.testing.assert_allclose(target.embed(TEXTS, pooling="cls"), np.stack([o.last_hidden_state[0, 0].numpy() for o in out]), atol=1e-5)
    np.testing.assert_allclose(target.embed(TEXTS, layer=1), np.stack([o.hidden_states[1][0].mean(0).numpy() for o in out]), atol=1e-5)
    np.testing.assert_allclose(target.embed(TEXTS, pooling="last"), np.stack([o.last_hidden_state[0, -1].numpy() for o in out]), atol=1e-5)
    with pytest.raises(ConfigError, match="layer 7 is out of range"):
        target.embed(TEXTS, layer=7)


def test_results_are_cached_per_text(tiny_dirs):
    target = load_target(tiny_dirs["encoder"], progress=False, batch_size=2)
    calls = []
    handle = target.model.register_forward_hook(lambda m, i, o: calls.append(i))
    first = target.embed(TEXTS[:3])
    n_first = len(calls)
    again = target.embed(list(reversed(TEXTS[:3])) + TEXTS[3:4])
    handle.remove()
    assert n_first == 2 and len(calls) == 3  # only the one new text was computed
    np.testing.assert_array_equal(again[:3], first[::-1])


def test_predict_proba_matches_softmax(tiny_dirs):
    path = tiny_dirs["sequence-classification"]
    target = load_target(path, progress=False, batch_size=4)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        expected = np.stack([torch.softmax(model(**tok(t, return_tensors="pt")).logits[0], -1).numpy() for t in TEXTS])
    np.testing.assert_allclose(target.predict_proba(TEXTS), expected, atol=1e-5)
    with pytest.raises(NotApplicableError, match="predict_proba"):
        load_target(tiny_dirs["encoder"], progress=False).predict_proba(TEXTS)


def test_causal_log_likelihood_matches_direct(tiny_dirs):
    path = tiny_dirs["causal-lm"]
    target = load_target(path, progress=False, batch_size=4)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    expected = []
    with torch.no_grad():
        for text in TEXTS:
            ids = [tok.bos_token_id] + tok(text)["input_ids"]
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
            expected.append(sum(float(logp[i - 1, ids[i]]) for i in range(1, len(ids))))
    np.testing.assert_allclose(target.log_likelihood(TEXTS), expected, rtol=1e-5)


def test_pseudo_log_likelihood_matches_direct_masking(tiny_dirs):
    path = tiny_dirs["masked-lm"]
    target = load_target(path, progress=False, batch_size=5)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForMaskedLM.from_pretrained(path).eval()
    expected = []
    with torch.no_grad():
        for text in TEXTS:
            ids = tok(text)["input_ids"]
            total = 0.0
            for pos in range(1, len(ids) - 1):
                if ids[pos] in tok.all_special_ids and ids[pos] != tok.unk_token_id:
                    continue
                masked = list(ids)
                masked[pos] = tok.mask_token_id
                logp = torch.log_softmax(model(torch.tensor([masked])).logits[0, pos], -1)
                total += float(logp[ids[pos]])
            expected.append(total)
    np.testing.assert_allclose(target.pseudo_log_likelihood(TEXTS), expected, rtol=1e-5)


def test_generate_is_deterministic_and_batch_independent_when_greedy(tiny_dirs):
    target = load_target(tiny_dirs["causal-lm"], progress=False, batch_size=3)
    prompts = ["he is", "the family was very", "she"]
    out = target.generate(prompts, max_new_tokens=4)
    single = load_target(tiny_dirs["causal-lm"], progress=False, batch_size=1).generate(prompts, max_new_tokens=4)
    assert out == single and all(isinstance(o, str) for o in out)


def test_long_inputs_are_truncated_and_counted(tiny_dirs):
    target = load_target(tiny_dirs["encoder"], progress=False, max_length=8)
    long_text = " ".join(["family"] * 50)
    assert target.embed([long_text]).shape == (1, 32)
    assert target.truncated_texts == 1
    ids = target.tokenize([long_text])[0]
    assert len(ids) == 8 and ids[-1] == target.tokenizer.sep_token_id  # closing [SEP] kept


# -- refusing what is unsafe or broken ---------------------------------------------------
def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_target(tmp_path / "nope")


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        load_target(tmp_path)


def test_model_without_tokenizer(tiny_dirs, tmp_path):
    dst = tmp_path / "m"
    dst.mkdir()
    for f in tiny_dirs["encoder"].iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, dst / f.name)
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        load_target(dst)


def test_pickle_only_weights_refused_unless_allowed(tmp_path):
    from transformers import BertConfig, BertModel

    from tests.tiny import save_bert_tokenizer

    save_bert_tokenizer(tmp_path)
    BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path, safe_serialization=False)
    if not list(tmp_path.glob("*.bin")):  # transformers may refuse to write pickle: write it ourselves
        model = BertModel.from_pretrained(tmp_path)
        for f in tmp_path.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        load_target(tmp_path)
    assert load_target(tmp_path, allow_pickle=True, progress=False).kind == "encoder"


def test_remote_code_is_not_run(tiny_dirs, tmp_path):
    dst = tmp_path / "remote"
    shutil.copytree(tiny_dirs["encoder"], dst)
    config = json.loads((dst / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    config["model_type"] = "evil-bert"
    (dst / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (dst / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(ModelLoadError, match="trust"):
        load_target(dst)
    assert not marker.exists()


def test_hub_id_offline_names_the_id_and_variable():
    with pytest.raises(ModelLoadError, match=r"'someone/unknown-model'.*HF_HUB_OFFLINE=1"):
        load_target("someone/unknown-model")
