"""Calibration suite: false-alarm rate, power and interval coverage of every probe verdict.

Run ``python -m benchmarks.calibration`` (the full suite, at least 40 independent runs per
condition; it rewrites the "Calibration" section of ``benchmarks/RESULTS.md`` and the
``reports/calibration.json`` the model card cites), or ``--runs 5 --cases seat`` for a quick look.
"""

from __future__ import annotations

SUITE_VERSION = "1"

__all__ = ["SUITE_VERSION"]
