"""The probe contract: what a probe is, and the frozen result it hands back.

A probe is a small class: configuration in ``__init__`` (keyword-only, stored as given), the
work in :meth:`Probe.run`, a frozen :class:`ProbeResult` out. It never changes the target.
Everything in a result is plain JSON-serialisable data, so reports never touch a live model.
"""

from __future__ import annotations

import abc
import inspect
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from audit.kinds import KINDS, Kind

if TYPE_CHECKING:
    from audit.context import AuditContext
    from audit.target import AuditTarget

__all__ = [
    "KINDS",
    "STATUSES",
    "ErrorInfo",
    "Figure",
    "Kind",
    "Metric",
    "Probe",
    "ProbeResult",
    "Status",
    "Table",
]

Status = Literal["passed", "warned", "failed", "errored", "skipped", "not_applicable"]
STATUSES: tuple[str, ...] = get_args(Status)
Direction = Literal["lower_is_better", "higher_is_better", "closer_to_ideal"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Metric(BaseModel):
    """One number with the evidence a reader needs to trust it.

    ``value`` may be ``None`` only when ``note`` says why it could not be computed; a NaN is
    never stored, so no card ever shows one silently.

    ``ideal`` is the value of no effect when it is not an end of the metric's range (a signed
    effect size: 0; a stereotype score: 50). Such a metric improves when it moves closer to its
    ideal, whichever side it is on; its ``direction`` is ``"closer_to_ideal"`` (set by default).
    Comparisons, regression gates and threshold gates use :meth:`distance`.

    Examples
    --------
    >>> from audit.probe import Metric
    >>> m = Metric(value=0.12, ci=(0.08, 0.16), p_value=0.001, direction="lower_is_better")
    >>> m.ci
    (0.08, 0.16)
    >>> d = Metric(value=-0.56, ideal=0.0)
    >>> d.direction, d.distance()
    ('closer_to_ideal', 0.56)
    """

    model_config = _FROZEN

    value: float | None
    ci: tuple[float, float] | None = None
    ci_level: float | None = None
    p_value: float | None = None
    threshold: float | None = None
    direction: Direction | None = None
    ideal: float | None = None
    description: str = ""
    note: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _ideal_direction(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        ideal, direction = data.get("ideal"), data.get("direction")
        if ideal is not None and direction is None:
            return {**data, "direction": "closer_to_ideal"}
        if (ideal is None) == (direction == "closer_to_ideal"):
            raise ValueError(f"direction 'closer_to_ideal' goes with an ideal value and only with one; got "
                             f"direction={direction!r}, ideal={ideal!r}")
        return data

    def distance(self, value: float | None = None) -> float:
        """How bad ``value`` (default: this metric's value) is: larger is worse.

        ``|value - ideal|`` with an ideal, ``-value`` when higher is better, else ``value``.
        """
        v = self.value if value is None else value
        if v is None:
            raise ValueError("metric has no value")
        if self.ideal is not None:
            return abs(float(v) - self.ideal)
        return -float(v) if self.direction == "higher_is_better" else float(v)

    @field_validator("value", "p_value", "threshold", "ci_level", "ideal", mode="before")
    @classmethod
    def _no_nan(cls, value: Any) -> Any:
        if isinstance(value, (float, int)) and not isinstance(value, bool) and not math.isfinite(value):
            raise ValueError(
                f"metric value {value!r} is not finite; report None with a note saying why"
            )
        return value

    @field_validator("ci", mode="before")
    @classmethod
    def _finite_ci(cls, value: Any) -> Any:
        if value is None:
            return None
        lo, hi = (float(v) for v in value)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        return (lo, hi)


class Table(BaseModel):
    """A titled table of JSON scalars; ``None`` cells render as a marked 'n/a'.

    Examples
    --------
    >>> from audit import Table
    >>> Table(title="Rates", columns=["group", "rate"], rows=[["a", 0.5], ["b", float("nan")]]).rows
    [['a', 0.5], ['b', None]]
    """

    model_config = _FROZEN

    title: str
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""

    @field_validator("rows", mode="before")
    @classmethod
    def _clean_rows(cls, rows: Any) -> Any:
        return [[_finite_or_none(_plain(cell)) for cell in row] for row in rows]


class Figure(BaseModel):
    """An SVG figure made by the probe (matplotlib); embedded in the card as a data URI.

    Examples
    --------
    >>> from audit import Figure
    >>> from audit.figures import interval_bar_chart
    >>> fig = Figure(title="Gaps", svg=interval_bar_chart(["a"], [0.1], [(0.0, 0.2)], xlabel="gap"))
    >>> "<svg" in fig.svg
    True
    """

    model_config = _FROZEN

    title: str
    svg: str
    caption: str = ""


class ErrorInfo(BaseModel):
    """What went wrong in a probe that errored: kept in the JSON, summarised in the card.

    Examples
    --------
    >>> from audit import ErrorInfo
    >>> ErrorInfo(type="RuntimeError", message="boom").message
    'boom'
    """

    model_config = _FROZEN

    type: str
    message: str
    traceback: str = ""


class ProbeResult(BaseModel):
    """The frozen outcome of one probe on one target.

    Examples
    --------
    >>> from audit.probe import Metric, ProbeResult
    >>> r = ProbeResult(probe="demo", status="passed", summary="Nothing found.",
    ...                 metrics={"gap": Metric(value=0.01)}, headline="gap")
    >>> r.metrics["gap"].value
    0.01
    """

    model_config = _FROZEN

    probe: str
    status: Status
    summary: str
    metrics: dict[str, Metric] = Field(default_factory=dict)
    headline: str | None = None
    tables: list[Table] = Field(default_factory=list)
    figures: list[Figure] = Field(default_factory=list)
    examples: list[dict[str, Any]] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    duration_s: float = 0.0
    cached: bool = False
    category: str = "other"

    @field_validator("examples", mode="before")
    @classmethod
    def _clean_examples(cls, examples: Any) -> Any:
        return [{str(k): _finite_or_none(_plain(v)) for k, v in dict(e).items()} for e in examples]

    @property
    def headline_metric(self) -> Metric | None:
        """The metric named by ``headline``, or ``None``."""
        return self.metrics.get(self.headline) if self.headline else None


def redacted_digest(value: Any) -> str:
    """A stable stand-in for a sensitive parameter value: ``"redacted sha256:<hex>"``."""
    import hashlib
    import json

    blob = json.dumps(_plain(value), sort_keys=True, ensure_ascii=False, default=str)
    return "redacted sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _plain(value: Any) -> Any:
    """Turn numpy scalars, paths, tuples and mappings into plain JSON values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (Sequence, set, frozenset)) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


class Probe(abc.ABC):
    """Base class of every probe, built-in or third-party.

    Subclasses set ``name`` (snake_case; also the entry-point name and the name used in the
    config file and on the command line), ``kinds`` (the model kinds the probe applies to) and
    implement :meth:`run`. Constructor arguments must be keyword-only and stored unchanged
    under the same attribute names, so :meth:`get_params` can report them.

    Examples
    --------
    >>> from audit.probe import Probe
    >>> class LengthProbe(Probe):
    ...     name = "length"
    ...     def __init__(self, *, max_len: int = 10) -> None:
    ...         self.max_len = max_len
    ...     def run(self, target, context=None):
    ...         return self.result(status="passed", summary="ok")
    >>> LengthProbe(max_len=3).get_params()
    {'max_len': 3}
    """

    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]] = frozenset(KINDS)
    description: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    #: Names of probes whose results this probe reads from the context; they run first.
    after: ClassVar[tuple[str, ...]] = ()
    #: Whether the probe needs the audit's dataset; without one it is skipped.
    requires_data: ClassVar[bool] = False
    #: Where the card shows the probe: "bias", "privacy", "transparency" or "other".
    category: ClassVar[str] = "other"
    #: Parameters that may hold sensitive values (deny lists, prompts): reports and the manifest
    #: show a sha256 digest instead, which still changes the cache key when the value changes.
    sensitive_params: ClassVar[tuple[str, ...]] = ()

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments as JSON-serialisable values."""
        params: dict[str, Any] = {}
        for parameter in inspect.signature(type(self).__init__).parameters.values():
            if parameter.name == "self" or parameter.kind in (
                parameter.VAR_POSITIONAL,
                parameter.VAR_KEYWORD,
            ):
                continue
            params[parameter.name] = _plain(getattr(self, parameter.name, None))
        for name in self.sensitive_params:
            if params.get(name) not in (None, (), [], {}, ""):
                params[name] = redacted_digest(params[name])
        return params

    def applies_to(self, target: AuditTarget) -> bool:
        """Whether this probe can run on ``target`` (by model kind)."""
        return target.kind in self.kinds

    @abc.abstractmethod
    def run(self, target: AuditTarget, context: AuditContext) -> ProbeResult:
        """Run the probe on ``target`` and return a frozen result."""

    def result(self, *, status: Status, summary: str, **fields: Any) -> ProbeResult:
        """Build a :class:`ProbeResult` for this probe with its parameters filled in."""
        return ProbeResult(probe=self.name, status=status, summary=summary,
                           params=self.get_params(), category=self.category, **fields)
