"""Splitting one dataset into the clients of a simulated federation.

Three schemes, named by a short spec string (the ``--partition`` option):

``"iid"``
    Rows shuffled and dealt out in near-equal shares: every client sees the same distribution.
``"dirichlet:ALPHA"``
    Non-IID by label (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification"): for every class, the shares of its rows
    that go to each client are drawn from ``Dirichlet(ALPHA, ..., ALPHA)``. Small ``ALPHA``
    (0.1) gives clients that hold mostly one class; large ``ALPHA`` (100) approaches IID.
``"by:COLUMN"``
    By a sensitive attribute: every client serves one group of ``COLUMN`` (or, with more groups
    than clients, several whole groups), the way hospitals or branches differ in who they serve.

Partitions are disjoint, cover every row, and depend only on the data, the spec, the number of
clients and the seed, so every client of a deployment computes its own share identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from audit.errors import ConfigError, DataError

__all__ = [
    "PARTITION_METHODS",
    "Partitioning",
    "dirichlet_partition",
    "group_partition",
    "iid_partition",
    "parse_partition",
    "partition_rows",
    "split_rows",
]

PartitionMethod = Literal["iid", "dirichlet", "by"]
PARTITION_METHODS: tuple[str, ...] = ("iid", "dirichlet", "by")
DIRICHLET_DRAWS = 20
SPEC_HELP = "Use 'iid', 'dirichlet:ALPHA' (e.g. dirichlet:0.5) or 'by:COLUMN'."


@dataclass(frozen=True)
class Partitioning:
    """A parsed partition spec.

    Attributes
    ----------
    method : {"iid", "dirichlet", "by"}
    alpha : float or None
        Dirichlet concentration (``method="dirichlet"``).
    column : str or None
        The attribute that defines the sites (``method="by"``).
    """

    method: PartitionMethod
    alpha: float | None = None
    column: str | None = None

    @property
    def spec(self) -> str:
        """The spec string this was parsed from, normalised."""
        if self.method == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.method == "by":
            return f"by:{self.column}"
        return "iid"

    def describe(self) -> str:
        """One sentence for the record and the card."""
        if self.method == "dirichlet":
            return (f"non-IID by label: each class's rows shared out with proportions drawn from "
                    f"Dirichlet(alpha={self.alpha:g}) (Hsu et al. 2019); smaller alpha, more skew")
        if self.method == "by":
            return f"by the sensitive attribute {self.column!r}: each client serves its own group(s)"
        return "IID: rows shuffled and dealt out in near-equal shares"


def parse_partition(spec: str | Partitioning) -> Partitioning:
    """Parse ``"iid"``, ``"dirichlet:ALPHA"`` or ``"by:COLUMN"``.

    Examples
    --------
    >>> from privacy.federated.partition import parse_partition
    >>> parse_partition("dirichlet:0.5")
    Partitioning(method='dirichlet', alpha=0.5, column=None)
    >>> parse_partition("by:sex").column
    'sex'
    """
    if isinstance(spec, Partitioning):
        parsed = spec
    else:
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"Partition spec must be a non-empty string, got {spec!r}. {SPEC_HELP}")
        method, _, arg = spec.strip().partition(":")
        method = method.strip().lower()
        if method == "iid" and not arg:
            parsed = Partitioning("iid")
        elif method == "dirichlet":
            try:
                alpha = float(arg) if arg.strip() else math.nan
            except ValueError:
                alpha = math.nan
            if math.isnan(alpha):
                raise ConfigError(f"Partition spec {spec!r} has no valid Dirichlet alpha. "
                                  "Write it as dirichlet:ALPHA with a positive number, e.g. dirichlet:0.5.")
            parsed = Partitioning("dirichlet", alpha=alpha)
        elif method == "by":
            if not arg.strip():
                raise ConfigError(f"Partition spec {spec!r} names no column. Write it as by:COLUMN, e.g. by:sex.")
            parsed = Partitioning("by", column=arg.strip())
        else:
            raise ConfigError(f"Unknown partition spec {spec!r}. {SPEC_HELP}")
    if parsed.method == "dirichlet" and (parsed.alpha is None or not math.isfinite(parsed.alpha) or parsed.alpha <= 0):
        raise ConfigError(f"Dirichlet alpha must be a positive finite number, got {parsed.alpha!r}. "
                          "Use e.g. dirichlet:0.5 (skewed) or dirichlet:100 (close to IID).")
    return parsed


def _check_counts(n_rows: int, num_partitions: Any) -> None:
    if not isinstance(num_partitions, (int, np.integer)) or isinstance(num_partitions, bool) or num_partitions < 1:
        raise ConfigError(f"The number of clients must be a positive integer, got {num_partitions!r}. Use e.g. 5.")
    if num_partitions > n_rows:
        raise DataError(f"There are more clients ({num_partitions}) than examples ({n_rows}); every client needs "
                        "at least one row. Use fewer clients or more data.")


def iid_partition(n_rows: int, num_partitions: int, *, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(n_rows)`` and cut it into ``num_partitions`` near-equal parts.

    Examples
    --------
    >>> from privacy.federated.partition import iid_partition
    >>> [len(p) for p in iid_partition(10, 3)]
    [4, 3, 3]
    """
    _check_counts(n_rows, num_partitions)
    order = np.random.default_rng(seed).permutation(n_rows)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet_partition(labels: Sequence[Any], num_partitions: int, *, alpha: float, seed: int = 0,
                        min_partition_size: int = 1) -> list[np.ndarray]:
    """Non-IID split by label with Dirichlet-distributed class shares (Hsu et al. 2019).

    For each class, proportions ``p ~ Dirichlet(alpha * 1_K)`` are drawn and the class's shuffled
    rows are cut at the cumulative proportions. The draw is repeated (up to 20 times) until every
    client holds at least ``min_partition_size`` rows.

    Parameters
    ----------
    labels : sequence
        One label per row.
    num_partitions : int
    alpha : float
        Concentration, > 0.
    seed : int, default=0
    min_partition_size : int, default=1

    Returns
    -------
    list of numpy.ndarray
        Sorted row indices of each client.
    """
    labels_arr = np.asarray([str(v) for v in labels])
    _check_counts(len(labels_arr), num_partitions)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha <= 0:
        raise ConfigError(f"Dirichlet alpha must be a positive finite number, got {alpha!r}. "
                          "Use e.g. dirichlet:0.5 (skewed) or dirichlet:100 (close to IID).")
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels_arr.tolist()))
    smallest = 0
    for _ in range(DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for cls in classes:
            rows = rng.permutation(np.flatnonzero(labels_arr == cls))
            shares = rng.dirichlet(np.full(num_partitions, float(alpha)))
            cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
            for client, chunk in enumerate(np.split(rows, cuts)):
                parts[client].extend(chunk.tolist())
        smallest = min(len(p) for p in parts)
        if smallest >= min_partition_size:
            return [np.sort(np.asarray(p, dtype=int)) for p in parts]
    raise DataError(f"Dirichlet partitioning with alpha={alpha:g} left a client with fewer than "
                    f"{min_partition_size} row(s) in all {DIRICHLET_DRAWS} draws ({len(labels_arr)} rows, "
                    f"{num_partitions} clients). Use a larger alpha, fewer clients or more data.")


def group_partition(groups: Sequence[Any], num_partitions: int, *, seed: int = 0) -> list[np.ndarray]:
    """Split by group so that each client serves its own population.

    With at least as many groups as clients, whole groups are dealt to clients, largest first, each
    to the client with the fewest rows so far. With fewer groups than clients, clients are shared
    out among groups in proportion to group size (every group gets at least one; largest
    remainder), and each group's rows are split IID among its clients: every client then holds
    exactly one group.

    Examples
    --------
    >>> from privacy.federated.partition import group_partition
    >>> parts = group_partition(["a"] * 6 + ["b"] * 2, 3)
    >>> [len(p) for p in parts]
    [3, 3, 2]
    """
    values = np.asarray([str(v) for v in groups])
    _check_counts(len(values), num_partitions)
    rng = np.random.default_rng(seed)
    names = sorted(set(values.tolist()), key=lambda g: (-int(np.sum(values == g)), g))
    sizes = {g: int(np.sum(values == g)) for g in names}
    if len(names) >= num_partitions:
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for group in names:
            client = min(range(num_partitions), key=lambda c: (len(parts[c]), c))
            parts[client].extend(np.flatnonzero(values == group).tolist())
        return [np.sort(np.asarray(p, dtype=int)) for p in parts]
    # Fewer groups than clients: one client per group first, the rest by largest remainder.
    total = len(values)
    spare = num_partitions - len(names)
    quotas = {g: spare * sizes[g] / total for g in names}
    alloc = {g: 1 + math.floor(quotas[g]) for g in names}
    left = num_partitions - sum(alloc.values())
    for g in sorted(names, key=lambda g: (-(quotas[g] - math.floor(quotas[g])), g))[:left]:
        alloc[g] += 1
    for g in names:
        alloc[g] = min(alloc[g], sizes[g])
    while sum(alloc.values()) < num_partitions:
        # A group too small for its share hands its spare clients to the largest group that can take one.
        candidates = [g for g in names if alloc[g] < sizes[g]]
        if not candidates:
            break
        alloc[max(candidates, key=lambda g: (sizes[g] / alloc[g], g))] += 1
    out: list[np.ndarray] = []
    for g in names:
        rows = rng.permutation(np.flatnonzero(values == g))
        out.extend(np.sort(chunk) for chunk in np.array_split(rows, alloc[g]))
    return out


def partition_rows(frame: Any, spec: str | Partitioning, num_partitions: int, *, label_column: str,
                   seed: int = 0, source: str = "the data") -> list[np.ndarray]:
    """Row indices of each client for a pandas DataFrame and a partition spec.

    Parameters
    ----------
    frame : pandas.DataFrame
    spec : str or Partitioning
        ``"iid"``, ``"dirichlet:ALPHA"`` or ``"by:COLUMN"``.
    num_partitions : int
        Number of clients.
    label_column : str
        Used by ``"dirichlet"``.
    seed : int, default=0
    source : str
        How to name the data in error messages (e.g. its path).
    """
    parsed = parse_partition(spec)
    columns = [str(c) for c in frame.columns]
    if parsed.method == "iid":
        return iid_partition(len(frame), num_partitions, seed=seed)
    column = label_column if parsed.method == "dirichlet" else parsed.column
    assert column is not None
    if column not in columns:
        role = "label column" if parsed.method == "dirichlet" else "partition column"
        raise DataError(f"Partition {parsed.spec!r}: {role} {column!r} is not in {source}. Columns: {columns}. "
                        f"Give one of them.")
    values = frame[column].tolist()
    if parsed.method == "dirichlet":
        assert parsed.alpha is not None
        return dirichlet_partition(values, num_partitions, alpha=parsed.alpha, seed=seed)
    return group_partition(values, num_partitions, seed=seed)


def split_rows(labels: Sequence[Any], eval_fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``eval_fraction`` of one client's rows, stratified by label, for evaluation.

    Each class with at least two rows holds out ``round(n_class * eval_fraction)`` of them, at least
    one and never all; a class with a single row is never held out. Returns positions into
    ``labels`` (training, evaluation), each sorted.

    Examples
    --------
    >>> from privacy.federated.partition import split_rows
    >>> train, held_out = split_rows(["a"] * 8 + ["b"] * 2, 0.2, seed=0)
    >>> len(train), len(held_out)
    (7, 3)
    """
    n = len(labels)
    if not (isinstance(eval_fraction, (int, float)) and 0 <= eval_fraction < 1):
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}. Use e.g. 0.2.")
    if n == 0 or eval_fraction == 0:
        return np.arange(n), np.array([], dtype=int)
    rng = np.random.default_rng(seed)
    values = np.asarray([str(v) for v in labels])
    held: list[int] = []
    for cls in sorted(set(values.tolist())):
        rows = rng.permutation(np.flatnonzero(values == cls))
        take = round(len(rows) * eval_fraction)
        take = min(max(take, 1), len(rows) - 1) if len(rows) > 1 else 0
        held.extend(rows[:take].tolist())
    held_set = set(held)
    train = np.asarray([i for i in range(n) if i not in held_set], dtype=int)
    return train, np.sort(np.asarray(held, dtype=int))
