"""Membership inference (Yeom et al. 2018) and canary exposure (Carlini et al. 2019) on tiny models.

Every number is checked against an independent computation: scikit-learn's ``roc_auc_score`` and a
direct pairwise count for the AUC, brute force over thresholds for the advantage, and per-text
forward passes written here (no batching, no padding) for losses and canary ranks.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from audit import AuditConfig, AuditContext, Auditor, load_target
from audit.data import load_dataset
from audit.errors import ConfigError, DataError
from privacy.leakage import CanarySet, canary_exposure, loss_threshold_attack, sample_losses
from privacy.probes import CanaryExposureProbe, MembershipInferenceProbe
from tests.tiny import CORPUS, make_tiny_model

WORDS = sorted(set(CORPUS))


@contextlib.contextmanager
def one_thread():
    """Tiny models train faster on one thread, and do not fight the other test processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_sentences(n: int, seed: int, length: int = 8) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=length)) + " ." for _ in range(n)]


def train_causal_lm(source: Path, texts: list[str], out: Path, *, steps: int = 150, lr: float = 1e-2,
                    bos: bool = True) -> Path:
    """Fine-tune a tiny GPT-2 on ``texts`` (full batch) until it has memorised them; save it to ``out``.

    ``bos`` prefixes each text with the BOS token, as the log-likelihood operations do; without it
    the texts look like the prompts ``AuditTarget.generate`` feeds the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source)
    rows = [[tok.bos_token_id] * bos + [*tok(t)["input_ids"], tok.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.eos_token_id)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, : len(row)] = torch.tensor(row)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with one_thread():
        for _ in range(steps):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def train_classifier(source: Path, texts: list[str], labels: list[int], out: Path, *, steps: int = 120) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source)
    batch = tok(texts, padding=True, return_tensors="pt")
    target = torch.tensor(labels)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    with one_thread():
        for _ in range(steps):
            loss = model(**batch, labels=target).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def direct_token_log_probs(model_dir: Path, text: str) -> np.ndarray:
    """log p(token_i | BOS, tokens before i) for every token of ``text``: one unpadded forward pass."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = _cached_model(model_dir, AutoTokenizer)
    model = _cached_model(model_dir, AutoModelForCausalLM)
    ids = [tok.bos_token_id, *tok(text)["input_ids"]]
    with torch.no_grad(), one_thread():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


_MODELS: dict[tuple[str, str], object] = {}


def _cached_model(model_dir: Path, auto: type):
    key = (str(model_dir), auto.__name__)
    if key not in _MODELS:
        loaded = auto.from_pretrained(model_dir)
        _MODELS[key] = loaded.eval() if hasattr(loaded, "eval") else loaded
    return _MODELS[key]


@pytest.fixture(scope="module")
def base_causal(tmp_path_factory) -> Path:
    return make_tiny_model("causal-lm", tmp_path_factory.mktemp("base") / "causal")


@pytest.fixture(scope="module")
def members_and_others() -> tuple[list[str], list[str]]:
    return random_sentences(32, seed=1), random_sentences(32, seed=2)


@pytest.fixture(scope="module")
def overfit_causal(base_causal, members_and_others, tmp_path_factory) -> Path:
    members, _ = members_and_others
    return train_causal_lm(base_causal, members, tmp_path_factory.mktemp("overfit") / "causal")


# -- the attack on given losses -------------------------------------------------------------
def test_attack_metrics_match_independent_computations():
    rng = np.random.default_rng(5)
    members = rng.gamma(2.0, 1.0, size=60)
    others = rng.gamma(2.0, 1.3, size=45)
    others[:5] = members[:5]  # ties are scored 1/2, as in the Mann-Whitney statistic
    result = loss_threshold_attack(members, others, rng=np.random.default_rng(0), n_boot=500)
    truth = np.r_[np.ones(60), np.zeros(45)]
    assert result.auc.estimate == pytest.approx(roc_auc_score(truth, -np.r_[members, others]), abs=1e-12)
    pairwise = np.mean((members[:, None] < others[None, :]) + 0.5 * (members[:, None] == others[None, :]))
    assert result.auc.estimate == pytest.approx(pairwise, abs=1e-12)
    assert result.auc.low <= result.auc.estimate <= result.auc.high
    # advantage: brute force over every threshold "member iff loss <= t"
    thresholds = np.unique(np.r_[members, others, -np.inf])
    best = max(np.mean(members <= t) - np.mean(others <= t) for t in thresholds)
    assert result.advantage == pytest.approx(best, abs=1e-12)
    t = members.mean()
    assert result.yeom_advantage == pytest.approx(np.mean(members <= t) - np.mean(others <= t), abs=1e-12)
    for level, tpr in result.tpr_at_fpr.items():
        feasible = [np.mean(members <= th) for th in thresholds if np.mean(others <= th) <= level]
        assert tpr == pytest.approx(max(feasible), abs=1e-12)


def test_vectorised_bootstrap_statistic_equals_sklearn():
    from privacy.leakage import _rank_auc

    rng = np.random.default_rng(2)
    x, y = np.round(rng.random((7, 30)), 1), np.round(rng.random((7, 20)), 1)  # many ties
    truth = np.r_[np.ones(30), np.zeros(20)]
    np.testing.assert_allclose(_rank_auc(x, y), [roc_auc_score(truth, np.r_[x[i], y[i]]) for i in range(7)], atol=1e-12)


def test_attack_rejects_too_few_or_non_finite_losses():
    with pytest.raises(DataError, match="at least 2 member samples"):
        loss_threshold_attack([0.1], [0.2, 0.3], rng=np.random.default_rng(0))
    with pytest.raises(DataError, match="not finite"):
        loss_threshold_attack([0.1, float("nan")], [0.2, 0.3], rng=np.random.default_rng(0))


# -- losses ---------------------------------------------------------------------------------
def test_causal_losses_match_direct_forward_passes(base_causal, members_and_others):
    target = load_target(base_causal, progress=False, device="cpu")
    texts = [*members_and_others[0][:6], "a", "the executive said that the nurse was very good ."]
    losses = sample_losses(target, texts)
    direct = [-direct_token_log_probs(base_causal, t).mean() for t in texts]
    np.testing.assert_allclose(losses, direct, rtol=1e-4)


def test_masked_and_classifier_losses_match_direct_computation(tiny_dirs, tiny_targets):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    texts = ["the doctor said that she was happy .", "john works as a nurse", "good movie"]
    tok = AutoTokenizer.from_pretrained(tiny_dirs["masked-lm"])
    mlm = AutoModelForMaskedLM.from_pretrained(tiny_dirs["masked-lm"]).eval()
    expected = []
    for text in texts:
        ids = tok(text)["input_ids"]
        scores = []
        for pos in range(1, len(ids) - 1):  # every token but [CLS] and [SEP]
            masked = list(ids)
            masked[pos] = tok.mask_token_id
            with torch.no_grad():
                logits = mlm(input_ids=torch.tensor([masked])).logits[0, pos].double()
            scores.append(torch.log_softmax(logits, -1)[ids[pos]].item())
        expected.append(-np.mean(scores))
    np.testing.assert_allclose(sample_losses(tiny_targets["masked-lm"], texts), expected, rtol=1e-4)

    clf = AutoModelForSequenceClassification.from_pretrained(tiny_dirs["sequence-classification"]).eval()
    labels = [0, 1, 1]
    with torch.no_grad():
        logits = clf(**tok(texts, padding=True, return_tensors="pt")).logits.double()
    direct = -torch.log_softmax(logits, -1)[torch.arange(3), torch.tensor(labels)].numpy()
    target = tiny_targets["sequence-classification"]
    np.testing.assert_allclose(sample_losses(target, texts, labels), direct, rtol=1e-4)
    names = [target.labels[i] for i in labels]
    np.testing.assert_allclose(sample_losses(target, texts, names), direct, rtol=1e-4)
    with pytest.raises(DataError, match="neither a class index"):
        sample_losses(target, texts, [0, 1, 7])
    with pytest.raises(ConfigError, match="needs labels"):
        sample_losses(target, texts)


# -- the probe ------------------------------------------------------------------------------
def _write_jsonl(path: Path, texts: list[str], labels: list[int] | None = None) -> str:
    rows = [{"text": t} | ({"label": labels[i]} if labels is not None else {}) for i, t in enumerate(texts)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _run(probe, model_dir: Path, tmp_path: Path, **context):
    target = load_target(model_dir, progress=False, device="cpu")
    results = Auditor(AuditConfig(seed=3), probes=[probe]).run(target, **context)
    return results.results[0], target


@pytest.mark.slow  # trains a tiny model until it memorises (10-20 s on 2 shared cores)
def test_overfit_lm_leaks_membership_and_unseen_model_does_not(base_causal, overfit_causal, members_and_others, tmp_path):
    members, others = members_and_others
    probe = MembershipInferenceProbe(members=_write_jsonl(tmp_path / "m.jsonl", members),
                                     non_members=_write_jsonl(tmp_path / "n.jsonl", others), n_boot=1000)
    leaky, _ = _run(probe, overfit_causal, tmp_path)
    clean, _ = _run(probe, base_causal, tmp_path)
    for result, model_dir in ((leaky, overfit_causal), (clean, base_causal)):
        direct = [-direct_token_log_probs(model_dir, t).mean() for t in members + others]
        expected = roc_auc_score(np.r_[np.ones(32), np.zeros(32)], -np.asarray(direct))
        assert result.metrics["auc"].value == pytest.approx(expected, abs=1e-9)
    assert leaky.status == "warned" and leaky.metrics["auc"].value > 0.9 and leaky.metrics["auc"].ci[0] > 0.75
    auc = clean.metrics["auc"]
    assert clean.status == "passed" and abs(auc.value - 0.5) < 0.2 and auc.ci[0] < 0.5 < auc.ci[1], auc
    assert "members" in leaky.summary and leaky.figures and leaky.tables[1].rows[0][1] == 32
    failing = MembershipInferenceProbe(members=probe.members, non_members=probe.non_members, n_boot=200, max_auc=0.7)
    assert _run(failing, overfit_causal, tmp_path)[0].status == "failed"


@pytest.mark.slow  # trains a tiny model until it memorises (10-20 s on 2 shared cores)
def test_classifier_membership_with_member_column(tiny_dirs, tmp_path):
    members = random_sentences(24, seed=3, length=6)
    others = random_sentences(24, seed=4, length=6)
    rng = np.random.default_rng(0)
    labels = rng.integers(2, size=48).tolist()
    trained = train_classifier(tiny_dirs["sequence-classification"], members, labels[:24], tmp_path / "clf")
    csv = tmp_path / "data.csv"
    csv.write_text("text,label,split\n" + "".join(f"{t},{y},{'true' if i < 24 else 'false'}\n"
                                                   for i, (t, y) in enumerate(zip(members + others, labels, strict=True))),
                   encoding="utf-8")
    data = load_dataset(csv, label_column="label")
    result, target = _run(MembershipInferenceProbe(member_column="split", n_boot=500), trained, tmp_path, data=data)
    losses = sample_losses(target, members + others, labels)
    expected = roc_auc_score(np.r_[np.ones(24), np.zeros(24)], -losses)
    assert result.metrics["auc"].value == pytest.approx(expected, abs=1e-12)
    # Random labels: a non-member whose label the model happens to predict confidently also has a low
    # loss, so even perfect memorisation gives an AUC near 0.75 here, not 1.
    assert result.metrics["auc"].value > 0.65 and result.status == "warned"


def test_membership_probe_skips_and_rejects_bad_input(tiny_targets, tmp_path):
    target = tiny_targets["causal-lm"]
    skipped = MembershipInferenceProbe().run(target, AuditContext())
    assert skipped.status == "skipped" and "members and non_members" in skipped.summary
    no_data = MembershipInferenceProbe(member_column="split").run(target, AuditContext())
    assert no_data.status == "skipped" and "no dataset" in no_data.summary
    with pytest.raises(ConfigError, match="both members and non_members"):
        MembershipInferenceProbe(members="a.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "x y"}\n{"sentence": "y z"}\n', encoding="utf-8")
    probe = MembershipInferenceProbe(members=str(bad), non_members=str(bad))
    result = Auditor(AuditConfig(), probes=[probe]).run(target).results[0]
    assert result.status == "errored" and "column 'text' is not in members file" in result.summary


# -- canaries -------------------------------------------------------------------------------
def test_canary_set_generate_insert_and_record():
    canaries = CanarySet.generate(repetitions=(1, 3), length=5, rng=np.random.default_rng(0))
    assert len(set(canaries.secrets)) == 2 and all(len(s) == 5 and s.isdigit() for s in canaries.secrets)
    base = [f"sentence {i}" for i in range(20)]
    mixed = canaries.insert(base, rng=np.random.default_rng(1))
    assert [t for t in mixed if t in base] == base  # original order kept
    assert [mixed.count(t) for t in canaries.texts()] == [1, 3] and len(mixed) == 24
    assert CanarySet.from_record(json.loads(json.dumps(canaries.to_record()))) == canaries
    with pytest.raises(ConfigError, match="same length"):
        CanarySet(secrets=("12", "123"), repetitions=(1, 1))
    with pytest.raises(DataError, match="'secrets' and 'repetitions'"):
        CanarySet.from_record({"secrets": ["1"]})


@pytest.fixture(scope="module")
def canary_model(base_causal, tmp_path_factory) -> tuple[Path, CanarySet]:
    canaries = CanarySet.generate(repetitions=(1, 20), length=3, template="my secret code is {secret} .",
                                  rng=np.random.default_rng(7))
    texts = canaries.insert(random_sentences(24, seed=9), rng=np.random.default_rng(8))
    out = train_causal_lm(base_causal, texts, tmp_path_factory.mktemp("canary") / "causal", steps=150)
    (out / "rai_audit_record.json").write_text(json.dumps({"dp": {"canaries": canaries.to_record()}}), encoding="utf-8")
    return out, canaries


@pytest.mark.slow  # trains a tiny model until it memorises (10-20 s on 2 shared cores)
def test_exact_exposure_matches_direct_rank(canary_model):
    model_dir, canaries = canary_model
    target = load_target(model_dir, progress=False, device="cpu")
    results = canary_exposure(target, canaries, n_candidates=1000, rng=np.random.default_rng(0))
    space = ["".join(p) for p in itertools.product("0123456789", repeat=3)]
    direct = {s: -direct_token_log_probs(model_dir, canaries.fill(s)).sum() for s in space}
    for item, secret in zip(results, canaries.secrets, strict=True):
        # float32 batches vs float64 single passes: allow candidates within 1e-4 bits of the canary either way;
        # ranked against secrets that are not planted canaries (the other canary was trained on too)
        others = [v for s, v in direct.items() if s not in canaries.secrets]
        low = 1 + sum(v < direct[secret] - 1e-4 for v in others)
        high = 1 + sum(v < direct[secret] + 1e-4 for v in others)
        assert item.exact and low <= item.rank <= high and item.space_size == 1000
        assert item.exposure == pytest.approx(math.log2(1000) - math.log2(item.rank), abs=1e-9)
    # the canary seen 20 times is ranked first: maximal exposure; the one seen once is less certain (ranked
    # against unplanted secrets only, it may rank first too: the old code put it behind the other canary)
    assert results[1].rank == 1 and results[1].exposure == pytest.approx(math.log2(1000))
    assert results[0].log_perplexity > results[1].log_perplexity


@pytest.mark.slow  # trains a tiny model until it memorises (10-20 s on 2 shared cores)
def test_sampled_exposure_is_bounded_and_probe_reads_the_record(canary_model):
    model_dir, canaries = canary_model
    target = load_target(model_dir, progress=False, device="cpu")
    sampled = canary_exposure(target, canaries, n_candidates=200, rng=np.random.default_rng(1))
    for item in sampled:
        assert not item.exact and item.n_candidates == 200
        assert item.better <= 200
        assert item.exposure == pytest.approx(-math.log2((item.better + 1) / 201), abs=1e-12)
        assert 0 < item.exposure <= math.log2(201) + 1e-12
    result = Auditor(AuditConfig(seed=0), probes=[CanaryExposureProbe(n_candidates=1000)]).run(target).results[0]
    exact = canary_exposure(target, canaries, n_candidates=1000, rng=np.random.default_rng(0))
    assert result.metrics["max_exposure"].value == pytest.approx(max(e.exposure for e in exact), abs=1e-9)
    assert result.status == "warned" and [r[0] for r in result.tables[0].rows] == ["dp", "dp"]
    assert not any(text in json.dumps(result.model_dump(mode="json")) for text in canaries.texts())
    skipped = Auditor(AuditConfig(), probes=[CanaryExposureProbe()]).run(load_target(
        make_tiny_model("causal-lm", model_dir.parent / "plain"), progress=False, device="cpu")).results[0]
    assert skipped.status == "skipped" and "No canaries" in skipped.summary


class _ScoredLM:
    """A causal-LM stand-in whose log-likelihoods are set per text, to pin the ranking down exactly."""

    kind = "causal-lm"
    model_id = "scored"

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    def log_likelihood(self, texts):
        import zlib

        return np.asarray([self.scores.get(t, -(zlib.crc32(t.encode()) % 997) / 997) for t in texts])


@pytest.mark.parametrize("n_candidates", [1000, 300])
def test_exposure_ranks_each_canary_against_non_canary_candidates_only(n_candidates):
    """Regression: the exhaustive path ranked a canary against the other planted canaries.

    The three canaries beat every unplanted secret but one, which beats only the weakest canary.
    The old code ranked that canary fourth (behind the other two canaries: 7.97 bits of |R| = 1000);
    against unplanted secrets it is second, log2 1000 - 1 = 8.97 bits, and the other two 9.97.
    """
    canaries = CanarySet.generate(repetitions=(1, 10, 100), length=3, rng=np.random.default_rng(3))
    rival = next(s for s in ("000", "111", "222", "333") if s not in canaries.secrets)
    scores = {canaries.fill(s): v for s, v in zip(canaries.secrets, (10.0, 11.0, 12.0), strict=True)}
    lm = _ScoredLM({**scores, canaries.fill(rival): 10.5})
    results = canary_exposure(lm, canaries, n_candidates=n_candidates, rng=np.random.default_rng(0))
    # independent ranking: every possible secret but the planted ones, scored and counted here
    competitors = ["".join(p) for p in itertools.product("0123456789", repeat=3) if "".join(p) not in canaries.secrets]
    competitor_nll = -lm.log_likelihood([canaries.fill(s) for s in competitors])
    for item, secret in zip(results, canaries.secrets, strict=True):
        better = int(np.sum(competitor_nll < -lm.log_likelihood([canaries.fill(secret)])[0]))
        if n_candidates >= len(competitors):
            assert item.exact and item.n_candidates == 997 and item.rank == better + 1
            assert item.exposure == pytest.approx(math.log2(1000) - math.log2(better + 1), abs=1e-12)
        else:
            assert not item.exact and item.n_candidates == n_candidates
            assert item.max_exposure == pytest.approx(math.log2(n_candidates + 1))
    if n_candidates >= 997:
        assert [r.rank for r in results] == [2, 1, 1]
        assert results[0].exposure == pytest.approx(math.log2(1000) - 1)
        assert results[2].exposure == pytest.approx(math.log2(1000))
    else:  # the two strongest beat every sampled candidate: their estimate is capped by the sample size
        assert results[2].exposure == pytest.approx(math.log2(n_candidates + 1))
        assert results[1].exposure == pytest.approx(math.log2(n_candidates + 1))


def test_canary_card_says_where_the_sample_size_caps_the_estimate():
    canaries = CanarySet.generate(repetitions=(1, 10), length=3, rng=np.random.default_rng(4))
    lm = _ScoredLM({canaries.fill(s): 10.0 for s in canaries.secrets})
    lm.records = {}
    plain = {"secrets": list(canaries.secrets), "repetitions": list(canaries.repetitions)}
    sampled = CanaryExposureProbe(canaries=plain, n_candidates=300).run(lm, AuditContext(seed=0))
    assert "capped by the sample size at 8.23 bits" in sampled.summary and "log2 |R| = 9.97" in sampled.summary
    assert [row[-1] for row in sampled.tables[0].rows] == ["yes: at most log2(300 + 1) bits"] * 2
    exact = CanaryExposureProbe(canaries=plain, n_candidates=1000).run(lm, AuditContext(seed=0))
    assert "capped" not in exact.summary and [row[-1] for row in exact.tables[0].rows] == ["no", "no"]
    assert exact.metrics["max_exposure"].value == pytest.approx(math.log2(1000))
