"""The installed distribution's version, without importing anything heavy (every CLI start needs it)."""

from __future__ import annotations

import importlib.metadata


def version() -> str:
    """``rai-audit``'s installed version; ``0+unknown`` when running from a source tree."""
    try:
        return importlib.metadata.version("rai-audit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
