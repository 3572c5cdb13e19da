"""What a probe may need beyond the target: data, seed, scratch space, earlier results."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.masking import dataset_words, scrub

if TYPE_CHECKING:
    from audit.data import AuditDataset

__all__ = ["AuditContext"]


@dataclass(frozen=True)
class AuditContext:
    """The audit-wide inputs handed to :meth:`audit.probe.Probe.run`.

    Parameters
    ----------
    seed : int, default=0
        The audit's seed. Each probe gets its own generator derived from the seed and its name,
        so a probe's numbers do not depend on which other probes ran before it.
    data : AuditDataset or None
        The user's dataset with its text, label and sensitive-feature columns, if one was given.
    scratch_dir : Path or None
        A directory the probe may write temporary files to.
    results : mapping of str to ProbeResult
        Results of the probes that already ran, by name (see ``Probe.after``).
    show_pii : bool, default=False
        Whether the user asked for raw personal data to appear in reports.
    show_examples : bool, default=False
        Whether the user asked for rows of the dataset to appear verbatim in reports. Without it
        (and without ``show_pii``) a probe shows a row only masked (:mod:`audit.masking`).

    Examples
    --------
    >>> from audit.context import AuditContext
    >>> ctx = AuditContext(seed=3)
    >>> a = ctx.for_probe("seat").rng.integers(1000)
    >>> b = ctx.for_probe("seat").rng.integers(1000)
    >>> bool(a == b)
    True
    """

    seed: int = 0
    data: AuditDataset | None = None
    scratch_dir: Path | None = None
    # values are audit.probe.ProbeResult; Any, because audit.probe imports this module (no circle)
    results: Mapping[str, Any] = field(default_factory=dict)
    show_pii: bool = False
    show_examples: bool = False
    probe_name: str = ""
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0), compare=False)

    @property
    def reveal_data(self) -> bool:
        """Whether rows of the dataset may appear verbatim (``show_examples`` or ``show_pii``)."""
        return self.show_examples or self.show_pii

    def scrub(self, text: str) -> str:
        """``text`` with the words it shares with the dataset masked, unless data may be shown.

        For free text that might quote a row (an error message, a model's continuation)."""
        if self.reveal_data or self.data is None:
            return text
        return scrub(text, _dataset_words(self.data))

    def for_probe(self, name: str, results: Mapping[str, Any] | None = None) -> AuditContext:
        """A copy for probe ``name`` with a fresh generator seeded from (seed, name)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode("utf-8"))])
        return replace(self, probe_name=name, rng=rng,
                       results=dict(results if results is not None else self.results))


_WORDS_CACHE: dict[tuple[int, str], frozenset[str]] = {}


def _dataset_words(data: AuditDataset) -> frozenset[str]:
    """The dataset's words that :meth:`AuditContext.scrub` masks, computed once per dataset."""
    key = (id(data), str(getattr(data, "fingerprint", "")))
    if key not in _WORDS_CACHE:
        if len(_WORDS_CACHE) > 4:
            _WORDS_CACHE.clear()
        _WORDS_CACHE[key] = dataset_words([*data.texts, *_other_cells(data)])
    return _WORDS_CACHE[key]


def _other_cells(data: AuditDataset) -> list[str]:
    """String cells of the dataset's other columns (labels and sensitive features stay readable)."""
    frame = getattr(data, "frame", None)
    if frame is None:
        return []
    keep = {data.label_column, *data.sensitive_features, data.text_column}
    return [str(v) for c in frame.columns if c not in keep for v in frame[c].tolist() if isinstance(v, str)]
