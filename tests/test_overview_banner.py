"""The demo-weights banner on ``overview.png`` (issue 19): a visible strip across the top of the
image, above the panels, that leaves the slide's panels themselves untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely
from PIL import Image

from wsi_ocelot.outputs.overview import BANNER_FILL, BANNER_INK, DEMO_WEIGHTS_BANNER, write_overview


def _overview(path: Path, w: int, h: int, banner: str | None) -> np.ndarray:
    ds = 8.0
    thumb = np.full((h, w, 3), 235, np.uint8)
    thumb[h // 6 : 5 * h // 6, w // 5 : 4 * w // 5] = (190, 120, 180)
    ca = shapely.box(w // 3 * ds, h // 3 * ds, 2 * w // 3 * ds, 2 * h // 3 * ds)
    purity = np.linspace(0, 1, 12).reshape(3, 4)
    write_overview(
        path, thumb, ds, ca_geometry=ca, purity=purity, purity_cell_size=w * ds / 4, banner=banner
    )
    return np.asarray(Image.open(path).convert("RGB"))


def test_demo_banner_is_drawn_above_untouched_panels(tmp_path: Path) -> None:
    # fails on the old code: write_overview had no banner (TypeError), so a demo-weights overview looked like any other
    w, h = (
        1200,
        900,
    )  # the size the engine makes (~1200 px on the long side), two panels side by side
    plain = _overview(tmp_path / "plain.png", w, h, None)
    marked = _overview(tmp_path / "demo.png", w, h, DEMO_WEIGHTS_BANNER)
    top = marked.shape[0] - plain.shape[0]
    assert (
        marked.shape[1] == plain.shape[1] and 20 < top < 0.15 * marked.shape[0]
    )  # one line, a small part of the image
    np.testing.assert_array_equal(
        marked[top:], plain
    )  # the panels and the legend, unchanged, below the banner
    strip = marked[:top].reshape(-1, 3).astype(int)
    fill = np.all(strip == BANNER_FILL, axis=1).mean()
    ink = np.abs(strip - np.array(BANNER_INK)).sum(axis=1) < 60
    assert fill > 0.6  # a light amber strip, not the slide
    assert ink.mean() > 0.02  # with text in it
    cols = np.flatnonzero(ink.reshape(top, -1).any(axis=0))
    assert (
        cols[0] < 0.05 * w and cols[-1] - cols[0] > 0.5 * w
    )  # one line of text across most of the image
    assert (
        not np.all(plain[: top // 2] == BANNER_FILL, axis=2).any(axis=1).all()
    )  # no banner without one asked for


def test_long_banner_wraps_inside_a_small_overview(tmp_path: Path) -> None:
    # fails on the old code: no banner parameter
    text = DEMO_WEIGHTS_BANNER + " " + "and a longer explanation follows here" * 3
    marked = _overview(tmp_path / "small.png", 200, 150, text)
    plain = _overview(tmp_path / "small_plain.png", 200, 150, None)
    assert marked.shape[1] == plain.shape[1]  # wrapped onto more lines, never wider than the image
    np.testing.assert_array_equal(marked[marked.shape[0] - plain.shape[0] :], plain)
