"""Matplotlib figures as self-contained SVG strings, for probes to put in their results."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

__all__ = ["interval_bar_chart", "to_svg"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_svg(fig: Any) -> str:
    """Render a matplotlib figure to an SVG string (text as paths: no font or URL needed) and close it."""
    import matplotlib

    plt = _pyplot()
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "rai-audit"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return buffer.getvalue()


def interval_bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    intervals: Sequence[tuple[float, float] | None] | None = None,
    *,
    xlabel: str,
    highlight: Sequence[bool] | None = None,
    reference: float | None = 0.0,
) -> str:
    """Horizontal bars with interval error bars; highlighted bars (e.g. significant) in a strong colour.

    Examples
    --------
    >>> from audit.figures import interval_bar_chart
    >>> svg = interval_bar_chart(["a", "b"], [0.2, -0.4], [(0.1, 0.3), (-0.6, -0.2)], xlabel="d")
    >>> svg.lstrip().startswith("<?xml") and "<script" not in svg
    True
    """
    plt = _pyplot()
    n = len(labels)
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * n + 1.2))
    colors = ["#b4442c" if (highlight and highlight[i]) else "#7a8ea8" for i in range(n)]
    positions = list(range(n))[::-1]
    ax.barh(positions, values, color=colors, height=0.6)
    if intervals:
        for pos, interval in zip(positions, intervals, strict=False):
            if interval is not None:  # drawn from its own bounds: an interval need not contain the bar's value
                low, high = min(interval), max(interval)
                ax.errorbar([(low + high) / 2], [pos], xerr=[(high - low) / 2],
                            fmt="none", ecolor="#222222", capsize=3, linewidth=1)
    if reference is not None:
        ax.axvline(reference, color="#444444", linewidth=0.8)
    ax.set_yticks(positions)
    ax.set_yticklabels([str(label) for label in labels])
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    return to_svg(fig)
