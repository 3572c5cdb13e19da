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

    def __init__(self, scores: dict[str, float], *, model_id: str) -> None:
        self.scores = scores
        self.model_id = model_id
        self.fingerprint = f"calibration:{model_id}"
        self.tokenizer = _WordTokenizer()
        self.records: dict[str, Any] = {}
        self.thresholds = None
        self.path = None

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [[zlib.crc32(w.encode("utf-8")) % 50_000 + 10 for w in t.split()] for t in texts]

    def token_log_likelihoods(self, texts: Sequence[str]) -> list[TokenLogProbs]:
        out = []
        for text, ids in zip(texts, self.tokenize(texts), strict=True):
            answer = text.rsplit("\nA:", 1)[1]
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


def qa_cases() -> list[Case]:
    """The question-answering probes' cases (BBQ)."""
    return [_bbq_case()]
