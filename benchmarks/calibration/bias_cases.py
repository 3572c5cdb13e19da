"""Calibration cases of the bias probes: SEAT, counterfactual, group fairness, CrowS-Pairs, StereoSet, generation."""

from __future__ import annotations

import json
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from audit.context import AuditContext
from benchmarks.calibration.core import ALARM_STATUSES, Case, Outcome, covers
from benchmarks.calibration.stand_ins import EmbeddingTable, LikelihoodTable, ScriptedGenerator, TermClassifier

__all__ = ["bias_cases"]


def _context(name: str, seed: int, **fields: Any) -> AuditContext:
    return AuditContext(seed=seed, **fields).for_probe(name)


def _metric_ci(result: Any, key: str) -> tuple[float, float] | None:
    metric = result.metrics.get(key)
    return None if metric is None or metric.ci is None else tuple(metric.ci)


def _expected_sigmoid(centres: np.ndarray, sd: float) -> np.ndarray:
    """E[sigmoid(c + v)] for v ~ N(0, sd^2), by 60-point Gauss-Hermite quadrature (exact to ~1e-12)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    values = 1.0 / (1.0 + np.exp(-(centres[:, None] + sd * nodes[None, :])))
    return values @ weights / weights.sum()


# -- SEAT -----------------------------------------------------------------------------------
def _seat_case(*, clustered: bool) -> Case:
    dim, n_words, n_templates, noise, word_sd = 16, 8, 5, 1.0, (0.6 if clustered else 0.0)

    def vectors(rng: np.random.Generator, shift: np.ndarray, centre: np.ndarray, n: int) -> np.ndarray:
        words = centre + shift + word_sd * rng.standard_normal((n_words, dim))
        return np.repeat(words, n_templates, axis=0)[:n] + noise * rng.standard_normal((n, dim))

    def run(seed: int, effect: float) -> Outcome:
        from probes.seat import SEATProbe, association

        rng = np.random.default_rng(seed)
        a_dir, b_dir = rng.standard_normal(dim), rng.standard_normal(dim)
        a_dir, b_dir = 2 * a_dir / np.linalg.norm(a_dir), 2 * b_dir / np.linalg.norm(b_dir)
        centre = rng.standard_normal(dim)
        axis = (a_dir - b_dir) / 2
        n = n_words * n_templates
        sets = {
            "X": vectors(rng, effect * axis, centre, n), "Y": vectors(rng, -effect * axis, centre, n),
            "A": a_dir + noise * rng.standard_normal((n, dim)), "B": b_dir + noise * rng.standard_normal((n, dim)),
        }
        names = {role: [f"{role.lower()} sentence {i}" for i in range(n)] for role in sets}
        table = {s: v for role in sets for s, v in zip(names[role], sets[role], strict=True)}
        # The truth: the population effect size with these attribute sets, from 20,000 fresh sentences a side.
        big = 20_000
        fresh = {side: centre + sign * effect * axis + word_sd * rng.standard_normal((big, dim))
                 + noise * rng.standard_normal((big, dim)) for side, sign in (("X", 1), ("Y", -1))}
        sx, sy = association(fresh["X"], sets["A"], sets["B"]), association(fresh["Y"], sets["A"], sets["B"])
        truth = float((sx.mean() - sy.mean()) / np.concatenate([sx, sy]).std(ddof=1))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "known.json"
            spec = {r: {"category": r, "examples": names[k]}
                    for r, k in (("targ1", "X"), ("targ2", "Y"), ("attr1", "A"), ("attr2", "B"))}
            if clustered:  # as in the built-in tests: the probe knows which word each target sentence came from
                for r, k in (("targ1", "X"), ("targ2", "Y")):
                    spec[r]["units"] = [f"{k} word {i // n_templates}" for i in range(n)]
            path.write_text(json.dumps(spec))
            result = SEATProbe(test_files=[str(path)]).run(EmbeddingTable(table, model_id=f"seat-{seed}"),
                                                           _context("seat", seed))
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"effect size": covers(_metric_ci(result, "effect_size[known]"), truth)}, truth=truth)

    variant = "sentences clustered by word" if clustered else "independent sentences"
    return Case(
        probe="seat", verdict=f"significant association ({variant})",
        description=(f"Embeddings: attribute sets A, B around two directions; target sets X, Y of {n_words} words x "
                     f"{n_templates} templates around one centre (word sd {word_sd}, sentence noise sd {noise}, "
                     f"{dim} dimensions); planted: X shifted towards A and Y towards B by the effect. "
                     + ("The test file names each sentence's word (units), as the built-in tests do. " if clustered else "")
                     + "Truth: the "
                     "population effect size given A and B, from 20,000 fresh target sentences a side."),
        effect_unit="shift along (a - b)/2, in units of the sentence noise sd",
        effects={"null": 0.0, "small": 0.08, "medium": 0.2, "large": 0.34},
        run=run, interval="effect_size 95% bootstrap interval vs the population effect size",
        settings={"probe params": "defaults (n_samples=10000, n_boot=2000, alpha=0.05)"},
    )


# -- counterfactual ---------------------------------------------------------------------------
def _counterfactual_case() -> Case:
    term_sd, word_sd, axes = 0.5, 0.4, ("gender", "race")

    def run(seed: int, effect: float) -> Outcome:
        from probes.counterfactual import CounterfactualProbe, builtin_axes, builtin_templates, fill_template

        rng = np.random.default_rng(seed)
        specs = builtin_axes()
        terms: dict[str, float] = {}
        for name in axes:
            for group, members in specs[name].groups.items():  # noqa: B007 - renaming it would re-measure the bias cases
                for term in members:
                    terms.setdefault(term.lower(), float(term_sd * rng.standard_normal()))
        planted = dict(terms)
        for term in specs["gender"].groups["female"]:
            planted[term.lower()] = terms[term.lower()] + effect
        model = TermClassifier(seed=seed, terms=planted, scale=word_sd)
        # Truth, given this run's template values: the expected gap over the population of counterpart
        # terms (value N(0, term_sd^2), plus the effect for the female side).
        base = TermClassifier(seed=seed, terms={}, scale=word_sd)
        centres = np.array([base.logit(fill_template(t, "")) for t in builtin_templates()])
        score_gap = float(np.mean(_expected_sigmoid(centres + effect, term_sd) - _expected_sigmoid(centres, term_sd)))
        from scipy.stats import norm

        rate_gap = float(np.mean(norm.cdf((centres + effect) / term_sd) - norm.cdf(centres / term_sd)))
        result = CounterfactualProbe(axes=list(axes)).run(model, _context("counterfactual", seed))
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES, covered={
            "score gap": covers(_metric_ci(result, "max_score_gap[gender]"), abs(score_gap)),
            "parity difference": covers(_metric_ci(result, "demographic_parity_difference[gender]"), abs(rate_gap)),
        }, truth=score_gap)

    return Case(
        probe="counterfactual", verdict="significant gap (gender and race axes, built-in templates)",
        description=("Classifier: logit = sum of per-word values (N(0, 0.4^2) per word, fixed per run) + the value of "
                     "the counterpart term (N(0, 0.5^2) per term, no group term); planted: + effect on every female "
                     "term. Truth: the expected score gap and positive-rate gap over the population of terms, given "
                     "the run's template values (Gauss-Hermite quadrature)."),
        effect_unit="logit shift of the female terms",
        effects={"null": 0.0, "small": 0.15, "medium": 0.3, "large": 0.6},
        run=run, interval="max_score_gap[gender] and demographic_parity_difference[gender] 95% intervals",
        settings={"probe params": f"axes={list(axes)}, otherwise defaults"},
    )


# -- group fairness ---------------------------------------------------------------------------
def _group_fairness_case() -> Case:
    n_rows = 600

    def run(seed: int, effect: float) -> Outcome:
        import pandas as pd
        from scipy.stats import norm

        from audit.data import AuditDataset
        from probes.group_fairness import GroupFairnessProbe

        rng = np.random.default_rng(seed)
        group = rng.choice(["a", "b"], size=n_rows)
        label = rng.random(n_rows) < 0.4
        # Score logit: label signal + noise; group b's logits are shifted by -effect (selection drops).
        centre = np.where(label, 1.0, -1.0) - np.where(group == "b", effect, 0.0)
        logits = centre + rng.standard_normal(n_rows)
        texts = [f"row:{i}" for i in range(n_rows)]
        model = TermClassifier(seed=seed, row_logits=dict(zip(texts, logits, strict=True)))
        data = AuditDataset(frame=pd.DataFrame({"text": texts, "label": label.astype(int), "group": group}),
                            text_column="text", label_column="label", sensitive_features=("group",))
        # Truth: P(positive) = P(logit > 0) = Phi(centre), per class and group; the data's class mix is 40/60.
        tpr = {g: norm.cdf(1.0 - (effect if g == "b" else 0.0)) for g in "ab"}
        fpr = {g: norm.cdf(-1.0 - (effect if g == "b" else 0.0)) for g in "ab"}
        sel = {g: 0.4 * tpr[g] + 0.6 * fpr[g] for g in "ab"}
        dpd, eod = abs(sel["a"] - sel["b"]), max(abs(tpr["a"] - tpr["b"]), abs(fpr["a"] - fpr["b"]))
        # n_boot only sets fairlearn's per-group table intervals, which neither the verdict nor the
        # checked gap intervals use; at its default (100) it costs most of the probe's time. (n_boot=2 crashes
        # the probe: its per-group interval can exclude the estimate and matplotlib refuses the error bar.)
        result = GroupFairnessProbe(n_boot=25).run(model, _context("group_fairness", seed, data=data))
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES, covered={
            "parity difference": covers(_metric_ci(result, "demographic_parity_difference[group]"), dpd),
            "equalized odds difference": covers(_metric_ci(result, "equalized_odds_difference[group]"), eod),
        }, truth=dpd)

    return Case(
        probe="group_fairness", verdict="gap above max_gap (parity or equalized odds)",
        description=(f"{n_rows} labelled rows, two groups drawn at random, 40% positives; classifier logit = +1 for "
                     "positives, -1 for negatives, + N(0, 1) noise; planted: group b's logits shifted down by the "
                     "effect. Truth: the population parity and equalized odds differences (normal CDFs)."),
        effect_unit="logit shift of group b",
        effects={"null": 0.0, "small": 0.2, "medium": 0.4, "large": 0.8},
        run=run, interval="demographic_parity_difference and equalized_odds_difference 95% intervals",
        max_null_runs=200,
        settings={"probe params": "n_boot=25 (fairlearn's per-group table intervals only; the verdict and the "
                                  "gap intervals do not use it), otherwise defaults (max_gap=0.1)"},
    )


# -- CrowS-Pairs and StereoSet: labels swapped by a coin per item ------------------------------
def _crows_case() -> Case:
    n_pairs, types = 300, ("gender", "race-color", "religion")

    def run(seed: int, effect: float) -> Outcome:
        import pandas as pd

        from probes.crows_pairs import CrowsPairsProbe

        rng = np.random.default_rng(seed)
        # The LM's log-likelihood of each sentence is a fixed random number: the model prefers one
        # sentence of each pair; the coin decides whether that one is labelled the more stereotyping.
        scores = {}
        rows = []
        p_more = 0.5 + effect
        for i in range(n_pairs):
            first, second = f"pair {i} sentence one", f"pair {i} sentence two"
            scores[first], scores[second] = rng.normal(-30, 3, size=2)
            preferred, other = (first, second) if scores[first] > scores[second] else (second, first)
            more, less = (preferred, other) if rng.random() < p_more else (other, preferred)
            rows.append({"sent_more": more, "sent_less": less,
                         "stereo_antistereo": "stereo" if rng.random() < 0.85 else "antistereo",
                         "bias_type": types[i % len(types)]})
        model = LikelihoodTable(scores.__getitem__, model_id=f"crows-{seed}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "pairs.csv"
            pd.DataFrame(rows).to_csv(path, index=False)
            result = CrowsPairsProbe(path=str(path)).run(model, _context("crows_pairs", seed))
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"metric score": covers(_metric_ci(result, "metric_score"), 100 * p_more)}, truth=100 * p_more)

    return Case(
        probe="crows_pairs", verdict="metric score significantly different from 50",
        description=(f"{n_pairs} pairs in 3 bias types (85% stereo rows); a causal LM whose sentence log-likelihoods "
                     "are fixed random numbers; which sentence is labelled sent_more is a coin flip per pair that "
                     "lands on the model's preferred sentence with probability 0.5 + effect. Truth: metric score "
                     "100 (0.5 + effect)."),
        effect_unit="P(the preferred sentence is labelled more stereotyping) - 0.5",
        effects={"null": 0.0, "small": 0.04, "medium": 0.08, "large": 0.15},
        run=run, interval="metric_score 95% interval vs 100 (0.5 + effect)",
        settings={"probe params": "defaults (causal_score='sum', alpha=0.05)"},
    )


#: StereoSet-like structure: domain -> number of target terms (StereoSet dev has few religion targets).
_STEREOSET_TARGETS = {"gender": 10, "profession": 20, "race": 15, "religion": 3}


def _stereoset_case(tiny_lm: Any) -> Case:
    items_per_target = 6

    def run(seed: int, effect: float) -> Outcome:
        from probes.stereoset import StereoSetItem, StereoSetProbe, score_items

        rng = np.random.default_rng(seed)
        vocab = ["good", "bad", "great", "terrible", "happy", "sad", "rich", "poor", "young", "old", "nurse", "doctor",
                 "engineer", "teacher", "love", "hate", "art", "math", "science", "poetry", "home", "office"]
        items = []
        for domain, n_targets in _STEREOSET_TARGETS.items():
            for t in range(n_targets):
                for k in range(items_per_target):
                    w1, w2, w3 = rng.choice(vocab, size=3, replace=False)
                    context = f"the {domain} person {t} item {k} was BLANK ."
                    items.append(StereoSetItem(target=f"{domain}-{t}", bias_type=domain, context=context, sentences={
                        "stereotype": context.replace("BLANK", w1), "anti-stereotype": context.replace("BLANK", w2),
                        "unrelated": context.replace("BLANK", w3)}))
        target = tiny_lm(seed)
        scores = score_items(target, items)  # the probe's own scorer: which filler the model prefers
        p_pref = 0.5 + effect
        rows = []
        for item, (s1, s2, _) in zip(items, scores, strict=True):
            first, second = item.sentences["stereotype"], item.sentences["anti-stereotype"]
            preferred, other = (first, second) if s1 > s2 else (second, first)
            stereo, anti = (preferred, other) if rng.random() < p_pref else (other, preferred)
            rows.append({"type": "intrasentence", "target": item.target, "bias_type": item.bias_type,
                         "context": item.context, "stereotype": stereo, "anti-stereotype": anti,
                         "unrelated": item.sentences["unrelated"]})
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "stereoset.jsonl"
            path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
            result = StereoSetProbe(path=str(path)).run(target, _context("stereoset", seed))
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"SS": covers(_metric_ci(result, "ss"), 100 * p_pref)}, truth=100 * p_pref)

    n_items = sum(_STEREOSET_TARGETS.values()) * items_per_target
    return Case(
        probe="stereoset", verdict="SS different from 50 (overall and per domain)",
        description=(f"{n_items} intrasentence items, {items_per_target} per target term, targets per domain "
                     f"{_STEREOSET_TARGETS}; a tiny random GPT-2 (a new one per run) scores the fillers with the "
                     "probe's own scorer; the stereotype label goes to the model's preferred filler with probability "
                     "0.5 + effect, by a coin per item. Truth: SS = 100 (0.5 + effect) overall and in every domain."),
        effect_unit="P(the preferred filler is labelled the stereotype) - 0.5",
        effects={"null": 0.0, "small": 0.05, "medium": 0.1, "large": 0.2},
        run=run, interval="overall ss 95% interval vs 100 (0.5 + effect)",
        max_null_runs=120,
        settings={"probe params": "defaults (max_deviation=5, n_boot=1000)"},
    )


# -- generation --------------------------------------------------------------------------------
_POSITIVE = ["a kind and wonderful person who loved helping others.", "a brilliant, happy and generous friend.",
             "an excellent teacher, admired and respected by everyone.", "a great success and a joy to work with."]
_NEGATIVE = ["a cruel and dishonest person who hurt others.", "a terrible, angry and violent man.",
             "a failure, hated and feared by everyone.", "an awful liar and a miserable thief."]
_NEUTRAL = ["a clerk in the city office.", "someone who took the bus to work.", "a resident of the old town.",
            "a person who lived near the station."]


def _generation_case() -> Case:
    base_negative = 0.2

    def run(seed: int, effect: float) -> Outcome:
        from probes.generation import GenerationProbe, vader_compound

        def mixture(group: str) -> np.ndarray:
            # Planted: continuations about the female group turn negative more often, the added share
            # taken from the positive and neutral pools in proportion.
            added = effect if group == "female" else 0.0
            rest = (1 - base_negative - added) / (1 - base_negative)
            return np.array([0.3 * rest, base_negative + added, 0.5 * rest])  # positive, negative, neutral

        pools = [_POSITIVE, _NEGATIVE, _NEUTRAL]
        group_of: dict[str, str] = {}
        probe = GenerationProbe(axes=["gender", "race"])
        from probes.generation import builtin_prompts

        for s in builtin_prompts():
            for g, prompts in s.groups.items():
                group_of.update(dict.fromkeys(prompts, g))

        def continue_(prompt: str) -> str:
            pick = np.random.default_rng([seed, zlib.crc32(prompt.encode())])
            pool = pools[int(pick.choice(3, p=mixture(group_of.get(prompt, ""))))]
            return " " + pool[int(pick.integers(len(pool)))]

        model = ScriptedGenerator(continue_, model_id=f"generation-{seed}")
        result = probe.run(model, _context("generation", seed))
        pool_means = [float(np.mean(vader_compound(p))) for p in pools]
        gap = abs(float(np.dot(mixture("female") - mixture("male"), pool_means)))
        return Outcome(status=result.status, alarm=result.status in ALARM_STATUSES,
                       covered={"sentiment gap": covers(_metric_ci(result, "max_sentiment_gap[gender]"), gap)}, truth=gap)

    return Case(
        probe="generation", verdict="significant sentiment gap (gender and race axes, built-in prompts)",
        description=("A causal LM that continues each prompt with a sentence drawn from positive, negative and "
                     "neutral pools (30% / 20% / 50%, seeded per run and prompt); planted: the female group's "
                     "continuations are negative more often by the effect (taken from the other pools in proportion). Truth: "
                     "the expected gap in mean VADER compound (mixture weights x pool means)."),
        effect_unit="added share of negative continuations for the female group",
        effects={"null": 0.0, "small": 0.2, "medium": 0.4, "large": 0.7},
        run=run, interval="max_sentiment_gap[gender] 95% interval (folded) vs the expected |gap|",
        settings={"probe params": "axes=['gender', 'race'], otherwise defaults"},
    )


def bias_cases(tiny_lm: Any) -> list[Case]:
    """Every bias case; ``tiny_lm(seed)`` builds a real tiny causal LM target (StereoSet needs one)."""
    return [_seat_case(clustered=False), _seat_case(clustered=True), _counterfactual_case(), _group_fairness_case(),
            _crows_case(), _stereoset_case(tiny_lm), _generation_case()]
