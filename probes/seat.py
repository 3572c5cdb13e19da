"""SEAT: the Sentence Encoder Association Test (May et al. 2019), after WEAT (Caliskan et al. 2017)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import stats as _st

from audit.context import AuditContext
from audit.errors import ConfigError, DataError
from audit.figures import interval_bar_chart
from audit.probe import KINDS, Figure, Metric, Probe, ProbeResult, Table
from audit.stats import Interval, holm_bonferroni, permutation_test
from audit.target import POOLINGS, AuditTarget

__all__ = ["SEATProbe", "SEATTest", "builtin_tests", "effect_size", "load_test_file"]

_ROLES = ("targ1", "targ2", "attr1", "attr2")


@dataclass(frozen=True)
class SEATTest:
    """Two target sets X, Y and two attribute sets A, B, as sentences.

    ``X_units`` and ``Y_units`` name, per target sentence, the unit it was drawn from (for the
    built-in tests, the target word the templates were filled with). Empty means each sentence
    is its own unit. Sentences of one unit are correlated, so the test permutes and the interval
    resamples units, not sentences.
    """

    name: str
    title: str
    categories: tuple[str, str, str, str]
    X: tuple[str, ...]
    Y: tuple[str, ...]
    A: tuple[str, ...]
    B: tuple[str, ...]
    source: str
    X_units: tuple[str, ...] = ()
    Y_units: tuple[str, ...] = ()


def _data_dir() -> Any:
    return resources.files("probes") / "data" / "seat"


def builtin_tests() -> dict[str, SEATTest]:
    """The built-in tests: word lists in ``probes/data/seat``, expanded with bleached templates."""
    folder = _data_dir()
    templates = json.loads((folder / "templates.json").read_text(encoding="utf-8"))
    tests = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json") or entry.name == "templates.json":
            continue
        spec = json.loads(entry.read_text(encoding="utf-8"))
        sets, units = [], []
        for role in _ROLES:
            part = spec[role]
            sets.append(tuple(t.format(w) for w in part["words"] for t in templates[part["template"]]))
            units.append(tuple(w for w in part["words"] for _ in templates[part["template"]]))
        tests[spec["name"]] = SEATTest(
            name=spec["name"], title=spec["title"],
            categories=tuple(spec[r]["category"] for r in _ROLES),  # type: ignore[arg-type]
            X=sets[0], Y=sets[1], A=sets[2], B=sets[3], source=spec["reference"],
            X_units=units[0], Y_units=units[1],
        )
    return tests


def load_test_file(path: str | Path) -> SEATTest:
    """Read a test in the sent-bias JSON format: ``targ1``, ``targ2``, ``attr1``, ``attr2``,
    each ``{"category": str, "examples": [str, ...]}``.

    Each example is its own unit, unless ``targ1``/``targ2`` carry an optional ``"units"`` list
    (one label per example, e.g. the word a template was filled with): examples sharing a label
    are then permuted and resampled together.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"SEAT test file {str(source)!r} does not exist. Check the path in test_files.")
    try:
        spec = json.loads(source.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"SEAT test file {str(source)!r} is not UTF-8 text. Re-encode it as UTF-8.") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"SEAT test file {str(source)!r} is not valid JSON (line {exc.lineno}: {exc.msg}). "
            "Use the sent-bias format: targ1, targ2, attr1, attr2 with category and examples."
        ) from None
    if not isinstance(spec, dict):
        raise DataError(f"SEAT test file {str(source)!r} must hold one JSON object, got {type(spec).__name__}.")
    sets = []
    for role in _ROLES:
        part = spec.get(role)
        examples = part.get("examples") if isinstance(part, dict) else None
        if not isinstance(examples, list) or not examples or not all(isinstance(e, str) for e in examples):
            raise DataError(
                f"SEAT test file {str(source)!r}: {role!r} must be an object with a non-empty "
                f"'examples' list of strings; got {type(part).__name__ if part is not None else 'nothing'}."
            )
        sets.append(tuple(examples))
    units = [_file_units(source, role, spec[role]) for role in _ROLES[:2]]
    stem = source.name.split(".")[0]
    categories = tuple(str(spec[r].get("category", r)) for r in _ROLES)
    return SEATTest(name=stem, title=f"{categories[0]} vs {categories[1]} x {categories[2]} vs {categories[3]}",
                    categories=categories, X=sets[0], Y=sets[1], A=sets[2], B=sets[3],  # type: ignore[arg-type]
                    source=str(source), X_units=units[0], Y_units=units[1])


def _file_units(source: Path, role: str, part: dict[str, Any]) -> tuple[str, ...]:
    units = part.get("units")
    if units is None:
        return ()
    if not isinstance(units, list) or len(units) != len(part["examples"]) or not all(isinstance(u, str) for u in units):
        raise DataError(
            f"SEAT test file {str(source)!r}: {role!r} 'units' must be a list of strings, one per example "
            f"({len(part['examples'])}); got {type(units).__name__} of length "
            f"{len(units) if isinstance(units, list) else 'n/a'}. Omit it to treat each example as its own unit."
        )
    return tuple(units)


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def association(w: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b), for each row of ``w``."""
    w, A, B = _unit(w), _unit(A), _unit(B)
    return (w @ A.T).mean(axis=1) - (w @ B.T).mean(axis=1)


def _effect(sx: np.ndarray, sy: np.ndarray, axis: int = -1) -> np.ndarray:
    both = np.concatenate([sx, sy], axis=axis)
    return (np.mean(sx, axis=axis) - np.mean(sy, axis=axis)) / np.std(both, axis=axis, ddof=1)


def _unit_index(units: Sequence[str], n: int) -> np.ndarray:
    """Unit number of each of ``n`` sentences (0, 1, ...); each sentence its own unit when ``units`` is empty."""
    if not units:
        return np.arange(n)
    labels = {u: k for k, u in enumerate(dict.fromkeys(units))}
    return np.array([labels[u] for u in units])


def unit_means(s: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Mean association of each unit's sentences: the values the permutation test re-partitions."""
    return np.bincount(units, weights=s) / np.bincount(units)


def cluster_bootstrap_effect(
    sx: np.ndarray, ux: np.ndarray, sy: np.ndarray, uy: np.ndarray, *, rng: np.random.Generator, n_resamples: int,
) -> np.ndarray:
    """Replicates of the sentence-level effect size when units (words) are resampled, with all their sentences.

    Each replicate draws k - 1 of the k units of X, and of Y, with replacement (so a mean's
    bootstrap variance is s^2 / k with the unbiased s^2; k of k gives (k - 1) / k of it, too
    narrow with 8 words), and computes the effect size over the drawn units' sentences. With one
    sentence per unit this is (nearly) the ordinary bootstrap of sentences.
    """
    centre = np.concatenate([sx, sy]).mean()  # centred, so the variance from sums loses no precision
    parts = []
    for s, u in ((sx - centre, ux), (sy - centre, uy)):
        k = int(u.max()) + 1
        counts = rng.multinomial(max(k - 1, 1), np.full(k, 1.0 / k), size=n_resamples).astype(float)
        parts.append((counts @ np.bincount(u, minlength=k), counts @ np.bincount(u, weights=s, minlength=k),
                      counts @ np.bincount(u, weights=s * s, minlength=k)))
    (nx, tx, qx), (ny, ty, qy) = parts
    total = nx + ny
    var = (qx + qy - (tx + ty) ** 2 / total) / (total - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (tx / nx - ty / ny) / np.sqrt(var)


def _unit_name(test: SEATTest) -> str:
    if not test.X_units and not test.Y_units:
        return f"{len(test.X)} + {len(test.Y)} target sentences"
    return f"{len(set(test.X_units or test.X))} + {len(set(test.Y_units or test.Y))} target words (all their sentences)"


def _expanded_percentile(estimate: float, replicates: np.ndarray, n_units: int, level: float = 0.95) -> Interval:
    """Percentile interval at the tail probability of a t quantile with n_units - 2 degrees of freedom.

    Hesterberg's (2015) expanded percentile interval: with 16 words the plain 95% percentile
    interval covers too rarely; with 80 sentences the two nearly coincide.
    """
    tail = float(_st.norm.sf(_st.t.ppf(0.5 + level / 2, df=max(n_units - 2, 1))))
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Interval(estimate, float(low), float(high), level, replicates)


def effect_size(X: np.ndarray, Y: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """WEAT/SEAT effect size (Caliskan et al. 2017): the standardised difference in association.

    ``(mean_x s(x,A,B) - mean_y s(y,A,B)) / std_{w in X u Y} s(w,A,B)``, sample std (ddof=1).
    """
    return float(_effect(association(X, A, B), association(Y, A, B)))


class SEATProbe(Probe):
    """Association between two target concepts and two attributes in the model's sentence embeddings.

    For each test, the effect size measures how much more the sentences of target X associate
    with attribute A (over B) than those of target Y do, in units of standard deviation
    (Caliskan et al. 2017; May et al. 2019). 0 means no association; |d| around 0.2 is small,
    0.5 medium, 0.8 large. The effect size is always the papers' sentence-level d.

    The test and the interval work on the unit each target sentence came from: the target word
    for the built-in tests (their templates make several sentences per word, and sentences of one
    word are correlated), each example for a sent-bias test file unless it gives ``"units"``.
    The one-sided permutation p-value asks how often a random re-split of the units of X u Y
    gives a difference in per-unit mean association s(w) at least as large; p-values are
    Holm-Bonferroni adjusted across the tests. The interval is a bootstrap that draws units with
    all their sentences, k - 1 of the k units of each target set per replicate, attribute sets
    held fixed; its percentiles are expanded to the tails of a t quantile with (units - 2) degrees
    of freedom (Hesterberg 2015). Permuting and resampling sentences of clustered tests instead
    gave 14% false alarms and 82% coverage in the calibration suite.

    Parameters
    ----------
    tests : sequence of str, optional
        Names of built-in tests to run (``weat3``, ``weat6``, ``weat7``, ``weat8``). ``None``
        runs all of them, unless ``test_files`` is given, in which case only those run.
    test_files : sequence of path, default=()
        User tests in the sent-bias JSON format (``targ1``, ``targ2``, ``attr1``, ``attr2``).
    n_samples : int, default=10000
        Permutations for the p-value; the test is exact when C(m + n, m) <= n_samples, for
        m, n the units (words) of X and Y.
    pooling : {"mean", "cls", "last"}, default="mean"
    layer : int, default=-1
        Hidden-state layer the embeddings come from (0 embeddings, -1 last).
    alpha : float, default=0.05
        Family-wise significance level after Holm-Bonferroni.
    max_effect_size : float, optional
        The probe fails when a significant test's |effect size| exceeds this. Without it, a
        significant association makes the probe ``warned``.
    n_boot : int, default=2000
        Bootstrap resamples for the effect-size interval.
    """

    name: ClassVar[str] = "seat"
    category: ClassVar[str] = "bias"
    kinds: ClassVar[frozenset[str]] = frozenset(KINDS)
    description: ClassVar[str] = "Sentence embedding association tests (SEAT/WEAT effect sizes, permutation p-values)"
    version: ClassVar[str] = "1"

    def __init__(
        self,
        *,
        tests: Sequence[str] | None = None,
        test_files: Sequence[str] = (),
        n_samples: int = 10_000,
        pooling: str = "mean",
        layer: int = -1,
        alpha: float = 0.05,
        max_effect_size: float | None = None,
        n_boot: int = 2000,
    ) -> None:
        self.tests = tests
        self.test_files = test_files
        self.n_samples = n_samples
        self.pooling = pooling
        self.layer = layer
        self.alpha = alpha
        self.max_effect_size = max_effect_size
        self.n_boot = n_boot
        if pooling not in POOLINGS:
            raise ConfigError(f"Probe 'seat': pooling must be one of {list(POOLINGS)}, got {pooling!r}.")
        if not 0 < alpha < 1:
            raise ConfigError(f"Probe 'seat': alpha must be between 0 and 1, got {alpha!r}.")
        if n_samples < 1 or n_boot < 1:
            raise ConfigError(f"Probe 'seat': n_samples and n_boot must be positive, got {n_samples}, {n_boot}.")
        if isinstance(tests, str) or isinstance(test_files, str):
            raise ConfigError("Probe 'seat': tests and test_files must be lists, e.g. tests: [weat6].")

    def _selected_tests(self) -> list[SEATTest]:
        available = builtin_tests()
        names = self.tests if self.tests is not None else ([] if self.test_files else sorted(available))
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ConfigError(
                f"Probe 'seat': unknown built-in test(s) {unknown}. Built-in tests: {sorted(available)}; "
                "give your own with test_files."
            )
        chosen = [available[n] for n in names] + [load_test_file(p) for p in self.test_files]
        if not chosen:
            raise ConfigError("Probe 'seat': no tests selected. Name built-in tests or give test_files.")
        return chosen

    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        tests = self._selected_tests()
        sentences = list(dict.fromkeys(s for t in tests for s in (*t.X, *t.Y, *t.A, *t.B)))
        vectors = target.embed(sentences, pooling=self.pooling, layer=self.layer)  # type: ignore[arg-type]
        index = {s: i for i, s in enumerate(sentences)}

        def rows(items: Sequence[str]) -> np.ndarray:
            return vectors[[index[s] for s in items]]

        measured = []
        for test in tests:
            A, B = rows(test.A), rows(test.B)
            sx, sy = association(rows(test.X), A, B), association(rows(test.Y), A, B)
            if np.std(np.concatenate([sx, sy]), ddof=1) == 0:
                raise DataError(
                    f"Probe 'seat': test {test.name!r} gives every target sentence the same association, "
                    "so the effect size is undefined. Check that the target sets differ."
                )
            d = float(_effect(sx, sy))
            ux, uy = _unit_index(test.X_units, len(sx)), _unit_index(test.Y_units, len(sy))
            perm = permutation_test(unit_means(sx, ux), unit_means(sy, uy), rng=context.rng,
                                    alternative="greater", n_resamples=self.n_samples)
            replicates = cluster_bootstrap_effect(sx, ux, sy, uy, rng=context.rng, n_resamples=self.n_boot)
            ci = _expanded_percentile(d, np.where(np.isfinite(replicates), replicates, d), int(ux.max()) + int(uy.max()) + 2)
            extremes = [(test.X[int(np.argmax(sx))], float(sx.max())), (test.Y[int(np.argmin(sy))], float(sy.min()))]
            measured.append((test, d, perm, ci, extremes))

        adjusted, reject = holm_bonferroni([m[2].p_value for m in measured], alpha=self.alpha)
        metrics: dict[str, Metric] = {}
        table_rows = []
        examples = []
        for (test, d, perm, ci, extremes), p_adj, sig in zip(measured, adjusted, reject):
            metrics[f"effect_size[{test.name}]"] = Metric(
                value=d, ci=ci.as_tuple(), ci_level=ci.level, p_value=float(p_adj),
                threshold=self.max_effect_size, ideal=0.0,
                description=(f"SEAT effect size (sentence-level d), {test.title}; signed, 0 is ideal; Holm-adjusted "
                             f"one-sided p and 95% interval over {_unit_name(test)}"),
            )
            table_rows.append([
                test.name, test.title, len(test.X), len(test.Y), len(test.A), len(test.B),
                round(d, 4), f"[{ci.low:.3f}, {ci.high:.3f}]", perm.p_value, float(p_adj),
                bool(sig), "exact" if perm.exact else f"sampled ({perm.n_permutations:,})",
            ])
            for sentence, score in extremes:
                examples.append({"test": test.name, "sentence": sentence, "association s(w,A,B)": round(score, 4)})
        abs_d = np.abs([m[1] for m in measured])
        # Tests are resampled independently, so the replicates of mean |d| combine theirs.
        replicates = np.mean(np.abs(np.stack([m[3].distribution for m in measured])), axis=0)
        mean_ci = (float(np.quantile(replicates, 0.025)), float(np.quantile(replicates, 0.975)))
        significant = [m[0].name for m, s in zip(measured, reject) if s]
        too_large = [m[0].name for m, s in zip(measured, reject)
                     if s and self.max_effect_size is not None and abs(m[1]) > self.max_effect_size]
        metrics["mean_abs_effect_size"] = Metric(
            value=float(abs_d.mean()), ci=mean_ci, ci_level=0.95, threshold=self.max_effect_size,
            direction="lower_is_better",
            description="Mean |effect size| over the tests (0 = no association; 0.8 = large)",
        )
        metrics["max_abs_effect_size"] = Metric(
            value=float(abs_d.max()), threshold=self.max_effect_size, direction="lower_is_better",
            description="Largest |effect size| over the tests",
        )
        metrics["n_significant"] = Metric(
            value=float(len(significant)), direction="lower_is_better",
            description=f"Tests significant at alpha={self.alpha} after Holm-Bonferroni, of {len(measured)}",
        )
        if too_large:
            status, verdict = "failed", f"{len(too_large)} significant test(s) exceed |d| > {self.max_effect_size}: {', '.join(too_large)}."
        elif significant:
            status, verdict = "warned", f"significant association in {len(significant)} of {len(measured)} tests ({', '.join(significant)})."
        else:
            status, verdict = "passed", f"no test is significant at alpha={self.alpha} after Holm-Bonferroni."
        figure = interval_bar_chart(
            [m[0].name for m in measured], [m[1] for m in measured], [m[3].as_tuple() for m in measured],
            xlabel="SEAT effect size d (95% bootstrap interval); red = significant after Holm", highlight=list(reject),
        )
        return self.result(
            status=status,
            summary=f"Mean |effect size| {abs_d.mean():.2f} over {len(measured)} tests; {verdict}",
            metrics=metrics,
            headline="mean_abs_effect_size",
            tables=[Table(
                title="SEAT tests",
                columns=["test", "targets x attributes", "|X|", "|Y|", "|A|", "|B|", "effect size",
                         "95% CI", "p", "p (Holm)", "significant", "p-value"],
                rows=table_rows,
                caption="Effect size > 0: X associates more with A than Y does (sentence-level d). p-value and "
                        "interval: permutation and bootstrap over target words for built-in tests (and files "
                        "giving units), over sentences for other test files; attribute sets fixed.",
            )],
            figures=[Figure(title="SEAT effect sizes", svg=figure,
                            caption="Bars: effect size per test; whiskers: 95% bootstrap interval.")],
            examples=examples,
        )
