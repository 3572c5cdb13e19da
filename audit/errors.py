"""The one exception hierarchy of rai-audit.

Every message says what was wrong, what was received and what to do. The CLI turns an
:class:`AuditError` into that single line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "AuditError",
    "ConfigError",
    "DataError",
    "ModelLoadError",
    "NotApplicableError",
    "NotFittedError",
    "OutputError",
    "PluginLoadError",
]


class AuditError(Exception):
    """Base class for a user's mistake: a bad path, a bad value, an unusable model.

    Examples
    --------
    >>> from audit.errors import AuditError, ConfigError
    >>> issubclass(ConfigError, AuditError)
    True
    """


class ConfigError(AuditError, ValueError):
    """A configuration value, file or command-line option is invalid.

    Examples
    --------
    >>> from audit import AuditConfig, Auditor, ConfigError
    >>> try:
    ...     Auditor(AuditConfig(select=["no_such_probe"])).plan()
    ... except ConfigError as exc:
    ...     print(str(exc).split(".")[0])
    Unknown probe 'no_such_probe'
    """


class DataError(AuditError, ValueError):
    """A dataset or test file is missing, unreadable or lacks what a probe needs.

    Examples
    --------
    >>> from audit import DataError, load_dataset
    >>> try:
    ...     load_dataset("missing.csv")
    ... except DataError as exc:
    ...     print(str(exc).split(".")[0])
    Data file 'missing
    """


class ModelLoadError(AuditError):
    """A model or its tokenizer cannot be loaded safely from what was given.

    Examples
    --------
    >>> from audit import ModelLoadError, load_target
    >>> try:
    ...     load_target("./no/such/model")
    ... except ModelLoadError as exc:
    ...     print(str(exc).split(" does")[0])
    Model path './no/such/model'
    """


class PluginLoadError(AuditError):
    """A probe or command plugin could not be imported or does not follow the contract.

    Examples
    --------
    >>> from audit import AuditError, PluginLoadError
    >>> issubclass(PluginLoadError, AuditError)
    True
    """


class NotFittedError(AuditError, AttributeError):
    """An estimator-style object was used before ``fit``.

    Examples
    --------
    >>> from audit import NotFittedError
    >>> issubclass(NotFittedError, AttributeError)  # hasattr() on an unfitted estimator stays False
    True
    """


class NotApplicableError(AuditError):
    """An operation or probe does not apply to this model kind.

    Examples
    --------
    >>> from audit import NotApplicableError, load_target
    >>> try:
    ...     load_target(progress=False).predict_proba(["hi"])  # an encoder has no classes
    ... except NotApplicableError as exc:
    ...     print(str(exc).split(",")[0])
    predict_proba() needs a model of kind 'sequence-classification'
    """


class OutputError(AuditError, OSError):
    """The output location cannot be written.

    Examples
    --------
    >>> from audit import OutputError
    >>> issubclass(OutputError, OSError)
    True
    """
