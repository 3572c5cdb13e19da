"""Calibration of the BBQ verdict: an option-scoring LM stand-in with and without a group term.

The BBQ probe answers by the log-likelihood of each option after the prompt; its status tests the
disambiguated accuracy gap (stereotype-consistent minus inconsistent items) against 0. The
stand-in scores each option of a disambiguated item as ``mu`` (correct option) + N(0, 1) noise +
``effect`` (the biased option only); the unknown option scores far below. With ``effect = 0`` the
scores have no group term; otherwise the population gap is known exactly:
``100 * (Phi((mu + effect) / sqrt 2) - Phi((mu - effect) / sqrt 2))``.
"""

from __future__ import annotations

import json
import math
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audit.context import AuditContext
from audit.target import TokenLogProbs
from benchmarks.calibration.core import ALARM_STATUSES, Case, Outcome, covers

__all__ = ["OptionScorer", "qa_cases"]

_OCCUPATIONS = 40  # synthetic Winogender occupations, share of women spread evenly over 5-95%

_MU = 1.0
_CATEGORIES = ("Age", "Religion", "Nationality")
_PER_CATEGORY = 160  # disambiguated items per category (half with the stereotype-consistent answer correct)
_AMBIGUOUS = 20  # ambiguous items per category (scored, not tested)
_UNKNOWN_SCORE = -50.0


class _WordTokenizer:
    all_special_ids: Sequence[int] = ()
    unk_token_id = None


class OptionScorer:
    """Causal-LM stand-in: the log-likelihood of ``prompt + " " + answer`` is a given number.

    Word-level token ids (so the prompt's tokens are a prefix of the full text's); every answer
    token carries an equal share of the option's score, prompt tokens 0.
    """

    kind = "causal-lm"
    max_length = 10**6
    batch_size = 32
    device = "cpu"

    def __init__(self, scores: dict[str, float], *, model_id: str,
                 sentence_scores: dict[str, float] | None = None) -> None:
        self.scores = scores
        self.sentence_scores = sentence_scores or {}
        self.model_id = model_id
        self.fingerprint = f"calibration:{model_id}"
        self.tokenizer = _WordTokenizer()
        self.records: dict[str, Any] = {}
        self.thresholds = None
        self.path = None

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [[zlib.crc32(w.encode("utf-8")) % 50_000 + 10 for w in t.split()] for t in texts]

    def log_likelihood(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.sentence_scores[t] for t in texts], dtype=float)

    def token_log_likelihoods(self, texts: Sequence[str]) -> list[TokenLogProbs]:
        out = []
        for text, ids in zip(texts, self.tokenize(texts), strict=True):
            answer = text.rsplit("\nA:", 1)[1] if "\nA:" in text else text.rsplit(" refers to", 1)[1]
            n_answer = len(answer.split())
            values = np.zeros(len(ids))
            values[0] = np.nan
            values[len(ids) - n_answer:] = self.scores[text] / n_answer
            out.append(TokenLogProbs(np.asarray(ids), values))
        return out


def _item(i: int, category: str, condition: str, polarity: str, consistent: bool) -> dict[str, Any]:
    """One BBQ-shaped record: ans0 the stereotyped group, ans1 the other, ans2 unknown (positions rotated)."""
    people = {"target": (f"member of group A{i}", "groupA"), "other": (f"member of group B{i}", "groupB")}
    order = [("target", 0), ("other", 1), ("unknown", 2)]
    shift = i % 3
    order = order[shift:] + order[:shift]
    info, answers, index = {}, {}, {}
    for k, (role, _) in enumerate(order):
        if role == "unknown":
            info[f"ans{k}"], answers[f"ans{k}"] = ["Unknown", "unknown"], "Unknown"
        else:
            name, label = people[role]
            info[f"ans{k}"], answers[f"ans{k}"] = [name, label], f"The {name}"
        index[role] = k
    biased = index["target"] if polarity == "neg" else index["other"]
    anti = index["other"] if polarity == "neg" else index["target"]
    label = index["unknown"] if condition == "ambig" else (biased if consistent else anti)
    return {"example_id": i, "category": category, "context_condition": condition, "question_polarity": polarity,
            "answer_info": info, "additional_metadata": {"stereotyped_groups": ["groupA"]},
            "context": f"Context {i} of {category}.", "question": f"Question {i}?", **answers, "label": label,
            "_roles": index, "_biased": biased}


def _bbq_case() -> Case:
    def run(seed: int, effect: float) -> Outcome:
        from probes.bbq import BBQProbe, bbq_prompt

        rng = np.random.default_rng(seed)
        records, scores = [], {}
        i = 0
        for category in _CATEGORIES:
            for j in range(_PER_CATEGORY + _AMBIGUOUS):
                condition = "disambig" if j < _PER_CATEGORY else "ambig"
                record = _item(i, category, condition, ("neg", "nonneg")[j % 2], consistent=(j // 2) % 2 == 0)
                i += 1
                prompt = bbq_prompt(record)
                for k in range(3):
                    if k == record["_roles"]["unknown"]:
                        value = _UNKNOWN_SCORE if condition == "disambig" else float(rng.normal())
                    else:
                        value = float(rng.normal()) + (_MU if k == record["label"] else 0.0)
                        value += effect if k == record["_biased"] else 0.0
                    scores[prompt + " " + record[f"ans{k}"]] = value
                records.append({k: v for k, v in record.items() if not k.startswith("_")})
        model = OptionScorer(scores, model_id=f"bbq-{seed}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bbq.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            result = BBQProbe(path=str(path)).run(model, AuditContext(seed=seed).for_probe("bbq"))
        truth = _true_gap(effect)
        metric = result.metrics.get("accuracy_gap")
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"accuracy gap": covers(None if metric is None else metric.ci, truth)}, truth=truth)

    return Case(
        probe="bbq", verdict="disambiguated accuracy gap significantly different from 0",
        description=(f"{len(_CATEGORIES)} categories x {_PER_CATEGORY} disambiguated items (half with the "
                     f"stereotype-consistent answer correct, polarities alternating) + {_AMBIGUOUS} ambiguous; a causal "
                     f"LM stand-in scoring each option {_MU} (correct) + N(0, 1) + effect (the biased option only), the "
                     "unknown option far below in disambiguated contexts, answered through the probe's prompt and "
                     "continuation scoring. Truth: 100 (Phi((mu + effect) / sqrt 2) - Phi((mu - effect) / sqrt 2))."),
        effect_unit="log-likelihood bonus of the biased option",
        effects={"null": 0.0, "small": 0.1, "medium": 0.2, "large": 0.4},
        run=run, interval="overall accuracy_gap 95% interval vs the population gap",
        settings={"probe params": "defaults (choices='original', alpha=0.05, max_gap=5, n_boot=1000, "
                                  "n_permutations=2000)"},
    )


def _true_gap(effect: float) -> float:
    def phi(x: float) -> float:
        return 0.5 * (1 + math.erf(x / 2))  # standard normal CDF at x / sqrt 2

    return 100 * (phi(_MU + effect) - phi(_MU - effect))


def _winogender_files(folder: Path) -> None:
    """A Winogender-shaped data set: per occupation 2 templates (answer 0, 1) x 2 participants x 3 forms."""
    pronouns = {"male": "he", "female": "she", "neutral": "they"}
    rows, stats = ["sentid\tsentence"], ["occupation\tbergsma_pct_female\tbls_pct_female\tbls_year"]
    for o in range(_OCCUPATIONS):
        occupation = f"worker{o}"
        stats.append(f"{occupation}\t50\t{5 + 90 * o / (_OCCUPATIONS - 1):.2f}\t2015")
        for participant in (f"client{o}", "someone"):
            other = participant if participant == "someone" else f"the {participant}"
            for answer in (0, 1):
                for gender, pronoun in pronouns.items():
                    rows.append(f"{occupation}.{participant}.{answer}.{gender}.txt\tThe {occupation} met {other} "
                                f"because {pronoun} had plan{answer}.")
    (folder / "all_sentences.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (folder / "occupations-stats.tsv").write_text("\n".join(stats) + "\n", encoding="utf-8")


def _winogender_case() -> Case:
    def run(seed: int, effect: float) -> Outcome:
        from probes.winogender import WinogenderProbe, load_winogender

        rng = np.random.default_rng(seed)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _winogender_files(folder)
            cases, _ = load_winogender(folder)
            scores, sentences = {}, {}
            for case in cases:
                prompt = f'{case.sentence} "{case.pronoun}" refers to'
                for k, candidate in enumerate(case.candidates):
                    value = float(rng.normal()) + (_MU if k == case.answer else 0.0)
                    value += effect if (k == case.answer and case.gender == "male") else 0.0
                    scores[prompt + " " + candidate] = value
                sentences[case.sentence] = float(rng.normal())
            model = OptionScorer(scores, sentence_scores=sentences, model_id=f"winogender-{seed}")
            result = WinogenderProbe(path=str(folder)).run(model, AuditContext(seed=seed).for_probe("winogender"))

        def phi(x: float) -> float:
            return 0.5 * (1 + math.erf(x / 2))

        truth = 100 * (phi(_MU + effect) - phi(_MU))
        metric = result.metrics.get("gap_male_female")
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"male - female gap": covers(None if metric is None else metric.ci, truth)}, truth=truth)

    return Case(
        probe="winogender", verdict="male - female gap or a correlation with the share of women significant",
        description=(f"A Winogender-shaped set ({_OCCUPATIONS} occupations x 12 sentences, share of women 5-95%); a causal "
                     f"LM stand-in scoring each candidate {_MU} (correct) + N(0, 1) + effect (the correct candidate of "
                     "male pronouns only), each sentence's likelihood N(0, 1) with no gender term; answered through the "
                     "probe's own prompt and continuation scoring. Truth: male - female accuracy gap "
                     "100 (Phi((mu + effect) / sqrt 2) - Phi(mu / sqrt 2))."),
        effect_unit="log-likelihood bonus of the correct candidate for male pronouns",
        effects={"null": 0.0, "small": 0.15, "medium": 0.3, "large": 0.6},
        run=run, interval="gap_male_female 95% interval vs the population gap",
        settings={"probe params": "defaults (dataset='winogender', alpha=0.05, max_gap=5, n_boot=1000, "
                                  "n_permutations=10000)"},
    )


class _FlipClassifier:
    """Classifier stand-in: 0 on the dataset's own texts; any other text is 1 with probability
    ``rates[group]`` (a fixed pseudo-random draw per text; the group is named in the text)."""

    kind = "sequence-classification"
    thresholds = None
    path = None
    device = "cpu"

    def __init__(self, originals: set[str], rates: dict[str, float], *, seed: int) -> None:
        self.originals, self.rates, self.seed = originals, rates, seed
        self.labels = ["negative", "positive"]
        self.records: dict[str, Any] = {}
        self.model_id = f"flip-classifier-{seed}"
        self.fingerprint = f"calibration:{self.model_id}"

    def predict(self, texts: Sequence[str], *, sensitive_features: Sequence[Any] | None = None) -> np.ndarray:
        out = []
        for text in texts:
            if text in self.originals:
                out.append(0)
                continue
            group = "a" if "team a" in text.lower() else "b"
            u = zlib.crc32(f"{self.seed}|{text}".encode()) / 2**32
            out.append(int(u < self.rates[group]))
        return np.array(out)


def _robustness_case() -> Case:
    n_rows, base = 300, 0.2

    def run(seed: int, effect: float) -> Outcome:
        import pandas as pd

        from audit import AuditDataset
        from probes.robustness import RobustnessProbe

        rng = np.random.default_rng(seed)
        groups = rng.choice(["a", "b"], size=n_rows)
        texts = [f"Row {i} of team {g}, written on day {int(rng.integers(1000))}." for i, g in enumerate(groups)]
        data = AuditDataset(frame=pd.DataFrame({"text": texts, "group": groups}), text_column="text",
                            sensitive_features=("group",))
        model = _FlipClassifier(set(texts), {"a": base + effect, "b": base}, seed=seed)
        result = RobustnessProbe(perturbations=["punctuation", "uppercase"]).run(
            model, AuditContext(seed=seed, data=data).for_probe("robustness"))
        share_a = float(np.mean(groups == "a"))
        truth = 100 * (base + effect * share_a)  # expected overall flip rate given this run's group mix
        metric = result.metrics.get("flip_rate[punctuation]")
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"flip rate": covers(None if metric is None else metric.ci, truth)}, truth=100 * effect)

    return Case(
        probe="robustness", verdict="flip-rate gap between groups significant",
        description=(f"{n_rows} rows in two groups drawn at random; a classifier stand-in that predicts 0 on every "
                     f"original text and, on a perturbed text, 1 with probability {base} (group b) or {base} + effect "
                     "(group a), drawn per text; perturbations punctuation and uppercase. Truth: flip-rate gap 100 effect; "
                     "the interval checked is the overall punctuation flip rate vs its expectation given the group mix."),
        effect_unit="flip probability of group a minus group b",
        effects={"null": 0.0, "small": 0.05, "medium": 0.1, "large": 0.2},
        run=run, interval="flip_rate[punctuation] Wilson 95% interval vs 100 (base + effect * share of group a)",
        settings={"probe params": "perturbations=['punctuation', 'uppercase'], otherwise defaults (alpha=0.05, "
                                  "max_gap=5, min_group_size=10, n_permutations=2000)"},
        max_null_runs=1000,  # a second a run: enough null runs to tell its rate from 5%
    )


def qa_cases() -> list[Case]:
    """The question-answering, coreference and robustness probes' cases (BBQ, Winogender, robustness)."""
    return [_bbq_case(), _winogender_case(), _robustness_case()]
