"""Figures: compact SVG that still says everything (labels, colour scale), heatmaps that stay small."""

from __future__ import annotations

import base64
import io
import re
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image

from audit.figures import compact_svg, heatmap_grid, interval_bar_chart, to_svg

SVG = "{http://www.w3.org/2000/svg}"
TOKENS = ["[CLS]", "the", "nurse", "said", "that", "she", "would", "be", "late", "for", "the", "morning",
          "shift", "because", "of", "traffic", "&", "<b>", ".", "[SEP]"]


def _maps(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.random((size, size)) ** 4
        out.append(a / a.sum(1, keepdims=True))
    return out


def _texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg.encode()).iter(f"{SVG}text")]


def _images(svg: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in re.findall(r"data:image/png;base64,([^\"]+)", svg)]


def test_per_head_grid_is_one_small_image_with_token_labels_and_a_colour_scale():
    """Regression: 72 panels as 72 images with every glyph a path made one figure 230-900 KB."""
    mats = _maps(72, len(TOKENS))
    svg = heatmap_grid(mats, [f"L{i // 12 + 1} H{i % 12 + 1}" for i in range(72)], tokens=TOKENS, ncols=12,
                       panel=1.15, label="attention weight")
    assert len(svg) < 100_000, len(svg)
    assert len(_images(svg)) == 1  # the panels are one raster image
    texts = _texts(svg)
    assert "attention weight" in texts  # the colour bar's label
    assert {"nurse", "&", "<b>", "[SEP]", "L6 H12"} <= set(texts)  # token labels (escaped) and panel titles
    assert texts.count("nurse") == 6 + 12  # every row of panels (queries) and every column (keys)
    assert "<b>" not in svg and "&lt;b&gt;" in svg


def test_heatmap_pixels_are_the_values_on_the_shared_scale():
    """The raster holds one pixel per value, coloured on one scale for every panel (not rescaled per panel)."""
    import matplotlib

    mats = [np.array([[0.0, 1.0], [0.5, 0.25]]), np.array([[0.5, 0.5], [1.0, 0.0]])]
    svg = heatmap_grid(mats, ["a", "b"], ncols=2, label="weight")
    (image,) = _images(svg)
    pixels = np.asarray(image.convert("RGBA"))
    assert pixels.shape[:2] == (2, 2 + 1 + 2)  # two 2x2 panels and a one-cell gap
    colours = matplotlib.colormaps["Blues"].resampled(32)
    expected = (np.asarray(colours(np.array([0.0, 1.0, 0.5, 0.25]))) * 255).round().astype(int)
    got = pixels[[0, 0, 1, 1], [0, 1, 0, 1]].astype(int)
    assert np.abs(got - expected).max() <= 1
    assert (pixels[:, 2] == 255).all()  # the gap between panels is white
    np.testing.assert_allclose(pixels[1, 3], pixels[0, 1], atol=1)  # 1.0 in map b is coloured as 1.0 in map a
    np.testing.assert_allclose(pixels[0, 3], pixels[1, 0], atol=1)  # and 0.5 as 0.5


def test_palette_reencoding_is_lossless():
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (200, 4), dtype=np.uint8)
    rgba = palette[rng.integers(0, 200, (30, 40))]
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    svg = compact_svg(f'<svg xmlns="http://www.w3.org/2000/svg"><image href="data:image/png;base64,{data}"/></svg>')
    (image,) = _images(svg)
    assert image.mode == "P"
    np.testing.assert_array_equal(np.asarray(image.convert("RGBA")), rgba)


def test_compact_svg_keeps_what_is_referenced_and_every_label():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.123456, 0.987654], marker="o")
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["3.14159", "<she>"])
    svg = to_svg(fig)
    assert "<!--" not in svg and "<metadata" not in svg
    assert {"3.14159", "<she>"} <= set(_texts(svg))  # numbers in text are not rounded, markup escaped
    for ref in re.findall(r'(?:href|url\()["(]?#([\w.-]+)', svg):
        assert f'id="{ref}"' in svg, ref
    assert not re.search(r'\b(?:d|x|y|transform)="[^"]*\d\.\d{3,}', svg)  # geometry keeps two decimals


def test_bar_chart_is_small_and_text_is_text():
    svg = interval_bar_chart([f"WEAT {i}" for i in range(10)], list(np.linspace(-1, 1, 10)),
                             [(v - 0.2, v + 0.2) for v in np.linspace(-1, 1, 10)], xlabel="effect size d")
    assert len(svg) < 20_000, len(svg)
    assert "effect size d" in _texts(svg) and "WEAT 9" in _texts(svg)
