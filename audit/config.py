"""The audit configuration: a YAML file validated with pydantic, overridable from the CLI.

Unknown keys and bad values are errors that name the key. Relative paths inside a config file
(``model`` when it is a directory there, ``data.path``) are read relative to the file.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from audit.errors import ConfigError
from audit.kinds import Kind

__all__ = ["AuditConfig", "CardConfig", "DataConfig", "GateSpec", "ProbeConfig", "load_config"]

_STRICT = ConfigDict(extra="forbid")


class _ConfigErrors(type(BaseModel)):  # type: ignore[misc]
    # Catching in the metaclass, not in __init__: a model that overrides __init__ makes pydantic
    # call it for nested values too, which would wrap the inner error in the outer one.
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as exc:
            raise _config_error(exc, cls, source=cls.__name__) from None


class _Validated(BaseModel, metaclass=_ConfigErrors):
    """A config model whose bad values raise a one-line :class:`ConfigError` naming the key,
    never pydantic's ``ValidationError``, whether built directly or through ``model_validate``."""

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return cls._checked(obj, source=cls.__name__, **kwargs)

    @classmethod
    def _checked(cls, obj: Any, *, source: str, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise _config_error(exc, cls, source=source) from None


class DataConfig(_Validated):
    """Where the audit's dataset is and what its columns mean."""

    model_config = _STRICT

    path: Path
    text_column: str = "text"
    label_column: str | None = None
    sensitive_features: list[str] = Field(default_factory=list)


class GateSpec(_Validated):
    """Gates on one metric: the audit fails when the value is above ``max`` or below ``min``, or,
    when run against a baseline, when it got significantly worse than the baseline by more than
    ``tolerance``.

    On a metric with an ideal inside its range (a signed effect size, ideal 0; a stereotype
    score, ideal 50) the bounds apply to the distance from the ideal unless ``signed`` is true:
    ``effect_size[weat7]: {max: 0.5}`` means ``|d| <= 0.5``, ``ss: {max: 60}`` means
    ``|SS - 50| <= 10``, and a tolerance limits how much further from the ideal it may move.
    With ``signed: true`` the bounds apply to the value itself (lower is better for tolerance).

    A gate cannot pass unchecked: when its probe is planned but does not run (skipped, or not
    applicable to the model), the gate fails, unless ``required`` is false, in which case it is
    listed under the gates not checked. A gate on a probe left out of the plan (``--disable``,
    ``--probe``) is listed as not checked.
    """

    model_config = _STRICT

    max: float | None = None
    min: float | None = None
    tolerance: float | None = Field(default=None, ge=0)
    signed: bool = False
    required: bool = True

    @model_validator(mode="after")
    def _one_bound(self) -> GateSpec:
        if self.max is None and self.min is None and self.tolerance is None:
            raise ValueError("a gate needs 'max', 'min' or 'tolerance'")
        return self


class ProbeConfig(_Validated):
    """Per-probe settings: whether it runs, its constructor parameters, its gates."""

    model_config = _STRICT

    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    gates: dict[str, GateSpec] = Field(default_factory=dict)


_HUB_DATASET = r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$"


class CardConfig(_Validated):
    """Model-card text that only a person can supply (Mitchell et al. 2019 sections).

    ``base_model``, ``pipeline_tag``, ``license``, ``datasets`` (training data, as Hub dataset ids),
    ``language`` and ``tags`` go into the Hub card's metadata as given. ``benchmarks`` maps a probe
    name to the Hub dataset id (``org/name`` or ``org/name:task``) of the benchmark its data is, so
    the Hub card also gets that probe's ``.eval_results`` file; a probe not named there is in the
    card's ``model-index`` only.
    """

    model_config = _STRICT

    model_name: str | None = None
    model_details: str | None = None
    developers: str | None = None
    base_model: str | list[str] | None = None
    pipeline_tag: str | None = None
    license: str | None = None
    datasets: list[str] = Field(default_factory=list)
    language: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    benchmarks: dict[str, typing.Annotated[str, Field(pattern=_HUB_DATASET)]] = Field(default_factory=dict)
    intended_use: str | None = None
    out_of_scope_use: str | None = None
    factors: str | None = None
    training_data: str | None = None
    evaluation_data: str | None = None
    ethical_considerations: str | None = None
    caveats_and_recommendations: str | None = None


class AuditConfig(_Validated):
    """Everything an audit run needs.

    Examples
    --------
    >>> from audit.config import AuditConfig
    >>> cfg = AuditConfig.model_validate({"seed": 7, "probes": {"seat": {"params": {"n_samples": 1000}}}})
    >>> cfg.seed, cfg.probes["seat"].params
    (7, {'n_samples': 1000})
    """

    model_config = _STRICT

    model: str | None = None
    kind: Kind | None = None
    revision: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_new_weights: bool = False
    #: A PEFT adapter's base model, instead of its adapter_config.json's base_model_name_or_path.
    base_model: str | None = None
    #: "auto" (or a module -> device map) splits the model across GPUs, CPU and disk (accelerate).
    device_map: str | dict[str, Any] | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None
    #: With device_map: the most memory per device, e.g. {"cpu": "2GiB", "0": "20GiB"}.
    max_memory: dict[str, str] | None = None
    offload_folder: Path | None = None
    #: Generation-based probes wrap each prompt in the tokenizer's chat template, where it has one.
    chat_template: bool = True
    batch_size: PositiveInt = 32
    max_length: PositiveInt | None = None
    seed: int = Field(default=0, ge=0, lt=2**32)
    output_dir: Path = Path("audit-report")
    cache: bool = True
    cache_dir: Path | None = None
    show_pii: bool = False
    show_examples: bool = False
    data: DataConfig | None = None
    select: list[str] | None = None
    disable: list[str] = Field(default_factory=list)
    probes: dict[str, ProbeConfig] = Field(default_factory=dict)
    card: CardConfig = Field(default_factory=CardConfig)


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = error["loc"][:-1]
        allowed = _allowed_keys(model, parent)
        hint = f" Allowed keys here: {allowed}." if allowed else ""
        return f"unknown key {loc!r}.{hint} Remove it or fix its spelling."
    received = error.get("input")
    shown = repr(received) if not isinstance(received, dict) else "a mapping"
    return f"key {loc!r}: {error['msg']} (received {shown[:80]}). Set {loc!r} to a valid value; see the README's config reference."


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc``: walks models, stepping over the name keys of dict fields."""
    current: Any = model
    skip_name = False
    for part in loc:
        if skip_name:
            skip_name = False
            continue
        fields = getattr(current, "model_fields", {})
        if isinstance(part, int) or str(part) not in fields:
            return []
        annotation = fields[str(part)].annotation
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        models = [a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models:
            return []
        current = models[0]
        skip_name = origin is dict
    return sorted(getattr(current, "model_fields", {}))


def validate_config(raw: Any, *, source: str = "config") -> AuditConfig:
    """Validate a mapping as an :class:`AuditConfig`, raising a one-line :class:`ConfigError`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping of keys to values, got "
            f"{type(raw).__name__}. See the config reference in the README."
        )
    return AuditConfig._checked(raw, source=source)


def _config_error(exc: ValidationError, model: type[BaseModel], *, source: str) -> ConfigError:
    first = exc.errors()[0]
    more = f" ({exc.error_count() - 1} more problem(s) after this one)" if exc.error_count() > 1 else ""
    return ConfigError(f"{source}: {_describe(first, model)}{more}")


def load_config(path: str | os.PathLike[str]) -> AuditConfig:
    """Read and validate a YAML config file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from audit.config import load_config
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "audit.yaml"
    >>> _ = p.write_text("seed: 5\\nprobes:\\n  seat:\\n    gates:\\n      max_abs_effect_size: {max: 0.8}\\n")
    >>> load_config(p).probes["seat"].gates["max_abs_effect_size"].max
    0.8
    """
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"Config file {str(source)!r} does not exist. Check the --config path.")
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"Config file {str(source)!r} is not UTF-8 text. Save it as UTF-8.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            f"Config file {str(source)!r} is not valid YAML{where}: {problem}. Fix the syntax."
        ) from None
    config = validate_config(raw, source=f"Config file {str(source)!r}")
    base = source.parent
    updates: dict[str, Any] = {}
    if config.data is not None and not config.data.path.is_absolute():
        updates["data"] = config.data.model_copy(update={"path": base / config.data.path})
    if config.model and not Path(config.model).is_absolute() and (base / config.model).is_dir():
        updates["model"] = str(base / config.model)
    return config.model_copy(update=updates) if updates else config
