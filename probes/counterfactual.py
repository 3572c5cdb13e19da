"""Counterfactual fairness of sequence classifiers: what changes when only a group term changes.

Inputs come in sets that differ only in the term naming a person's group ("my sister" /
"my brother"; "Lakisha" / "Emily"; "the Muslim neighbour" / "the Christian neighbour"), from
built-in templates or from the user's own texts with gendered words and names swapped both ways.
Per group: positive rate and mean score (fairlearn ``MetricFrame``, ``demographic_parity_difference``
and ``_ratio``); per pair of groups: the gap in positive rate and in mean score, the
counterfactual flip rate (Garg et al. 2019; Kusner et al. 2017) and the mean absolute score change,
each with a paired permutation test and a bootstrap interval, Holm-adjusted across the probe.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from audit.errors import ConfigError, DataError
from audit.figures import interval_bar_chart
from audit.heads import decisions
from audit.probe import Figure, Metric, Probe, ProbeResult, Table
from audit.stats import (
    EXACT_SIGN_FLIP_LIMIT,
    Interval,
    bootstrap_ci,
    holm_bonferroni,
    max_abs_mean_interval,
    sign_flip_tests,
    t_interval,
)
from probes.display import data_masker

if TYPE_CHECKING:
    from audit.context import AuditContext
    from audit.target import AuditTarget

__all__ = [
    "PLACEHOLDER",
    "AxisSpec",
    "CounterfactualProbe",
    "builtin_axes",
    "builtin_templates",
    "counterfactual_copies",
    "fill_template",
    "resolve_positive_label",
    "sign_flip_tests",
]

PLACEHOLDER = "{person}"
#: Below this many counterpart terms per group, ``unit="auto"`` tests inputs rather than terms:
#: a sign-flip test over n terms cannot reach p < 0.01 with fewer than 8 (2 / 2**7 > 0.01).
MIN_TERM_UNITS = 8
_SOURCES = ("auto", "templates", "data")
_UNITS = ("auto", "term", "input")
# Each swapped text costs two forward passes and one unit in every test of its axis: cap them.
_DEFAULT_MAX_TEXTS = 2000


def _data_dir() -> Any:
    return resources.files("probes") / "data" / "counterfactual"


def _load_json(name: str) -> dict[str, Any]:
    return json.loads((_data_dir() / name).read_text(encoding="utf-8"))


def builtin_templates() -> list[str]:
    """The built-in sentence templates, each with one ``{person}`` slot."""
    return list(_load_json("templates.json")["templates"])


@dataclass(frozen=True)
class AxisSpec:
    """One demographic axis: its groups, each with counterpart terms in the same order.

    ``unit`` is what the significance test and intervals resample: ``"term"`` (the counterpart
    terms, each averaged over the templates: inference about groups of names or words, with
    term-to-term variation as noise) or ``"input"`` (every template x term input: inference about
    these exact terms).
    """

    name: str
    groups: dict[str, tuple[str, ...]]
    unit: str
    origin: str


def builtin_axes() -> dict[str, AxisSpec]:
    """The built-in axes of ``probes/data/counterfactual/axes.json``, with ``unit`` resolved as for ``"auto"``."""
    spec = _load_json("axes.json")
    nouns = spec["nouns"]
    axes = {}
    for name, axis in spec["axes"].items():
        if axis["kind"] == "terms":
            groups = {g: tuple(terms) for g, terms in axis["groups"].items()}
        else:
            groups = {g: tuple(" ".join(w for w in ("the", desc, noun) if w) for noun in nouns)
                      for g, desc in axis["groups"].items()}
        n_terms = len(next(iter(groups.values())))
        # A descriptor axis carries its group in one word shared by all its terms, so terms are not
        # independent draws of the group: only the input-level test is meaningful there.
        unit = "term" if axis["kind"] == "terms" and n_terms >= MIN_TERM_UNITS else "input"
        axes[name] = AxisSpec(name=name, groups=groups, unit=unit, origin="built-in")
    return axes


def fill_template(template: str, term: str) -> str:
    """Put ``term`` in the ``{person}`` slot, capitalising it when it starts the sentence."""
    text = template.replace(PLACEHOLDER, term)
    if template.startswith(PLACEHOLDER) and text:
        text = text[0].upper() + text[1:]
    return text


# -- counterfactual copies of the user's texts --------------------------------------------
_DETERMINERS = frozenset({"his", "her", "their", "my", "your", "our", "its"})
# Words after which an ambiguous pronoun stands alone ("told her that" -> "him", "is his." -> "hers").
_STANDALONE_NEXT = frozenset(
    ["and", "or", "but", "nor", "so", "yet", "to", "that", "the", "a", "an", "this", "these", "those", "in", "on", "at", "for", "with", "about", "from", "as", "if", "when", "because", "while", "again", "too", "back", "up", "down", "out", "off", "over", "yesterday", "today", "tomorrow", "now", "then", "there", "here", "very", "is", "was", "are", "were", "will", "would", "can", "could", "should", "must", "has", "had", "have", "do", "does", "did"]
)
_NEXT_WORD = re.compile(r"\s*([A-Za-z][A-Za-z'-]*)")


def _load_swaps() -> dict[str, tuple[tuple[str, str], list[tuple[str, str]]]]:
    spec = _load_json("swaps.json")["axes"]
    return {name: (tuple(axis["groups"]), [tuple(p) for p in axis["pairs"]])  # type: ignore[misc]
            for name, axis in spec.items()}


def _match_case(word: str, like: str) -> str:
    if len(like) > 1 and like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


class _Swapper:
    """Swaps one axis's terms both ways in a text (whole words; names only when capitalised)."""

    def __init__(self, groups: tuple[str, str], pairs: Sequence[tuple[str, str]]) -> None:
        self.groups = groups
        self.side: dict[str, int] = {}
        self.counterparts: dict[str, list[str]] = {}
        for a, b in pairs:
            for word, other, side in ((a, b, 0), (b, a, 1)):
                key = word if word[:1].isupper() else word.lower()
                self.side.setdefault(key, side)
                options = self.counterparts.setdefault(key, [])
                if other not in options:
                    options.append(other)
        words = sorted(self.side, key=len, reverse=True)
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)

    def _key(self, found: str) -> str | None:
        if found in self.side:
            return found
        lower = found.lower()
        return lower if lower in self.side and lower[:1].islower() else None

    def _choose(self, options: list[str], text: str, end: int) -> str:
        if len(options) == 1:
            return options[0]
        following = _NEXT_WORD.match(text, end)
        standalone = following is None or following.group(1).lower() in _STANDALONE_NEXT
        for option in options:
            if (option.lower() in _DETERMINERS) != standalone:
                return option
        return options[0]

    def swap(self, text: str) -> tuple[int, str] | None:
        """``(group index of the original, swapped text)``, or ``None`` when the text has no term
        of this axis or terms of both groups."""
        sides = set()
        parts: list[str] = []
        last = 0
        for match in self.pattern.finditer(text):
            key = self._key(match.group(0))
            if key is None:
                continue
            sides.add(self.side[key])
            replacement = self._choose(self.counterparts[key], text, match.end())
            parts += [text[last:match.start()], _match_case(replacement, match.group(0))]
            last = match.end()
        if len(sides) != 1:
            return None
        return sides.pop(), "".join(parts) + text[last:]


def counterfactual_copies(texts: Sequence[str], axis: str = "gender") -> tuple[tuple[str, str], list[tuple[int, int, str, str]]]:
    """Counterfactual copies of ``texts`` for a built-in swap axis (``"gender"`` or ``"race"``).

    Returns the axis's two group names and, for every text that names exactly one of them,
    ``(text index, group index of the original, original, swapped copy)``. Texts with terms of
    both groups ("he told her") are left out: they have no single group to compare.

    Examples
    --------
    >>> from probes.counterfactual import counterfactual_copies
    >>> groups, copies = counterfactual_copies(["She thanked her brother.", "No one came."])
    >>> groups, copies
    (('female', 'male'), [])
    >>> counterfactual_copies(["She gave her keys to her."])[1][0][3]
    'He gave his keys to him.'
    """
    swaps = _load_swaps()
    if axis not in swaps:
        raise ConfigError(f"Unknown swap axis {axis!r}. Built-in swap axes: {sorted(swaps)}.")
    groups, pairs = swaps[axis]
    swapper = _Swapper(groups, pairs)  # type: ignore[arg-type]
    copies = []
    for index, text in enumerate(texts):
        swapped = swapper.swap(text)
        if swapped is not None and swapped[1] != text:
            copies.append((index, swapped[0], text, swapped[1]))
    return groups, copies  # type: ignore[return-value]


MULTI_LABEL_NEEDS_LABEL = ("Probe {probe!r}: {model!r} has a multi-label head whose {n} labels {labels} are each an "
                           "independent yes/no (sigmoid), so no one of them is the outcome by default. Set "
                           "positive_label to the label to audit, e.g. {first!r}.")


def resolve_positive_label(target: AuditTarget, positive_label: int | str | None, probe: str) -> int:
    """Index of the class that counts as the favourable ("positive") outcome (0, the score, for a single-score head)."""
    if getattr(target, "head", None) == "score" and positive_label in (None, 0, "0", *target.labels[:1]):
        return 0
    labels = target.labels
    if len(labels) < 2:
        raise ConfigError(
            f"Probe {probe!r}: {target.model_id!r} has {len(labels)} output class(es); a classifier "
            "with at least two classes is needed. Load a sequence classifier."
        )
    if positive_label is None:
        if getattr(target, "head", None) == "multi-label":
            raise ConfigError(MULTI_LABEL_NEEDS_LABEL.format(probe=probe, model=target.model_id, n=len(labels),
                                                             labels=labels, first=labels[0]))
        if len(labels) == 2:
            return 1
        raise ConfigError(
            f"Probe {probe!r}: {target.model_id!r} has {len(labels)} classes {labels}, so the favourable "
            "outcome is ambiguous. Set positive_label to one of them."
        )
    if isinstance(positive_label, str) and positive_label in labels:
        return labels.index(positive_label)
    if isinstance(positive_label, (int, str)) and not isinstance(positive_label, bool) and str(positive_label).isdigit():
        index = int(positive_label)
        if index < len(labels):
            return index
    raise ConfigError(
        f"Probe {probe!r}: positive_label {positive_label!r} is not a class of {target.model_id!r}. "
        f"Use one of {labels} or an index from 0 to {len(labels) - 1}."
    )


def score_head_headline(metrics: dict[str, Metric], per_axis: dict[str, dict[str, Any]],
                        summary: str) -> tuple[str, str]:
    """A single-score head (regression, cross-encoder, reward model) is judged by its score gaps: the
    largest per-axis score gap becomes the headline, and the summary says that positive rates count
    scores above 0."""
    worst = max(per_axis, key=lambda a: metrics[f"max_score_gap[{a}]"].value or 0.0)
    name = f"max_score_gap[{worst}]"
    metrics["max_score_gap"] = metrics[name].model_copy(
        update={"description": f"Largest |difference in mean score| between two groups over the axes ({worst}); "
                               "the model has a single-score head, so this is the headline"})
    gap = metrics[name].value or 0.0
    return "max_score_gap", (f"Single-score head: largest mean score gap {gap:.3f} ({worst}); positive rates count "
                             f"scores above 0. {summary}")


def _ratio_of_means(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
    means = np.stack([np.mean(s, axis=axis) for s in samples])
    high, low = means.max(axis=0), means.min(axis=0)
    # A resample where no group is ever selected has all rates equal: parity, ratio 1.
    return np.where(high > 0, low / np.where(high > 0, high, 1.0), 1.0)


@dataclass
class _AxisRun:
    spec: AxisSpec
    texts: np.ndarray  # (groups, units, replicates) of str
    scores: np.ndarray  # probability of the positive class
    positive: np.ndarray  # predicted label is the positive class

    @property
    def group_names(self) -> list[str]:
        return list(self.spec.groups)

    def unit_means(self, values: np.ndarray) -> np.ndarray:
        return values.reshape(values.shape[0], values.shape[1], -1).mean(axis=2)


@dataclass
class _Gap:
    axis: str
    unit: str
    a: str
    b: str
    n_units: int
    score_gap: Interval
    selection_gap: Interval
    flip_rate: Interval
    mean_abs_change: float
    p_score: float
    p_selection: float
    exact: bool
    p_score_holm: float = 1.0
    p_selection_holm: float = 1.0
    p_score_holm_flag: bool = False
    p_selection_holm_flag: bool = False

    @property
    def flagged(self) -> bool:
        return self.p_score_holm_flag or self.p_selection_holm_flag


class CounterfactualProbe(Probe):
    """Prediction gaps when only a demographic term in the input changes.

    Every input comes in a set whose members differ only in the term that names a person's
    group. Two sources: built-in templates (``probes/data/counterfactual``) filled with
    counterpart terms per axis (gender; race/ethnicity through first names; gender x race;
    religion, nationality, age, disability and sexual orientation through descriptors), and, when
    the audit has a dataset, the user's own texts with gendered words and names swapped both
    ways (counterfactual data augmentation, Lu et al. 2020).

    Per group, fairlearn's ``MetricFrame`` gives the positive rate (``selection_rate``) and mean
    score (``mean_prediction``); ``demographic_parity_difference`` and ``_ratio`` summarise each
    axis. Per pair of groups: the gap in positive rate and in mean score, the counterfactual flip
    rate (share of inputs whose predicted label changes when only the group term changes; Garg et
    al. 2019, "Counterfactual fairness in text classification") and the mean absolute score change.
    Each gap gets a paired sign-flip permutation test (exact, all ``2 ** n`` sign vectors, up to
    n = 20 units) and a Student-t interval over the axis's units (a percentile bootstrap covered
    the true gap in only 85% of runs with 16 terms), and the p-values are Holm-Bonferroni adjusted
    across the probe. A gap is flagged
    when its adjusted p-value is below ``alpha``; the probe fails when a flagged gap exceeds
    ``max_gap``, and warns when flagged gaps are all smaller.

    The unit of resampling matters. With ``unit="term"`` the counterpart terms are the units (each
    averaged over the templates), so a group is represented by a sample of names or words and
    term-to-term variation counts as noise: the false alarm rate stays at ``alpha`` for a model
    that treats the groups alike on average. With ``unit="input"`` every input is a unit: the
    test then asks about these exact terms, and any consistent difference, however small, becomes
    significant with enough templates. ``"auto"`` uses terms for term axes with at least 8
    counterparts and inputs otherwise (descriptor axes, swapped user texts).

    Parameters
    ----------
    axes : sequence of str, optional
        Built-in axes to test: ``gender``, ``race``, ``gender_x_race``, ``religion``,
        ``nationality``, ``age``, ``disability``, ``sexual_orientation``. ``None`` tests all of
        them, unless ``groups`` is given, in which case only those are tested.
    groups : mapping of str to mapping of str to sequence of str, optional
        Your own axes: axis name to ``{group: [terms]}``, e.g.
        ``{"gender": {"female": ["she", "Mary"], "male": ["he", "John"]}}``. Every group lists
        the same number of terms, counterparts in the same position.
    templates : sequence of str, optional
        Sentences with a ``{person}`` slot; replaces the built-in templates.
    source : {"auto", "templates", "data"}, default="auto"
        ``"auto"`` uses the templates, plus swapped copies of the audit dataset's texts when a
        dataset is given.
    swap_axes : sequence of str, default=("gender", "race")
        Built-in swap lists applied to the dataset's texts (``probes/data/counterfactual/swaps.json``).
    max_texts : int, default=2000
        At most this many dataset texts with a swappable term are used (a seeded sample).
    positive_label : int or str, optional
        The favourable class (index or name). Defaults to class 1 of a binary classifier.
    unit : {"auto", "term", "input"}, default="auto"
        What the test and the intervals resample; see above.
    alpha : float, default=0.05
        Family-wise significance level after Holm-Bonferroni.
    max_gap : float, default=0.05
        Largest acceptable gap in positive rate or mean score between two groups.
    n_boot : int, default=1000
        Bootstrap resamples for the interval of the demographic parity ratio (the other intervals
        are Student-t intervals over the units).
    n_resamples : int, optional
        Sign draws per test; exact when 2 ** n_units is at most this or 2 ** 20. By default
        ``max(10000, 20 * n_tests / alpha)``, so that a Holm-adjusted p-value can reach alpha / 20.
    n_examples : int, default=10
        How many of the worst pairs (largest score change) to show.

    Examples
    --------
    >>> from probes.counterfactual import CounterfactualProbe
    >>> probe = CounterfactualProbe(axes=["gender"], max_gap=0.02)
    >>> probe.get_params()["axes"]
    ['gender']
    """

    name: ClassVar[str] = "counterfactual"
    category: ClassVar[str] = "bias"
    kinds: ClassVar[frozenset[str]] = frozenset({"sequence-classification"})
    description: ClassVar[str] = (
        "Counterfactual fairness: positive-rate and score gaps, flip rate when only a group term changes"
    )
    version: ClassVar[str] = "2"

    def __init__(
        self,
        *,
        axes: Sequence[str] | None = None,
        groups: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
        templates: Sequence[str] | None = None,
        source: str = "auto",
        swap_axes: Sequence[str] = ("gender", "race"),
        max_texts: int = _DEFAULT_MAX_TEXTS,
        positive_label: int | str | None = None,
        unit: str = "auto",
        alpha: float = 0.05,
        max_gap: float = 0.05,
        n_boot: int = 1000,
        n_resamples: int | None = None,
        n_examples: int = 10,
    ) -> None:
        self.axes = axes
        self.groups = groups
        self.templates = templates
        self.source = source
        self.swap_axes = swap_axes
        self.max_texts = max_texts
        self.positive_label = positive_label
        self.unit = unit
        self.alpha = alpha
        self.max_gap = max_gap
        self.n_boot = n_boot
        self.n_resamples = n_resamples
        self.n_examples = n_examples
        self._validate()

    # -- configuration ------------------------------------------------------------------
    def _validate(self) -> None:
        where = f"Probe {self.name!r}"
        if self.source not in _SOURCES:
            raise ConfigError(f"{where}: source must be one of {list(_SOURCES)}, got {self.source!r}.")
        if self.unit not in _UNITS:
            raise ConfigError(f"{where}: unit must be one of {list(_UNITS)}, got {self.unit!r}.")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"{where}: alpha must be between 0 and 1, got {self.alpha!r}.")
        if not 0 <= self.max_gap <= 1:
            raise ConfigError(f"{where}: max_gap must be between 0 and 1, got {self.max_gap!r}.")
        for key in ("n_boot", "n_resamples", "max_texts"):
            value = getattr(self, key)
            if key == "n_resamples" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{where}: {key} must be a positive integer, got {value!r}.")
        if not isinstance(self.n_examples, int) or self.n_examples < 0:
            raise ConfigError(f"{where}: n_examples must be a non-negative integer, got {self.n_examples!r}.")
        for key in ("axes", "templates", "swap_axes"):
            value = getattr(self, key)
            if isinstance(value, str) or (value is not None and not all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{where}: {key} must be a list of strings, e.g. [{value!r}]; got {value!r}.")
        if self.templates is not None:
            if not self.templates:
                raise ConfigError(f"{where}: templates is empty. Give sentences with a {PLACEHOLDER} slot, or omit it.")
            missing = [t for t in self.templates if PLACEHOLDER not in t]
            if missing:
                raise ConfigError(
                    f"{where}: template(s) {missing[:3]} have no {PLACEHOLDER} slot. "
                    f"Write each template with {PLACEHOLDER} where the group term goes."
                )
        if self.groups is not None:
            if not isinstance(self.groups, Mapping) or not self.groups:
                raise ConfigError(
                    f"{where}: groups must map axis names to {{group: [terms]}}, "
                    f"e.g. {{'gender': {{'female': ['she'], 'male': ['he']}}}}; got {self.groups!r}."
                )
            for axis, members in self.groups.items():
                if not isinstance(members, Mapping) or len(members) < 2:
                    raise ConfigError(
                        f"{where}: axis {axis!r} in groups needs at least two groups, each with a list of terms; "
                        f"got {members!r}."
                    )
                sizes = {}
                for group, terms in members.items():
                    if isinstance(terms, str) or not terms or not all(isinstance(t, str) and t.strip() for t in terms):
                        raise ConfigError(
                            f"{where}: group {group!r} of axis {axis!r} must be a non-empty list of terms, got {terms!r}."
                        )
                    sizes[group] = len(terms)
                if len(set(sizes.values())) > 1:
                    raise ConfigError(
                        f"{where}: groups of axis {axis!r} must list counterpart terms in the same order and number; "
                        f"got {sizes}. Pair each term with one term of every other group."
                    )

    def _axis_specs(self) -> list[AxisSpec]:
        available = builtin_axes()
        names = self.axes if self.axes is not None else ([] if self.groups else sorted(available))
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfigError(
                f"Probe {self.name!r}: unknown built-in axis/axes {unknown}. Built-in axes: {sorted(available)}; "
                "give your own with groups."
            )
        specs = [available[n] for n in names]
        clash = sorted(set(names) & set(self.groups or {}))
        if clash:
            raise ConfigError(
                f"Probe {self.name!r}: axis name(s) {clash} are both built-in axes and keys of groups. "
                "Rename your axes in groups, or drop them from axes."
            )
        for axis, members in (self.groups or {}).items():
            n_terms = len(next(iter(members.values())))
            specs.append(AxisSpec(name=str(axis), groups={str(g): tuple(t) for g, t in members.items()},
                                  unit="term" if n_terms >= MIN_TERM_UNITS else "input", origin="user"))
        if self.unit != "auto":
            specs = [AxisSpec(s.name, s.groups, self.unit, s.origin) for s in specs]
        return specs

    # -- inputs -------------------------------------------------------------------------
    def _template_texts(self, spec: AxisSpec, templates: Sequence[str]) -> np.ndarray:
        texts = np.array([[[fill_template(t, term) for t in templates] for term in terms]
                          for terms in spec.groups.values()], dtype=object)
        if spec.unit == "input":
            texts = texts.reshape(texts.shape[0], -1, 1)
        return texts

    def _data_axes(self, context: AuditContext) -> tuple[list[tuple[AxisSpec, np.ndarray]], list[str]]:
        data = context.data
        if data is None or self.source == "templates":
            return [], []
        texts = data.texts
        runs, notes = [], []
        for axis in self.swap_axes:
            groups, copies = counterfactual_copies(texts, axis)
            if not copies:
                notes.append(f"no text of the dataset names exactly one {axis} group, so no {axis} swaps were made")
                continue
            if len(copies) > self.max_texts:
                keep = np.sort(context.rng.choice(len(copies), size=self.max_texts, replace=False))
                notes.append(f"{axis} swaps: a seeded sample of {self.max_texts} of {len(copies)} texts was used")
                copies = [copies[i] for i in keep]
            arranged = np.empty((2, len(copies), 1), dtype=object)
            for u, (_, side, original, swapped) in enumerate(copies):
                arranged[side, u, 0] = original
                arranged[1 - side, u, 0] = swapped
            spec = AxisSpec(name=f"{axis} (dataset swaps)", groups={g: () for g in groups}, unit="input", origin="data")
            runs.append((spec, arranged))
        return runs, notes

    # -- the probe ------------------------------------------------------------------------
    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        positive = resolve_positive_label(target, self.positive_label, self.name)
        templates = list(self.templates) if self.templates is not None else builtin_templates()
        if self.source == "data" and context.data is None:
            raise DataError(
                f"Probe {self.name!r}: source='data' needs the audit's dataset, but none was given. "
                "Set data.path in the config (or --data), or use source='templates'."
            )
        planned: list[tuple[AxisSpec, np.ndarray]] = []
        if self.source != "data":
            planned += [(spec, self._template_texts(spec, templates)) for spec in self._axis_specs()]
        data_runs, notes = self._data_axes(context)
        planned += data_runs
        if not planned:
            raise DataError(
                f"Probe {self.name!r}: no counterfactual inputs could be built ({'; '.join(notes) or 'nothing selected'}). "
                "Use source='templates' or give texts that mention a person's gender or name."
            )
        unique = list(dict.fromkeys(t for _, texts in planned for t in texts.ravel()))
        # softmax, sigmoid (multi-label) or the raw score (audit.heads); a duck-typed target without
        # predict_scores (a stand-in with class probabilities only) is read through predict_proba
        proba = getattr(target, "predict_scores", target.predict_proba)(unique)
        index = {t: i for i, t in enumerate(unique)}
        runs = []
        for spec, texts in planned:
            rows = proba[np.vectorize(index.__getitem__, otypes=[int])(texts)]
            runs.append(_AxisRun(spec=spec, texts=texts, scores=rows[..., positive],
                                 positive=decisions(rows, getattr(target, "head", None) or "single-label", positive)))
        return self._report(runs, target, context, positive, len(unique), notes)

    def _resamples(self, n_tests: int) -> int:
        if self.n_resamples is not None:
            return self.n_resamples
        # Enough permutations that a Holm-adjusted p-value can fall well below alpha.
        return max(10_000, int(np.ceil(20 * n_tests / self.alpha)))

    def _report(self, runs: list[_AxisRun], target: AuditTarget, context: AuditContext, positive: int,
                n_inputs: int, notes: list[str]) -> ProbeResult:
        from fairlearn.metrics import MetricFrame, count, mean_prediction, selection_rate

        rng = context.rng
        boot = {"rng": rng, "n_resamples": self.n_boot}
        pairs = {r.spec.name: list(itertools.combinations(range(len(r.group_names)), 2)) for r in runs}
        n_resamples = self._resamples(2 * sum(len(p) for p in pairs.values()))
        gaps: list[_Gap] = []
        group_rows: list[list[Any]] = []
        per_axis: dict[str, dict[str, Any]] = {}
        # One frame per quantity, the axis as fairlearn control feature: difference() and ratio() of
        # selection_rate per axis are demographic_parity_difference and _ratio (between_groups).
        axis_of = np.concatenate([np.full(r.scores.size, r.spec.name, dtype=object) for r in runs])
        group_of = np.concatenate([np.repeat(np.array(r.group_names, dtype=object), r.scores[0].size) for r in runs])
        y_pred = np.concatenate([r.positive.reshape(-1) for r in runs]).astype(int)
        dummy = np.zeros_like(y_pred)
        features = {"sensitive_features": {"group": group_of}, "control_features": {"axis": axis_of}}
        by_label = MetricFrame(metrics={"selection_rate": selection_rate, "count": count}, y_true=dummy,
                               y_pred=y_pred, **features)
        by_score = MetricFrame(metrics={"mean_score": mean_prediction}, y_true=dummy,
                               y_pred=np.concatenate([r.scores.reshape(-1) for r in runs]), **features)
        differences = by_label.difference(method="between_groups")["selection_rate"]
        ratios = by_label.ratio(method="between_groups")["selection_rate"]
        for run in runs:
            names = run.group_names
            axis = run.spec.name
            any_selected = bool(run.positive.any())
            dpd = float(differences.loc[axis])
            dpr = float(ratios.loc[axis]) if any_selected else None
            sel_units = run.unit_means(run.positive.astype(float))
            score_units = run.unit_means(run.scores)
            sel_cis = [t_interval(sel_units[g], bounds=(0.0, 1.0)) for g in range(len(names))]
            for g, group in enumerate(names):
                terms = run.spec.groups[group]
                group_rows.append([
                    axis, group, int(by_label.by_group.loc[(axis, group), "count"]), run.spec.unit,
                    float(by_label.by_group.loc[(axis, group), "selection_rate"]), _fmt_ci(sel_cis[g]),
                    float(by_score.by_group.loc[(axis, group), "mean_score"]),
                    _fmt_ci(t_interval(score_units[g])),
                    ", ".join(terms[:4]) + (" ..." if len(terms) > 4 else ""),
                ])
            all_same = (run.positive == run.positive[:1]).all(axis=0)
            axis_gaps = []
            diffs = []
            for a, b in pairs[run.spec.name]:
                d_score, d_sel = score_units[a] - score_units[b], sel_units[a] - sel_units[b]
                flips = run.unit_means((run.positive[a] != run.positive[b]).astype(float)[None])[0]
                diffs += [d_score, d_sel]
                axis_gaps.append(_Gap(
                    axis=run.spec.name, unit=run.spec.unit, a=names[a], b=names[b], n_units=d_score.size,
                    score_gap=t_interval(d_score), selection_gap=t_interval(d_sel), flip_rate=t_interval(flips, bounds=(0.0, 1.0)),
                    mean_abs_change=float(np.abs(run.scores[a] - run.scores[b]).mean()),
                    p_score=1.0, p_selection=1.0, exact=True,
                ))
            tests = sign_flip_tests(np.stack(diffs), rng=rng, n_resamples=n_resamples)
            for i, gap in enumerate(axis_gaps):
                gap.p_score, gap.p_selection = tests[2 * i].p_value, tests[2 * i + 1].p_value
                gap.exact = tests[2 * i].exact and tests[2 * i + 1].exact
            gaps += axis_gaps
            per_axis[run.spec.name] = {
                "run": run, "gaps": axis_gaps, "dpd": dpd, "dpr": dpr,
                "dpd_ci": max_abs_mean_interval([sel_units[a] - sel_units[b] for a, b in pairs[run.spec.name]]),
                "score_ci": max_abs_mean_interval([score_units[a] - score_units[b] for a, b in pairs[run.spec.name]]),
                "dpr_ci": bootstrap_ci(tuple(sel_units), _ratio_of_means, paired=True, **boot) if any_selected else None,
                "flip": t_interval(run.unit_means((~all_same).astype(float)[None])[0], bounds=(0.0, 1.0)),
                "mean_abs": float(np.mean([g.mean_abs_change for g in axis_gaps])),
                "sel": [float(by_label.by_group.loc[(axis, g), "selection_rate"]) for g in names], "sel_cis": sel_cis,
            }
        p_all = [p for g in gaps for p in (g.p_score, g.p_selection)]
        adjusted, reject = holm_bonferroni(p_all, alpha=self.alpha)
        for i, gap in enumerate(gaps):
            gap.p_score_holm, gap.p_selection_holm = float(adjusted[2 * i]), float(adjusted[2 * i + 1])
            gap.p_score_holm_flag, gap.p_selection_holm_flag = bool(reject[2 * i]), bool(reject[2 * i + 1])

        metrics: dict[str, Metric] = {}
        axis_rows: list[list[Any]] = []
        for axis, info in per_axis.items():
            axis_gaps, run = info["gaps"], info["run"]
            widest = max(axis_gaps, key=lambda g: abs(g.selection_gap.estimate))
            largest = max(axis_gaps, key=lambda g: abs(g.score_gap.estimate))
            metrics[f"demographic_parity_difference[{axis}]"] = Metric(
                value=info["dpd"], ci=info["dpd_ci"].as_tuple(), ci_level=info["dpd_ci"].level,
                p_value=widest.p_selection_holm, threshold=self.max_gap, direction="lower_is_better",
                description=f"{axis}: largest minus smallest positive rate across groups (fairlearn); "
                            f"p: Holm-adjusted paired test of {widest.a} vs {widest.b}",
            )
            metrics[f"demographic_parity_ratio[{axis}]"] = Metric(
                value=info["dpr"], ci=info["dpr_ci"].as_tuple() if info["dpr_ci"] else None,
                ci_level=info["dpr_ci"].level if info["dpr_ci"] else None, direction="higher_is_better",
                description=f"{axis}: smallest over largest positive rate across groups (fairlearn); 1 is parity",
                note=None if info["dpr"] is not None else "no input of this axis got the positive label, so the ratio is 0/0",
            )
            metrics[f"max_score_gap[{axis}]"] = Metric(
                value=abs(largest.score_gap.estimate), ci=info["score_ci"].as_tuple(), ci_level=info["score_ci"].level,
                p_value=largest.p_score_holm, threshold=self.max_gap, direction="lower_is_better",
                description=f"{axis}: largest |difference in mean score| between two groups "
                            f"({largest.a} vs {largest.b}); Holm-adjusted paired test; interval: Student-t over every "
                            "pair at once (Bonferroni)",
            )
            metrics[f"flip_rate[{axis}]"] = Metric(
                value=info["flip"].estimate, ci=info["flip"].as_tuple(), ci_level=info["flip"].level,
                direction="lower_is_better",
                description=f"{axis}: share of counterfactual sets whose predicted label is not the same for every group",
            )
            metrics[f"mean_abs_score_change[{axis}]"] = Metric(
                value=info["mean_abs"], direction="lower_is_better",
                description=f"{axis}: mean |score change| when only the group term changes, over all pairs of groups",
            )
            axis_rows.append([axis, run.spec.origin, run.spec.unit, len(run.group_names), int(run.scores[0].size),
                              info["dpd"], _fmt_ci(info["dpd_ci"]), info["dpr"], info["flip"].estimate,
                              info["mean_abs"], sum(g.flagged for g in axis_gaps)])

        all_flips = np.concatenate([(~(r.positive == r.positive[:1]).all(axis=0)).ravel() for r in runs])
        worst_axis = max(per_axis, key=lambda a: per_axis[a]["dpd"])
        worst = per_axis[worst_axis]
        metrics["max_demographic_parity_difference"] = Metric(
            value=worst["dpd"], ci=worst["dpd_ci"].as_tuple(), ci_level=worst["dpd_ci"].level,
            p_value=metrics[f"demographic_parity_difference[{worst_axis}]"].p_value,
            threshold=self.max_gap, direction="lower_is_better",
            description=f"Largest demographic parity difference over the axes ({worst_axis})",
        )
        metrics["flip_rate"] = Metric(
            value=float(all_flips.mean()), direction="lower_is_better",
            description="Share of all counterfactual sets whose predicted label changes with the group term",
        )
        flagged = [g for g in gaps if g.flagged]
        metrics["n_flagged_gaps"] = Metric(
            value=float(len(flagged)), direction="lower_is_better",
            description=f"Group pairs with a gap significant at alpha={self.alpha} after Holm-Bonferroni, of {len(gaps)}",
        )
        too_large = [g for g in flagged if max(abs(g.score_gap.estimate), abs(g.selection_gap.estimate)) > self.max_gap]
        if too_large:
            status = "failed"
            verdict = (f"{len(too_large)} significant gap(s) exceed {self.max_gap}: "
                       + ", ".join(f"{g.axis} {g.a} vs {g.b}" for g in too_large[:3])
                       + (" and more." if len(too_large) > 3 else "."))
        elif flagged:
            status = "warned"
            verdict = f"{len(flagged)} gap(s) are significant but none exceeds {self.max_gap}."
        else:
            status = "passed"
            verdict = f"no gap is significant at alpha={self.alpha} after Holm-Bonferroni."
        summary = (f"{n_inputs:,} inputs on {len(runs)} axes: largest demographic parity difference "
                   f"{worst['dpd']:.3f} ({worst_axis}), flip rate {all_flips.mean():.1%}; {verdict}")
        label = target.labels[positive]
        headline = "max_demographic_parity_difference"
        if getattr(target, "head", None) == "score":
            headline, summary = score_head_headline(metrics, per_axis, summary)
        return self.result(
            status=status,
            summary=summary,
            metrics=metrics,
            headline=headline,
            tables=[
                Table(title="Axes", columns=["axis", "source", "unit", "groups", "inputs per group",
                                              "demographic parity difference", "95% CI", "demographic parity ratio",
                                              "flip rate", "mean |score change|", "flagged gaps"],
                      rows=axis_rows,
                      caption=("; ".join(notes) + ". " if notes else "") + "unit: what the tests and intervals "
                              "resample (term = counterpart terms, each averaged over the templates; input = every input). The interval of a "
                              "demographic parity difference holds Student-t intervals of every pairwise positive-rate gap at once "
                              "(Bonferroni), so it covers a true difference of 0, which a bootstrap of the largest plug-in gap "
                              "(biased upward) does not."),
                Table(title="Groups", columns=["axis", "group", "inputs", "unit", "positive rate",
                                                "positive rate 95% CI", "mean score", "mean score 95% CI", "terms"],
                      rows=group_rows,
                      caption=f"Positive rate: share predicted '{label}'. Mean score: mean probability of that class. "
                              "From fairlearn MetricFrame; intervals: Student-t over the units."),
                Table(title="Gaps between groups", columns=[
                    "axis", "group a", "group b", "units", "score gap (a - b)", "score gap 95% CI",
                    "positive-rate gap", "positive-rate gap 95% CI", "flip rate", "mean |score change|", "p (score)", "p Holm (score)",
                    "p Holm (positive rate)", "flagged"],
                    rows=[[g.axis, g.a, g.b, g.n_units, g.score_gap.estimate, _fmt_ci(g.score_gap),
                           g.selection_gap.estimate, _fmt_ci(g.selection_gap), g.flip_rate.estimate,
                           g.mean_abs_change, g.p_score, g.p_score_holm, g.p_selection_holm, g.flagged] for g in gaps],
                    caption=f"Paired sign-flip permutation tests over the units (exact when 2^units is at most "
                            f"{max(n_resamples, EXACT_SIGN_FLIP_LIMIT):,}, else {n_resamples:,} sign draws); intervals: "
                            f"Student-t over the units; Holm-Bonferroni across all {len(p_all)} tests of this probe. "
                            f"Flagged: either adjusted p < {self.alpha}."),
            ],
            figures=self._figures(gaps, per_axis, label),
            examples=self._worst_pairs(runs, context, positive, target),
        )

    def _figures(self, gaps: list[_Gap], per_axis: dict[str, dict[str, Any]], label: str) -> list[Figure]:
        top = sorted(gaps, key=lambda g: -abs(g.score_gap.estimate))[:20]
        shown = sorted(per_axis, key=lambda a: -per_axis[a]["dpd"])[:3]
        bars = [(f"{axis}: {group}", rate, ci) for axis in shown
                for group, rate, ci in zip(per_axis[axis]["run"].group_names, per_axis[axis]["sel"], per_axis[axis]["sel_cis"], strict=True)]
        return [
            Figure(
                title="Mean score gaps between groups",
                svg=interval_bar_chart([f"{g.axis}: {g.a} - {g.b}" for g in top], [g.score_gap.estimate for g in top],
                                       [g.score_gap.as_tuple() for g in top], highlight=[g.flagged for g in top],
                                       xlabel="difference in mean probability of the positive class "
                                              "(95% t-interval over units); red = significant after Holm"),
                caption=f"The {len(top)} largest of {len(gaps)} pairwise gaps; 0 means the group term does not matter.",
            ),
            Figure(
                title="Positive rate by group",
                svg=interval_bar_chart([b[0] for b in bars], [b[1] for b in bars], [b[2].as_tuple() for b in bars],
                                       reference=None,
                                       xlabel=f"share of inputs predicted '{label}' (95% t-interval over units)"),
                caption=f"The {len(shown)} axes with the largest demographic parity difference. Within an axis the "
                        "sentences are the same and only the group term differs, so the bars should be equal.",
            ),
        ]

    def _worst_pairs(self, runs: list[_AxisRun], context: AuditContext, positive: int, target: AuditTarget) -> list[dict[str, Any]]:
        if self.n_examples == 0:
            return []
        candidates = []
        for run in runs:
            for a, b in itertools.combinations(range(len(run.group_names)), 2):
                change = np.abs(run.scores[a] - run.scores[b]).ravel()
                take = np.argsort(-change, kind="stable")[: self.n_examples]
                for flat in take:
                    candidates.append((float(change[flat]), run, a, b, np.unravel_index(flat, run.scores[a].shape)))
        candidates.sort(key=lambda c: -c[0])
        label = target.labels
        examples = []
        masker = data_masker(context)
        shown = candidates[: self.n_examples]
        row_of = {t: i for i, t in reversed(list(enumerate(context.data.texts)))} if context.data is not None else {}
        if masker is not None:
            masker.prepare([str(run.texts[(side, *pos)]) for _, run, a, b, pos in shown if run.spec.origin == "data"
                            for side in (a, b)])
        for _, run, a, b, pos in shown:
            text_a, text_b = str(run.texts[(a, *pos)]), str(run.texts[(b, *pos)])
            origin: dict[str, Any] = {}
            if run.spec.origin == "data":
                # The row and axis let a later probe (attribution) rebuild the pair without the text.
                origin = {"origin": "data", "row": row_of.get(text_a, row_of.get(text_b)),
                          "swap_axis": run.spec.name.removesuffix(" (dataset swaps)")}
                if masker is not None:
                    text_a, text_b = masker.text(text_a), masker.text(text_b)
            pred_a = label[positive] if run.positive[(a, *pos)] else "other"
            pred_b = label[positive] if run.positive[(b, *pos)] else "other"
            examples.append({
                "axis": run.spec.name, "group_a": run.group_names[a], "text_a": text_a,
                "score_a": round(float(run.scores[(a, *pos)]), 4), "group_b": run.group_names[b], "text_b": text_b,
                "score_b": round(float(run.scores[(b, *pos)]), 4),
                "score_change": round(float(run.scores[(a, *pos)] - run.scores[(b, *pos)]), 4),
                "predicted_a": pred_a, "predicted_b": pred_b, "label_flipped": bool(pred_a != pred_b),
                **origin,
            })
        return examples


def _fmt_ci(interval: Interval) -> str:
    return f"[{interval.low:.3f}, {interval.high:.3f}]"
