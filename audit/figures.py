"""Matplotlib figures as self-contained SVG strings, for probes to put in their results."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["heatmap_grid", "interval_bar_chart", "to_svg"]

# Text stays text (a few bytes a label instead of a path per glyph) in one font list set once for the
# whole figure; geometry keeps two decimals (1/100 px); matplotlib's ids nothing points at are dropped.
_FONTS = "'DejaVu Sans', Arial, Helvetica, sans-serif"
_SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "rai-audit", "font.family": "sans-serif",
           "font.sans-serif": ["DejaVu Sans"]}
_LONG_DECIMAL = re.compile(r"-?\d+\.\d{3,}")
_GEOMETRY = re.compile(r'\b(d|transform|x|y|width|height|x1|x2|y1|y2|points|viewBox)="([^"]*)"')
_FONT_FAMILY = re.compile(r"font-family: ?'DejaVu Sans'(, ?[^;\"]+)*;? ?")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _round(match: re.Match[str]) -> str:
    return f"{float(match.group(0)):.2f}".rstrip("0").rstrip(".")


def _palette_png(match: re.Match[str]) -> str:
    """An embedded RGBA PNG re-encoded losslessly with a palette when it has at most 256 colours."""
    import base64

    from PIL import Image

    data = base64.b64decode(match.group(1))
    image = Image.open(io.BytesIO(data)).convert("RGBA")
    pixels = np.asarray(image).reshape(-1, 4)
    colours, index = np.unique(pixels, axis=0, return_inverse=True)
    if len(colours) > 256:
        return match.group(0)
    opaque = bool((colours[:, 3] == 255).all())
    indexed = Image.fromarray(index.reshape(image.size[1], image.size[0]).astype(np.uint8), mode="P")
    indexed.putpalette(colours[:, :3].astype(np.uint8).ravel().tolist())
    if not opaque:
        indexed.info["transparency"] = bytes(colours[:, 3].astype(np.uint8).tolist())
    buffer = io.BytesIO()
    indexed.save(buffer, format="PNG", optimize=True, transparency=indexed.info.get("transparency"))
    if buffer.tell() >= len(data):
        return match.group(0)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def compact_svg(svg: str) -> str:
    """The same drawing in fewer bytes: no comments, metadata, unreferenced ids or indentation.

    Numbers in geometry attributes keep two decimals; text content (token labels) is left as it is.
    """
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    referenced = set(re.findall(r"#([\w.-]+)", svg))
    svg = re.sub(r' id="([^"]*)"', lambda m: m.group(0) if m.group(1) in referenced else "", svg)
    svg = _GEOMETRY.sub(lambda m: f'{m.group(1)}="{_LONG_DECIMAL.sub(_round, m.group(2))}"', svg)
    svg = re.sub(r">\s+<", "><", svg)
    svg = re.sub(r"data:image/png;base64,([A-Za-z0-9+/=\s]+)", _palette_png, svg)
    if _FONT_FAMILY.search(svg):
        svg = re.sub(r'; ?"', '"', _FONT_FAMILY.sub("", svg)).replace(' style=""', "")
        svg = re.sub(r"(<svg\b[^>]*>)", lambda m: m.group(1) + f"<style>text{{font-family:{_FONTS}}}</style>", svg,
                     count=1)
    while True:  # attribute-less wrappers, left by the dropped ids, around nothing or a single element
        shorter = re.sub(r"<g>(<(text|path|use|image)\b[^<]*(</\2>|/>)|)</g>", r"\1", svg)
        if shorter == svg:
            return svg
        svg = shorter


def to_svg(fig: Any) -> str:
    """Render a matplotlib figure to a compact SVG string and close it.

    Text is SVG text in a sans-serif font every system has (no font file or URL is needed), so labels
    are small, selectable and print sharply.
    """
    import matplotlib

    plt = _pyplot()
    buffer = io.StringIO()
    with matplotlib.rc_context(_SVG_RC):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return compact_svg(buffer.getvalue())


def heatmap_grid(
    mats: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    tokens: Sequence[str] | None = None,
    ncols: int = 4,
    panel: float = 2.6,
    suptitle: str = "",
    label: str = "weight",
    cmap: str = "Blues",
) -> str:
    """Square heatmaps (rows: queries, columns: keys) side by side, with one shared colour scale.

    The panels are one raster image (a cell per value, drawn without smoothing), so a grid of 72
    heads costs one small PNG instead of 72; panel titles, token labels (rows on the left of each
    row of panels, columns under each column of panels) and the colour bar stay text.

    Examples
    --------
    >>> import numpy as np
    >>> from audit.figures import heatmap_grid
    >>> svg = heatmap_grid([np.eye(3), np.full((3, 3), 1 / 3)], ["a", "b"], tokens=["x", "y", "z"])
    >>> svg.count("<image") == 1 and ">z</text>" in svg and "<script" not in svg
    True
    """
    plt = _pyplot()
    n = len(mats)
    size = max(m.shape[0] for m in mats)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    gap = max(1, size // 8)
    step = size + gap
    mosaic = np.full((nrows * step - gap, ncols * step - gap), np.nan)
    for k, mat in enumerate(mats):
        r, c = divmod(k, ncols)
        mosaic[r * step:r * step + mat.shape[0], c * step:c * step + mat.shape[1]] = mat
    vmax = max(float(np.nanmax(mosaic)), 1e-9)
    fig, ax = plt.subplots(figsize=(panel * ncols + 1.1, panel * nrows + (0.6 if suptitle else 0.3)))
    colours = plt.get_cmap(cmap, 32).with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=colours, vmin=0.0, vmax=vmax, interpolation="none", aspect="equal")
    title_size = 8 if panel >= 2 else 6
    for k, title in enumerate(titles[:n]):
        r, c = divmod(k, ncols)
        ax.text(c * step + (size - 1) / 2, r * step - 0.6, str(title), ha="center", va="bottom", fontsize=title_size)
    ax.set_frame_on(False)
    ax.tick_params(length=0, pad=1)
    if tokens is not None:
        labels = [str(t) for t in tokens][:size]
        fontsize = max(3.5, min(8.0, 72.0 * panel / max(1, len(labels)) * 0.8))
        ax.set_yticks([r * step + j for r in range(nrows) for j in range(len(labels))])
        ax.set_yticklabels(labels * nrows, fontsize=fontsize)
        ax.set_xticks([c * step + j for c in range(ncols) for j in range(len(labels))])
        ax.set_xticklabels(labels * ncols, fontsize=fontsize, rotation=90)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=ax, shrink=min(0.9, 0.35 + 0.15 * nrows), pad=0.02, fraction=0.03)
    bar.set_label(label, fontsize=7)
    bar.ax.tick_params(labelsize=6)
    bar.outline.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return to_svg(fig)


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
