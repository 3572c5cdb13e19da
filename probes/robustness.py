"""Robustness by group: do meaning-preserving perturbations flip a classifier's predictions more
often for some groups than for others (in the style of LangTest and Giskard's robustness tests)?"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from audit.errors import ConfigError, DataError
from audit.probe import Metric, Probe, ProbeResult, Table
from audit.stats import bootstrap_ci, holm_bonferroni, stratified_permutation_test, wilson_interval

if TYPE_CHECKING:
    from audit.context import AuditContext
    from audit.target import AuditTarget

__all__ = ["PERTURBATIONS", "RobustnessProbe", "perturb"]

PERTURBATIONS = ("typos", "uppercase", "lowercase", "contractions", "punctuation", "pronoun_swap", "name_swap")

_CONTRACTIONS = {"do not": "don't", "does not": "doesn't", "did not": "didn't", "is not": "isn't", "are not": "aren't",
                 "was not": "wasn't", "were not": "weren't", "can not": "can't", "cannot": "can't", "will not": "won't",
                 "would not": "wouldn't", "should not": "shouldn't", "could not": "couldn't", "have not": "haven't",
                 "has not": "hasn't", "it is": "it's", "that is": "that's", "i am": "i'm", "they are": "they're",
                 "we are": "we're", "you are": "you're"}
_EXPANSIONS = {v: k for k, v in _CONTRACTIONS.items() if k != "cannot"}
_PRONOUNS = {"he": "she", "she": "he", "him": "her", "his": "her", "her": "his", "himself": "herself",
             "herself": "himself", "man": "woman", "woman": "man", "men": "women", "women": "men", "boy": "girl",
             "girl": "boy", "father": "mother", "mother": "father", "son": "daughter", "daughter": "son",
             "brother": "sister", "sister": "brother", "husband": "wife", "wife": "husband", "mr": "ms", "ms": "mr"}
_NAMES = {"john": "mary", "michael": "jennifer", "david": "susan", "james": "linda", "robert": "patricia",
          "william": "elizabeth", "paul": "sarah", "mark": "karen", "kevin": "lisa", "steve": "amy"}
_NAMES.update({v: k for k, v in list(_NAMES.items())})
_PUNCTUATION = re.compile(r"[.,!?;:]")


def _keep_case(original: str, replacement: str) -> str:
    if original.isupper() and len(original) > 1:
        return replacement.upper()
    return replacement.capitalize() if original[:1].isupper() else replacement


def _swap_words(text: str, table: dict[str, str]) -> str:
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, table), key=len, reverse=True)) + r")\b", re.IGNORECASE)
    return pattern.sub(lambda m: _keep_case(m.group(0), table[m.group(0).lower()]), text)


def _typos(text: str, rng: np.random.Generator, rate: float) -> str:
    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        if len(word) < 4 or rng.random() >= rate:
            return word
        i = int(rng.integers(1, len(word) - 2))
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]

    return re.sub(r"[A-Za-z]+", swap, text)


def perturb(texts: Sequence[str], perturbation: str, *, rng: np.random.Generator, typo_rate: float = 0.1) -> list[str]:
    """Each text under one meaning-preserving perturbation (unchanged where it does not apply).

    ``typos`` swaps two inner letters of a word of 4+ letters with probability ``typo_rate``;
    ``uppercase``/``lowercase`` change the case; ``contractions`` contracts ("do not" -> "don't"),
    or expands where there is nothing to contract; ``punctuation`` removes ``.,!?;:``, or adds a
    final "." where there is none; ``pronoun_swap`` swaps gendered words (he/she, his/her, man/woman,
    ...); ``name_swap`` swaps common first names between genders (John/Mary, ...).
    """
    if perturbation not in PERTURBATIONS:
        raise ConfigError(f"perturbation must be one of {list(PERTURBATIONS)}, got {perturbation!r}.")
    out = []
    for text in texts:
        if perturbation == "typos":
            out.append(_typos(text, rng, typo_rate))
        elif perturbation == "uppercase":
            out.append(text.upper())
        elif perturbation == "lowercase":
            out.append(text.lower())
        elif perturbation == "contractions":
            contracted = _swap_words(text, _CONTRACTIONS)
            out.append(contracted if contracted != text else _swap_words(text, _EXPANSIONS))
        elif perturbation == "punctuation":
            stripped = _PUNCTUATION.sub("", text)
            out.append(stripped if stripped != text else text.rstrip() + ".")
        elif perturbation == "pronoun_swap":
            out.append(_swap_words(text, _PRONOUNS))
        else:
            out.append(_swap_words(text, _NAMES))
    return out


class RobustnessProbe(Probe):
    """Prediction flip rate under meaning-preserving perturbations, overall and per sensitive group.

    For each perturbation (see :func:`perturb`) and the dataset rows it changes: the **flip rate**
    (share of rows whose predicted class changes, x100, Wilson 95% interval), per group of each
    sensitive feature with the worst group named, and with a label column the accuracy drop
    (original minus perturbed accuracy, x100, paired bootstrap interval). No text is reported.

    Verdict: per perturbation and sensitive feature, the largest gap in flip rate between groups is
    tested by a permutation test (flip indicators shuffled across groups; groups with fewer than
    ``min_group_size`` changed rows are left out and counted), Holm-adjusted over all of them.
    Failed when a significant gap exceeds ``max_gap`` points; warned when a significant gap is
    within it; passed otherwise. Overall flip rates are reported without a verdict.

    Parameters
    ----------
    perturbations : sequence of str, optional
        Default: all of :data:`PERTURBATIONS`.
    typo_rate : float, default=0.1
    alpha : float, default=0.05
    max_gap : float, default=5.0
    min_group_size : int, default=10
    n_permutations : int, default=2000
    n_boot : int, default=1000
    """

    name: ClassVar[str] = "robustness"
    category: ClassVar[str] = "bias"
    kinds: ClassVar[frozenset[str]] = frozenset({"sequence-classification"})
    requires_data: ClassVar[bool] = True
    description: ClassVar[str] = "Prediction flips under typos, casing, contractions, punctuation, pronoun and name swaps, by group"
    version: ClassVar[str] = "1"

    def __init__(self, *, perturbations: Sequence[str] | None = None, typo_rate: float = 0.1, alpha: float = 0.05,
                 max_gap: float = 5.0, min_group_size: int = 10, n_permutations: int = 2000, n_boot: int = 1000) -> None:
        self.perturbations = perturbations
        self.typo_rate = typo_rate
        self.alpha = alpha
        self.max_gap = max_gap
        self.min_group_size = min_group_size
        self.n_permutations = n_permutations
        self.n_boot = n_boot
        where = f"Probe {self.name!r}"
        if isinstance(perturbations, str):
            raise ConfigError(f"{where}: perturbations must be a list, e.g. [{perturbations!r}].")
        unknown = [p for p in (perturbations or ()) if p not in PERTURBATIONS]
        if unknown:
            raise ConfigError(f"{where}: unknown perturbation(s) {unknown}; choose from {list(PERTURBATIONS)}.")
        if not 0 <= typo_rate <= 1:
            raise ConfigError(f"{where}: typo_rate must be between 0 and 1, got {typo_rate!r}.")
        if not 0 < alpha < 1:
            raise ConfigError(f"{where}: alpha must be between 0 and 1, got {alpha!r}.")
        for key, value in (("min_group_size", min_group_size), ("n_permutations", n_permutations), ("n_boot", n_boot)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}.")

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        data = context.data
        if data is None:
            raise DataError(f"Probe {self.name!r} needs a dataset; none was given. Set data.path (or --data).")
        texts = data.texts
        frame = data.frame
        features = list(data.sensitive_features)
        groups = {f: frame[f].astype("string").fillna("(missing)").to_numpy(dtype=object) for f in features}
        first = groups[features[0]].tolist() if features else None
        original = np.asarray(target.predict(texts, sensitive_features=first))
        labels = None
        if data.label_column is not None:
            names = [str(x) for x in target.labels]
            raw = frame[data.label_column].astype(str).tolist()
            labels = np.array([names.index(v) if v in names else (int(v) if v.isdigit() else -1) for v in raw])
            if ((labels < 0) | (labels >= len(names))).any():
                labels = None  # not the model's classes: no accuracy drop (said in the summary)
        rng = context.rng
        metrics: dict[str, Metric] = {}
        rows, group_rows, tests = [], [], []
        for perturbation in self.perturbations or PERTURBATIONS:
            changed_texts = perturb(texts, perturbation, rng=rng, typo_rate=self.typo_rate)
            changed = np.array([a != b for a, b in zip(texts, changed_texts, strict=True)])
            if not changed.any():
                rows.append([perturbation, 0, None, None, None, None, None])
                metrics[f"flip_rate[{perturbation}]"] = Metric(value=None, note="no row is changed by it",
                                                               direction="lower_is_better")
                continue
            idx = np.flatnonzero(changed)
            new = np.asarray(target.predict([changed_texts[i] for i in idx],
                                            sensitive_features=None if first is None else [first[i] for i in idx]))
            flips = (new != original[idx]).astype(float)
            low, high = wilson_interval(int(flips.sum()), flips.size)
            metrics[f"flip_rate[{perturbation}]"] = Metric(
                value=100 * flips.mean(), ci=(100 * low, 100 * high), ci_level=0.95, direction="lower_is_better",
                description=f"Rows whose predicted class changes under {perturbation}, x100 (of {idx.size} changed rows)")
            drop = drop_ci = None
            if labels is not None:
                right = (original[idx] == labels[idx]).astype(float) * 100
                right_new = (new == labels[idx]).astype(float) * 100
                ci = bootstrap_ci([right, right_new], lambda a, b, axis=-1: a.mean(axis) - b.mean(axis), rng=rng,
                                  n_resamples=self.n_boot, paired=True)
                drop, drop_ci = ci.estimate, ci.as_tuple()
                metrics[f"accuracy_drop[{perturbation}]"] = Metric(
                    value=drop, ci=drop_ci, ci_level=0.95, ideal=0.0,
                    description=f"Accuracy on the changed rows before minus after {perturbation}, x100; 0 is ideal")
            rows.append([perturbation, int(idx.size), 100 * flips.mean(), _fmt((100 * low, 100 * high)), drop,
                         _fmt(drop_ci), None])
            for feature in features:
                tests.append(self._group_test(perturbation, feature, groups[feature][idx], flips, rng, group_rows))
        adjusted, reject = holm_bonferroni([t["p"] for t in tests], alpha=self.alpha)
        flagged, too_far = [], []
        for test, p_adj, rej in zip(tests, adjusted, reject, strict=True):
            key = f"group_gap[{test['perturbation']}, {test['feature']}]"
            metrics[key] = Metric(value=test["gap"], p_value=float(p_adj) if test["gap"] is not None else None,
                                  direction="lower_is_better", note=test["note"],
                                  description=(f"Largest difference in flip rate between {test['feature']} groups under "
                                               f"{test['perturbation']}, x100; worst group: {test['worst']}"))
            if rej and test["gap"] is not None:
                flagged.append(key)
                if test["gap"] > self.max_gap:
                    too_far.append(key)
        for row in group_rows:
            match = [t for t in tests if t["perturbation"] == row[0] and t["feature"] == row[1]]
            row.append(float(adjusted[tests.index(match[0])]) if match and match[0]["gap"] is not None else None)
        if too_far:
            status, verdict = "failed", f"significant flip-rate gaps above {self.max_gap} points: {', '.join(too_far)}."
        elif flagged:
            status, verdict = "warned", f"significant flip-rate gaps within {self.max_gap} points: {', '.join(flagged)}."
        elif not features:
            status, verdict = "passed", "no sensitive feature was named, so no group comparison was made."
        else:
            status, verdict = "passed", f"no flip-rate gap between groups is significant at alpha={self.alpha} after Holm."
        worst = max((r for r in rows if r[2] is not None), key=lambda r: r[2], default=None)
        return self.result(
            status=status,
            summary=(f"Robustness over {len(texts)} rows and {len(rows)} perturbations"
                     + (f": highest flip rate {worst[2]:.1f}% under {worst[0]}" if worst else "") + f"; {verdict}"
                     + (" Labels are not the model's class names or indices: no accuracy drop."
                        if data.label_column is not None and labels is None else "")),
            metrics=metrics,
            tables=[Table(title="Flip rate by perturbation", columns=["perturbation", "changed rows", "flip rate %",
                                                                       "95% CI", "accuracy drop", "95% CI", "note"],
                          rows=rows, caption="Only rows a perturbation changes count. Wilson intervals for flip rates; "
                                             "paired bootstrap for accuracy drops."),
                    Table(title="Flip rate by group", columns=["perturbation", "feature", "group", "changed rows",
                                                               "flip rate %", "95% CI", "worst", "p (Holm) of the gap"],
                          rows=group_rows, caption="p: permutation test of the largest gap in flip rate between groups "
                                                   "(groups with at least min_group_size changed rows), Holm over all "
                                                   "perturbations and features.")],
        )

    def _group_test(self, perturbation: str, feature: str, group: np.ndarray, flips: np.ndarray,
                    rng: np.random.Generator, out_rows: list[list[Any]]) -> dict[str, Any]:
        names = sorted({str(g) for g in group})
        sizes = {g: int((group == g).sum()) for g in names}
        kept = [g for g in names if sizes[g] >= self.min_group_size]
        rates = {g: 100 * float(flips[group == g].mean()) for g in names}
        worst = max(kept, key=lambda g: rates[g]) if kept else None
        for g in names:
            low, high = wilson_interval(int(flips[group == g].sum()), sizes[g])
            out_rows.append([perturbation, feature, g, sizes[g], rates[g], _fmt((100 * low, 100 * high)), g == worst])
        if len(kept) < 2:
            return {"perturbation": perturbation, "feature": feature, "gap": None, "p": 1.0, "worst": worst,
                    "note": f"fewer than 2 groups with {self.min_group_size}+ changed rows: no test"}
        mask = np.isin(group, kept)
        codes = np.array([kept.index(str(g)) for g in group[mask]])

        def gap(values: np.ndarray) -> np.ndarray:
            means = np.stack([values[..., codes == k].mean(-1) for k in range(len(kept))], axis=-1)
            return 100 * (means.max(-1) - means.min(-1))

        result = stratified_permutation_test(flips[mask], gap, rng=rng, n_resamples=self.n_permutations)
        return {"perturbation": perturbation, "feature": feature, "gap": float(result.statistic), "p": result.p_value,
                "worst": worst, "note": None}


def _fmt(ci: tuple[float, float] | None) -> str | None:
    return None if ci is None else f"[{ci[0]:.1f}, {ci[1]:.1f}]"
