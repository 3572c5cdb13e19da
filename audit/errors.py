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
    """A configuration value, file or command-line option is invalid."""


class DataError(AuditError, ValueError):
    """A dataset or test file is missing, unreadable or lacks what a probe needs."""


class ModelLoadError(AuditError):
    """A model or its tokenizer cannot be loaded safely from what was given."""


class PluginLoadError(AuditError):
    """A probe or command plugin could not be imported or does not follow the contract."""


class NotFittedError(AuditError, AttributeError):
    """An estimator-style object was used before ``fit``."""


class NotApplicableError(AuditError):
    """An operation or probe does not apply to this model kind."""


class OutputError(AuditError, OSError):
    """The output location cannot be written."""
