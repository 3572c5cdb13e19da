"""Group fairness of a sequence classifier on the user's labelled evaluation data.

Per group of each sensitive feature (and of their intersection): accuracy, selection rate,
true/false positive and false negative rates with fairlearn ``MetricFrame`` and its bootstrap
intervals; ``demographic_parity_difference`` and ``equalized_odds_difference`` (Hardt et al.
2016); and, from the classifier's scores, the subgroup, BPSN and BNSP AUCs of Borkan et al. 2019
("Nuanced metrics for measuring unintended bias with real data for text classification").
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from audit.errors import ConfigError, DataError
from audit.figures import interval_bar_chart
from audit.heads import decisions
from audit.probe import Figure, Metric, Probe, ProbeResult, Table
from audit.stats import Interval, bootstrap_ci, holm_bonferroni, range_interval, stratified_permutation_test
from probes.counterfactual import resolve_positive_label

if TYPE_CHECKING:
    from audit.context import AuditContext
    from audit.target import AuditTarget

__all__ = ["GroupFairnessProbe", "borkan_aucs", "equalized_odds_gap"]

_RATES = ("accuracy", "selection_rate", "true_positive_rate", "false_positive_rate", "false_negative_rate")
_GAPS = ("demographic_parity_difference[", "equalized_odds_difference[")
_NEED = {"true_positive_rate": "positives", "false_negative_rate": "positives", "false_positive_rate": "negatives"}


def borkan_aucs(y_true: np.ndarray, scores: np.ndarray, in_group: np.ndarray) -> dict[str, float | None]:
    """Subgroup, BPSN and BNSP AUC of one group (Borkan et al. 2019), ``None`` where undefined.

    - subgroup AUC: the group's examples only;
    - BPSN (background positive, subgroup negative): positives outside the group with negatives
      inside it; low when the group's negatives score high (false positives for the group);
    - BNSP (background negative, subgroup positive): negatives outside with positives inside;
      low when the group's positives score low (false negatives for the group).

    Examples
    --------
    >>> import numpy as np
    >>> from probes.group_fairness import borkan_aucs
    >>> y = np.array([0, 1, 0, 1]); s = np.array([0.1, 0.9, 0.8, 0.7]); g = np.array([0, 0, 1, 1], bool)
    >>> borkan_aucs(y, s, g)["bpsn_auc"]  # background positive 0.9 above the group's negative 0.8
    1.0
    """
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true).astype(bool)
    subsets = {
        "subgroup_auc": in_group,
        "bpsn_auc": (~in_group & y_true) | (in_group & ~y_true),
        "bnsp_auc": (~in_group & ~y_true) | (in_group & y_true),
    }
    out: dict[str, float | None] = {}
    for key, mask in subsets.items():
        labels = y_true[mask]
        out[key] = float(roc_auc_score(labels, scores[mask])) if 0 < labels.sum() < labels.size else None
    return out


def equalized_odds_gap(y_true: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, n_groups: int,
                       axis: int = -1) -> np.ndarray:
    """Largest between-group difference in TPR or FPR (fairlearn's ``equalized_odds_difference``),
    vectorised over resamples along the leading axes; groups where a rate is undefined are skipped."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    onehot = (np.asarray(codes)[..., None] == np.arange(n_groups)).astype(float)
    positives = np.einsum("...n,...ng->...g", y_true, onehot)
    negatives = np.einsum("...n,...ng->...g", 1 - y_true, onehot)
    true_pos = np.einsum("...n,...ng->...g", y_true * y_pred, onehot)
    false_pos = np.einsum("...n,...ng->...g", (1 - y_true) * y_pred, onehot)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.where(positives > 0, true_pos / positives, np.nan)
        fpr = np.where(negatives > 0, false_pos / negatives, np.nan)
    gaps = []
    for rate in (tpr, fpr):
        defined = np.isfinite(rate).sum(axis=-1) >= 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gap = np.nanmax(rate, axis=-1) - np.nanmin(rate, axis=-1)
        gaps.append(np.where(defined, gap, 0.0))
    return np.maximum(*gaps)


def _selection_gap(y_pred: np.ndarray, codes: np.ndarray, n_groups: int, axis: int = -1) -> np.ndarray:
    onehot = (np.asarray(codes)[..., None] == np.arange(n_groups)).astype(float)
    size = onehot.sum(axis=-2)
    rate = np.where(size > 0, np.einsum("...n,...ng->...g", np.asarray(y_pred, float), onehot) / np.maximum(size, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(rate, axis=-1) - np.nanmin(rate, axis=-1)


def _binary_truth(values: Any, labels: list[str], positive: int, column: str, path: str) -> np.ndarray:
    where = f"Probe 'group_fairness': label column {column!r} of {path!r}"
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any():
        raise DataError(f"{where} is empty in {int(missing.sum())} row(s) (first: row {int(np.flatnonzero(missing)[0])}). "
                        "Fill or drop them.")
    distinct = list(dict.fromkeys(values.tolist()))
    if len(distinct) < 2:
        raise DataError(f"{where} has a single class ({distinct[0]!r}); rates per outcome need both classes. "
                        "Give evaluation data with both outcomes.")
    mapping = {}
    for value in distinct:
        text = str(value).strip()
        if text in labels:
            mapping[value] = labels.index(text)
        elif text.lstrip("-").isdigit() and 0 <= int(text) < len(labels):
            mapping[value] = int(text)
        elif isinstance(value, float) and value.is_integer() and 0 <= int(value) < len(labels):
            mapping[value] = int(value)
        else:
            raise DataError(f"{where} holds {value!r}, which is neither a class name of the model {labels} nor a "
                            f"class index 0..{len(labels) - 1}. Map the labels to the model's classes.")
    return np.array([mapping[v] for v in values.tolist()]) == positive


def _cell(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


class GroupFairnessProbe(Probe):
    """Error rates and outcomes per group on labelled data, with intervals and AUC-based bias metrics.

    For each sensitive feature of the audit dataset (and their intersection when there are
    several), fairlearn's ``MetricFrame`` gives per group: accuracy, selection rate, true positive
    rate, false positive rate and false negative rate, each with a percentile bootstrap interval
    (fairlearn's ``n_boot``). ``demographic_parity_difference`` (largest gap in selection rate) and
    ``equalized_odds_difference`` (largest gap in TPR or FPR; Hardt et al. 2016) summarise each
    feature. From the classifier's scores, Borkan et al. (2019) AUCs per group: subgroup AUC,
    BPSN AUC (low: the group's negatives are scored like positives) and BNSP AUC (low: the
    group's positives are scored like negatives).

    A cell that cannot be computed is left empty and says why (a group with no positives has no
    true positive rate; fairlearn would report 0). Groups with no positives or no negatives are
    left out of ``equalized_odds_difference`` and the exclusion is noted.

    The verdict is a test. Each parity and equalized odds difference gets a permutation p-value
    (``n_permutations`` shuffles of the predictions across all rows for parity, within each true
    label for equalized odds; exact in distribution when the group has no effect on the
    predictions, or none given the label), Holm-adjusted over every gap of the probe. A
    significant gap above ``max_gap`` fails, a significant gap within it warns, and a gap above
    ``max_gap`` that is not significant is reported as inconclusive without changing the status.
    The gaps' intervals bound every group's rate at once (Wilson intervals, Bonferroni over the
    groups and, for equalized odds, the two rates), so they cover the true gap, zero included.

    Parameters
    ----------
    positive_label : int or str, optional
        The favourable class (index or name). Defaults to class 1 of a binary classifier.
    threshold : float, optional
        Predict positive when the positive-class probability is at least this. By default the
        predicted label is the most probable class.
    intersections : bool, default=True
        With several sensitive features, also analyse their combinations.
    max_gap : float, default=0.1
        Largest acceptable demographic parity or equalized odds difference.
    min_group_size : int, default=30
        Groups smaller than this are marked: their rates and intervals are unreliable.
    n_boot : int, default=100
        fairlearn ``MetricFrame`` bootstrap resamples for the per-group intervals (fairlearn's
        bootstrap is slow: about 0.05 s per resample per feature).
    ci_level : float, default=0.95
    alpha : float, default=0.05
        Family-wise level of the Holm-adjusted gap tests.
    n_permutations : int, default=2000
        Shuffles per gap test (the smallest p-value is ``1 / (n_permutations + 1)``).

    Examples
    --------
    >>> from probes.group_fairness import GroupFairnessProbe
    >>> GroupFairnessProbe(max_gap=0.05).get_params()["max_gap"]
    0.05
    """

    name: ClassVar[str] = "group_fairness"
    category: ClassVar[str] = "bias"
    kinds: ClassVar[frozenset[str]] = frozenset({"sequence-classification"})
    description: ClassVar[str] = (
        "Group fairness on labelled data: per-group error rates, parity and equalized odds, Borkan AUCs"
    )
    version: ClassVar[str] = "2"
    requires_data: ClassVar[bool] = True

    def __init__(
        self,
        *,
        positive_label: int | str | None = None,
        threshold: float | None = None,
        intersections: bool = True,
        max_gap: float = 0.1,
        min_group_size: int = 30,
        n_boot: int = 100,
        ci_level: float = 0.95,
        alpha: float = 0.05,
        n_permutations: int = 2000,
    ) -> None:
        self.positive_label = positive_label
        self.threshold = threshold
        self.intersections = intersections
        self.max_gap = max_gap
        self.min_group_size = min_group_size
        self.n_boot = n_boot
        self.ci_level = ci_level
        self.alpha = alpha
        self.n_permutations = n_permutations
        where = f"Probe {self.name!r}"
        if not 0 < alpha < 1:
            raise ConfigError(f"{where}: alpha must be between 0 and 1, got {alpha!r}.")
        if not isinstance(n_permutations, int) or isinstance(n_permutations, bool) or n_permutations < 1:
            raise ConfigError(f"{where}: n_permutations must be a positive integer, got {n_permutations!r}.")
        if threshold is not None and not 0 < threshold < 1:
            raise ConfigError(f"{where}: threshold must be between 0 and 1, got {threshold!r}.")
        if not 0 <= max_gap <= 1:
            raise ConfigError(f"{where}: max_gap must be between 0 and 1, got {max_gap!r}.")
        if not isinstance(n_boot, int) or n_boot < 2:
            raise ConfigError(f"{where}: n_boot must be an integer of at least 2, got {n_boot!r}.")
        if not 0 < ci_level < 1:
            raise ConfigError(f"{where}: ci_level must be between 0 and 1, got {ci_level!r}.")
        if not isinstance(min_group_size, int) or min_group_size < 1:
            raise ConfigError(f"{where}: min_group_size must be a positive integer, got {min_group_size!r}.")

    def _columns(self, context: AuditContext) -> tuple[Any, str, list[str]]:
        data = context.data
        if data is None:
            raise DataError(f"Probe {self.name!r} needs a labelled dataset; none was given. Set data.path (or --data).")
        frame = data.frame
        columns = [str(c) for c in frame.columns]
        if data.label_column is None:
            raise DataError(f"Probe {self.name!r} needs a label column; none was named for {data.path!r}. "
                            f"Set data.label_column to one of {columns}.")
        if not data.sensitive_features:
            raise DataError(f"Probe {self.name!r} needs at least one sensitive feature; none was named for "
                            f"{data.path!r}. Set data.sensitive_features to columns among {columns}.")
        for role, column in [("text_column", data.text_column), ("label_column", data.label_column),
                             *[("sensitive_features", c) for c in data.sensitive_features]]:
            if column not in columns:
                raise DataError(f"Probe {self.name!r}: column {column!r} ({role}) is not in {data.path!r}. "
                                f"Columns: {columns}. Set {role} to one of them.")
        return frame, data.label_column, list(data.sensitive_features)

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        import pandas as pd

        frame, label_column, features = self._columns(context)
        data = context.data
        assert data is not None
        positive = resolve_positive_label(target, self.positive_label, self.name)
        y_true = _binary_truth(frame[label_column], target.labels, positive, label_column, data.path)
        sensitive = pd.DataFrame({f: frame[f].astype("string").fillna("(missing)").to_numpy(dtype=object)
                                  for f in features})
        for feature in features:
            groups = sensitive[feature].unique().tolist()
            if len(groups) < 2:
                raise DataError(f"Probe {self.name!r}: sensitive feature {feature!r} of {data.path!r} has a single "
                                f"group ({groups[0]!r}); fairness compares groups. Give data with at least two groups.")
        proba = target.predict_proba(data.texts)
        scores = proba[:, positive]
        y_pred = scores >= self.threshold if self.threshold is not None else decisions(
            proba, getattr(target, "head", None) or "single-label", positive)
        fitted_on = _threshold_feature(target)
        if self.threshold is None and fitted_on is not None and fitted_on in frame.columns:
            # A post-processed model (ThresholdOptimizer) decides per group: audit what it will do.
            groups = frame[fitted_on].astype("string").fillna("(missing)").tolist()
            y_pred = target.predict(data.texts, sensitive_features=groups) == positive
        analyses = [(f, sensitive[[f]]) for f in features]
        if self.intersections and len(features) > 1:
            analyses.append((" x ".join(features), sensitive[features]))
        metrics: dict[str, Metric] = {
            "accuracy": Metric(value=float(np.mean(y_true == y_pred)), direction="higher_is_better",
                               description="Share of rows whose predicted outcome matches the label"),
        }
        tables, figures = [], []
        for name, columns in analyses:
            table, figure, feature_metrics = self._analyse(name, columns, y_true, y_pred, scores, context)
            tables.append(table)
            figures.append(figure)
            metrics.update(feature_metrics)
        worst = self._verdicts(metrics)
        status = "failed" if any(v == "failed" for v, _ in worst) else "warned" if any(
            v == "warned" for v, _ in worst) else "passed"
        names = [name for name, _ in analyses]
        largest = max(names, key=lambda n: metrics[f"equalized_odds_difference[{n}]"].value or 0.0)
        headline_name = f"equalized_odds_difference[{largest}]"
        eod_value = metrics[headline_name].value
        if worst:
            verdict = "; ".join(msg for _, msg in worst[:4]) + ("; ..." if len(worst) > 4 else "") + "."
        else:
            verdict = f"no parity or equalized odds difference is significant at alpha={self.alpha} after Holm."
        eod_text = f"{eod_value:.3f} ({largest})" if eod_value is not None else "not computable (no group has both outcomes)"
        return self.result(
            status=status,
            summary=f"{len(y_true):,} labelled rows, accuracy {metrics['accuracy'].value:.3f}, largest equalized odds "
                    f"difference {eod_text}; {verdict}",
            metrics=metrics,
            headline=headline_name,
            tables=tables,
            figures=figures,
        )

    def _verdicts(self, metrics: dict[str, Metric]) -> list[tuple[str, str]]:
        """Holm over every gap's permutation p-value: significant and above ``max_gap`` fails,
        significant warns; a gap above ``max_gap`` that is not significant is said, not judged."""
        keys = [k for k, m in metrics.items() if k.startswith(_GAPS) and m.p_value is not None]
        adjusted, reject = holm_bonferroni([metrics[k].p_value for k in keys], alpha=self.alpha)
        out = []
        for key, p_adj, significant in zip(keys, adjusted, reject, strict=True):
            m = metrics[key]
            metrics[key] = m.model_copy(update={"p_value": float(p_adj)})
            what = f"{key.replace('_', ' ')} {m.value:.3f} (p Holm {p_adj:.3g})"
            if significant:
                out.append(("failed" if m.value > self.max_gap else "warned", what + (
                    f" > {self.max_gap}" if m.value > self.max_gap else f", within {self.max_gap}")))
            elif m.value > self.max_gap:
                out.append(("inconclusive", what + f" > {self.max_gap} but not significant: too little data to tell"))
        return sorted(out, key=lambda v: ("failed", "warned", "inconclusive").index(v[0]))

    def _parity_test(self, y_pred: np.ndarray, codes: np.ndarray, n_groups: int,
                     context: AuditContext) -> tuple[float, Interval]:
        test = stratified_permutation_test(y_pred.astype(float), lambda p: _selection_gap(p, codes, n_groups),
                                           rng=context.rng, n_resamples=self.n_permutations)
        onehot = codes[:, None] == np.arange(n_groups)
        ci = range_interval((onehot * y_pred[:, None]).sum(0), onehot.sum(0), confidence_level=self.ci_level)
        return test.p_value, ci

    def _odds_test(self, y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray, groups: list[str],
                   context: AuditContext) -> tuple[float, Interval]:
        codes = np.searchsorted(np.array(groups, dtype=object), labels)
        test = stratified_permutation_test(
            y_pred.astype(float), lambda p: equalized_odds_gap(y_true, p, codes, len(groups)), rng=context.rng,
            strata=y_true, n_resamples=self.n_permutations)
        onehot = codes[:, None] == np.arange(len(groups))
        level = 1 - (1 - self.ci_level) / 2  # Bonferroni over the two rates
        tpr = range_interval((onehot * (y_pred & y_true)[:, None]).sum(0), (onehot * y_true[:, None]).sum(0),
                             confidence_level=level)
        fpr = range_interval((onehot * (y_pred & ~y_true)[:, None]).sum(0), (onehot * ~y_true[:, None]).sum(0),
                             confidence_level=level)
        ci = Interval(max(tpr.estimate, fpr.estimate), max(tpr.low, fpr.low), max(tpr.high, fpr.high), self.ci_level)
        return test.p_value, ci

    def _analyse(self, name: str, columns: Any, y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray,
                 context: AuditContext) -> tuple[Table, Figure, dict[str, Metric]]:
        from fairlearn.metrics import (
            MetricFrame,
            count,
            demographic_parity_difference,
            equalized_odds_difference,
            false_negative_rate,
            false_positive_rate,
            selection_rate,
            true_positive_rate,
        )
        from sklearn.metrics import accuracy_score

        alpha = (1 - self.ci_level) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = MetricFrame(
                metrics={"accuracy": accuracy_score, "selection_rate": selection_rate,
                         "true_positive_rate": true_positive_rate, "false_positive_rate": false_positive_rate,
                         "false_negative_rate": false_negative_rate, "count": count},
                y_true=y_true.astype(int), y_pred=y_pred.astype(int), sensitive_features=columns,
                n_boot=self.n_boot, ci_quantiles=[alpha, 1 - alpha],
                random_state=int(context.rng.integers(2**31 - 1)),
            )
        by_group, low, high = frame.by_group, frame.by_group_ci[0], frame.by_group_ci[1]
        labels = columns.astype(str).agg(", ".join, axis=1).to_numpy()
        present = list(dict.fromkeys(labels))
        keys = {", ".join(map(str, k)) if isinstance(k, tuple) else str(k): k for k in by_group.index}
        rows, notes, evaluable = [], [], []
        bars, bar_cis = [], []
        for group in sorted(keys):
            key = keys[group]
            members = labels == group
            n, n_pos = int(members.sum()), int(y_true[members].sum())
            if n == 0:
                rows.append([group, 0, None, *[None] * (2 * len(_RATES)), None, None, None,
                             "no rows: this combination does not occur"])
                continue
            counts = {"positives": n_pos, "negatives": n - n_pos}
            cells, why = [], []
            for rate in _RATES:
                need = _NEED.get(rate)
                if need and counts[need] == 0:
                    cells += [None, None]
                    why.append(f"{rate.replace('_', ' ')}: no {need}")
                else:
                    cells += [_cell(by_group.loc[key, rate]),
                              f"[{low.loc[key, rate]:.3f}, {high.loc[key, rate]:.3f}]"]
            aucs = borkan_aucs(y_true, scores, members)
            if aucs["subgroup_auc"] is None:
                why.append("subgroup AUC: one class only")
            if n_pos and n - n_pos:
                evaluable.append(group)
            if n < self.min_group_size:
                why.append(f"small group (n < {self.min_group_size}): unreliable")
            rows.append([group, n, n_pos, *cells, aucs["subgroup_auc"], aucs["bpsn_auc"], aucs["bnsp_auc"],
                         "; ".join(why)])
            bars.append(group)
            bar_cis.append((float(low.loc[key, "selection_rate"]), float(high.loc[key, "selection_rate"])))
        codes = np.searchsorted(np.array(sorted(present), dtype=object), labels)
        n_groups = len(present)
        dpd = float(demographic_parity_difference(y_true, y_pred, sensitive_features=columns))
        keep = np.isin(labels, evaluable)
        if len(evaluable) >= 2:
            eod = float(equalized_odds_difference(y_true[keep], y_pred[keep], sensitive_features=columns[keep]))
        else:
            eod = None
        excluded = sorted(set(present) - set(evaluable))
        if excluded:
            notes.append(f"groups without both outcomes left out of equalized odds: {', '.join(excluded)}")
        gap_tests = {"demographic_parity_difference": self._parity_test(y_pred, codes, n_groups, context)}
        gap_tests["equalized_odds_difference"] = (
            self._odds_test(y_true[keep], y_pred[keep], labels[keep], sorted(evaluable), context) if eod is not None else None)
        metrics: dict[str, Metric] = {}
        for metric_name, value, meaning in (
            ("demographic_parity_difference", dpd, "largest gap in selection rate between groups"),
            ("equalized_odds_difference", eod, "largest gap in true or false positive rate between groups"),
        ):
            test = gap_tests[metric_name]
            ci = test[1] if test else None
            metrics[f"{metric_name}[{name}]"] = Metric(
                value=value, ci=ci.as_tuple() if ci else None, ci_level=self.ci_level if ci else None,
                p_value=test[0] if test else None, threshold=self.max_gap, direction="lower_is_better",
                description=f"{name}: {meaning} (fairlearn); p: permutation test of no group "
                            "effect, Holm-adjusted over the probe; interval: simultaneous Wilson bounds",
                note=None if value is not None else "fewer than two groups have both outcomes",
            )
        for auc_key, column in (("subgroup_auc", -4), ("bpsn_auc", -3), ("bnsp_auc", -2)):
            values = [(r[column], r[0]) for r in rows if r[column] is not None]
            if values:
                lowest, group = min(values)
                auc_ci = auc_interval(y_true, scores, _auc_mask(auc_key, y_true, labels == group), context.rng,
                                      n_resamples=max(self.n_boot, 200), level=self.ci_level)
                metrics[f"min_{auc_key}[{name}]"] = Metric(
                    value=lowest, ci=auc_ci.as_tuple(), ci_level=self.ci_level, direction="higher_is_better",
                    description=f"{name}: lowest {auc_key.replace('_', ' ').upper().replace(' AUC', '')} AUC "
                                f"(Borkan et al. 2019), group {group}; interval: that AUC, bootstrap stratified by label",
                )
            else:
                metrics[f"min_{auc_key}[{name}]"] = Metric(value=None, note="no group has both outcomes",
                                                           description=f"{name}: lowest {auc_key} (Borkan et al. 2019)")
        columns_out = ["group", "rows", "positives"]
        for rate in _RATES:
            columns_out += [rate.replace("_", " "), f"{rate.replace('_', ' ')} CI"]
        columns_out += ["subgroup AUC", "BPSN AUC", "BNSP AUC", "notes"]
        table = Table(
            title=f"Groups by {name}", columns=columns_out, rows=rows,
            caption=("; ".join(notes) + ". " if notes else "")
            + f"Rates from fairlearn MetricFrame with {self.ci_level:.0%} bootstrap intervals ({self.n_boot} resamples). "
              "Empty cells cannot be computed (see notes). AUCs from scikit-learn roc_auc_score. Parity and equalized "
              "odds differences: p from a permutation test (predictions shuffled across rows for parity, within "
              "each true label for equalized odds: exact under no group effect), Holm-adjusted over the probe; "
              "their intervals hold Wilson intervals for every group's rate at once (Bonferroni), so they cover a "
              "true gap of 0, which a bootstrap of the largest plug-in gap (biased upward) does not.",
        )
        figure = Figure(
            title=f"Selection rate by {name}",
            svg=interval_bar_chart(bars, [float(frame.by_group.loc[keys[g], "selection_rate"]) for g in bars], bar_cis,
                                   reference=None, xlabel=f"share predicted positive ({self.ci_level:.0%} bootstrap interval)"),
            caption="Equal bars mean demographic parity; compare with the error rates in the table.",
        )
        return table, figure, metrics


def _threshold_feature(target: AuditTarget) -> str | None:
    """The sensitive feature that saved group thresholds were fitted on, if the model has them."""
    if getattr(target, "thresholds", None) is None:
        return None
    record = target.records.get("debiasing") if isinstance(target.records, dict) else None
    parameters = record.get("parameters") if isinstance(record, dict) else None
    feature = parameters.get("sensitive_feature") if isinstance(parameters, dict) else None
    return str(feature) if feature else None


def _auc_mask(kind: str, y_true: np.ndarray, in_group: np.ndarray) -> np.ndarray:
    """Rows that enter one of Borkan et al.'s AUCs (see :func:`borkan_aucs`)."""
    y = y_true.astype(bool)
    if kind == "subgroup_auc":
        return in_group
    if kind == "bpsn_auc":
        return (~in_group & y) | (in_group & ~y)
    return (~in_group & ~y) | (in_group & y)


def _mann_whitney_auc(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC from ranks (Mann-Whitney U / (n1 n0), ties counted half), vectorised over leading axes."""
    from scipy.stats import rankdata

    pos = np.moveaxis(np.asarray(pos, dtype=float), axis, -1)
    neg = np.moveaxis(np.asarray(neg, dtype=float), axis, -1)
    n1, n0 = pos.shape[-1], neg.shape[-1]
    ranks = rankdata(np.concatenate([pos, neg], axis=-1), axis=-1)
    return (ranks[..., :n1].sum(axis=-1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def auc_interval(y_true: np.ndarray, scores: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *,
                 n_resamples: int = 1000, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of an AUC, resampling positives and negatives separately, so every
    resample has both classes (the AUC is a two-sample statistic)."""
    y = y_true[mask].astype(bool)
    s = scores[mask].astype(float)
    return bootstrap_ci((s[y], s[~y]), _mann_whitney_auc, rng=rng, n_resamples=n_resamples, confidence_level=level)
