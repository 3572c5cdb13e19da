"""Finding probes and CLI commands through entry points, built-in and third-party alike.

A plugin that fails to import, or does not follow the contract, is never fatal and never hidden:
it is recorded with its error and shows up in the audit as an errored probe.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass

from audit.probe import ErrorInfo, Probe

__all__ = [
    "AUTOLOAD_ENV",
    "COMMAND_GROUP",
    "PROBE_GROUP",
    "ProbeSpec",
    "discover_probes",
    "entry_points",
]

PROBE_GROUP = "rai_audit.probes"
COMMAND_GROUP = "rai_audit.commands"
#: Set to 1 to load only rai-audit's own plugins, like ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``.
AUTOLOAD_ENV = "RAI_AUDIT_DISABLE_PLUGIN_AUTOLOAD"
_OWN_DIST = "rai-audit"


@dataclass(frozen=True)
class ProbeSpec:
    """A discovered probe: its class, or the error that kept it from loading."""

    name: str
    source: str
    dist: str | None
    cls: type[Probe] | None = None
    error: ErrorInfo | None = None

    @property
    def loaded(self) -> bool:
        return self.cls is not None


def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """Entry points of ``group``, de-duplicated by name (first installation wins)."""
    autoload_off = os.environ.get(AUTOLOAD_ENV, "").strip() not in ("", "0", "false")
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else None
        if autoload_off and dist != _OWN_DIST:
            continue
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda ep: ep.name)


def _check_contract(name: str, obj: object) -> None:
    if not (inspect.isclass(obj) and issubclass(obj, Probe)):
        raise TypeError(f"entry point {name!r} must name a subclass of audit.Probe, got {obj!r}")
    if inspect.isabstract(obj):
        raise TypeError(f"probe class {obj.__qualname__} does not implement run()")
    declared = getattr(obj, "name", None)
    if declared != name:
        raise TypeError(
            f"probe class {obj.__qualname__} declares name {declared!r} but is registered as "
            f"{name!r}; the entry-point name must equal Probe.name"
        )


def discover_probes(*, disabled: Iterable[str] = ()) -> dict[str, ProbeSpec]:
    """Load every probe registered under ``rai_audit.probes``, except the disabled ones.

    Examples
    --------
    >>> from audit.registry import discover_probes
    >>> spec = discover_probes()["seat"]
    >>> spec.loaded, spec.dist
    (True, 'rai-audit')
    """
    skip = set(disabled)
    specs: dict[str, ProbeSpec] = {}
    for ep in entry_points(PROBE_GROUP):
        if ep.name in skip:
            continue
        dist = ep.dist.name if ep.dist is not None else None
        try:
            obj = ep.load()
            _check_contract(ep.name, obj)
        except Exception as exc:  # a broken plugin must not stop the audit
            specs[ep.name] = ProbeSpec(
                name=ep.name,
                source=ep.value,
                dist=dist,
                error=ErrorInfo(
                    type=type(exc).__name__,
                    message=f"Plugin {ep.name!r} ({ep.value}, from {dist or 'unknown distribution'}) "
                    f"failed to load: {exc}",
                    traceback=traceback.format_exc(),
                ),
            )
            continue
        specs[ep.name] = ProbeSpec(name=ep.name, source=ep.value, dist=dist, cls=obj)
    return specs
