"""``overview.png``: the slide thumbnail with the cancer-area outline and a purity heat map.

Frames: ``thumbnail`` pixel (r, c) shows level-0 px ``[c·d, (c+1)·d) × [r·d, (r+1)·d)`` with
``d = downsample``; geometry and cells are given in level-0 px (OpenSlide frame) and divided
by ``d`` for drawing; the purity grid square (i, j) covers level-0 ``[j·s, (j+1)·s) × [i·s,
(i+1)·s)`` with ``s = purity_cell_size`` (as made by ``purity.purity_grid``).
An optional banner (a warning such as :data:`DEMO_WEIGHTS_BANNER`) runs across the top; the
panels and the legend then sit that many px lower in the image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.atomic import atomic_open

log = logging.getLogger(__name__)

__all__ = ["DEMO_WEIGHTS_BANNER", "purity_colormap", "write_overview"]

CA_OUTLINE = (0, 200, 0)
TC_DOT = (220, 20, 20)
BC_DOT = (30, 90, 230)
# blue → pale yellow → red (a diverging map: 0 = all background cells, 1 = all tumour cells)
_STOPS = np.array([[49, 54, 149], [255, 255, 191], [165, 0, 38]], dtype=np.float64)
_GAP = 8
_LEGEND_H = 34
#: The banner of an overview made with the shipped demo weights (``weights_note`` is not None).
DEMO_WEIGHTS_BANNER = "DEMO WEIGHTS (synthetic data only): not for real slides"
# the banner's colours (light amber strip, dark amber letters, a darker edge below), as the report's note
BANNER_FILL = (255, 236, 179)
BANNER_INK = (110, 70, 0)
BANNER_EDGE = (224, 160, 40)


def purity_colormap(p: ArrayLike) -> NDArray[np.uint8]:
    """RGB (…, 3) uint8 for purities in [0, 1] (NaN → white)."""
    a = np.clip(np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.5), 0.0, 1.0) * (
        len(_STOPS) - 1
    )
    i = np.minimum(a.astype(np.intp), len(_STOPS) - 2)
    t = (a - i)[..., None]
    rgb = _STOPS[i] * (1 - t) + _STOPS[i + 1] * t
    rgb[np.isnan(np.asarray(p, dtype=np.float64))] = 255
    return np.rint(rgb).astype(np.uint8)


def _draw_outline(img: Image.Image, geometry: BaseGeometry, downsample: float, width: int) -> None:
    draw = ImageDraw.Draw(img)
    rings = shapely.get_rings(shapely.get_parts(geometry))
    for ring in np.atleast_1d(rings):
        xy = shapely.get_coordinates(ring) / downsample
        if len(xy) >= 2:
            draw.line([tuple(p) for p in xy.tolist()], fill=CA_OUTLINE, width=width, joint="curve")


def _draw_cells(
    img: Image.Image,
    cells: tuple[ArrayLike, ArrayLike, ArrayLike],
    downsample: float,
    max_cells: int,
) -> None:
    x, y, cls = (np.asarray(v).reshape(-1) for v in cells)
    step = max(1, -(-x.size // max_cells))  # deterministic subsample
    x, y, cls = x[::step] / downsample, y[::step] / downsample, cls[::step]
    arr = np.asarray(img).copy()
    h, w = arr.shape[:2]
    c = np.floor(x).astype(np.intp)
    r = np.floor(y).astype(np.intp)
    ok = (r >= 0) & (c >= 0) & (r < h) & (c < w)
    for k, color in ((1, BC_DOT), (2, TC_DOT)):
        sel = ok & (cls == k)
        arr[r[sel], c[sel]] = color
    img.paste(Image.fromarray(arr))


def _heat_panel(
    thumb: NDArray[np.uint8],
    purity: NDArray[np.float64],
    cell: float,
    downsample: float,
    alpha: float,
) -> NDArray[np.uint8]:
    h, w = thumb.shape[:2]
    gh, gw = purity.shape
    gi = np.minimum((np.arange(h) * downsample // cell).astype(np.intp), gh - 1)
    gj = np.minimum((np.arange(w) * downsample // cell).astype(np.intp), gw - 1)
    p = purity[gi[:, None], gj[None, :]]
    grey = thumb.astype(np.float32).mean(axis=2, keepdims=True)
    base = np.repeat(255 - 0.35 * (255 - grey), 3, axis=2)  # faded grey thumbnail
    heat = purity_colormap(p).astype(np.float32)
    has = ~np.isnan(p)[..., None]
    out = np.where(has, (1 - alpha) * base + alpha * heat, base)
    return np.rint(out).astype(np.uint8)


def _legend_width(with_heat: bool, with_ca: bool, with_cells: bool) -> int:
    return 6 + 110 * with_ca + 80 * with_cells + 200 * with_heat


def _legend(width: int, with_heat: bool, with_ca: bool, with_cells: bool) -> Image.Image:
    img = Image.new("RGB", (width, _LEGEND_H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    x = 6
    if with_ca:
        draw.line([(x, 17), (x + 22, 17)], fill=CA_OUTLINE, width=3)
        draw.text((x + 27, 11), "cancer area", fill=(0, 0, 0), font=font)
        x += 110
    if with_cells:
        for color, label in ((TC_DOT, "TC"), (BC_DOT, "BC")):
            draw.ellipse([x, 13, x + 8, 21], fill=color)
            draw.text((x + 12, 11), label, fill=(0, 0, 0), font=font)
            x += 40
    if with_heat:
        bar_w = 120
        draw.text((x, 11), "purity", fill=(0, 0, 0), font=font)
        draw.text((x + 46, 11), "0", fill=(0, 0, 0), font=font)
        x += 58
        bar = purity_colormap(np.linspace(0, 1, bar_w))[None, :, :].repeat(14, axis=0)
        img.paste(Image.fromarray(bar), (x, 10))
        draw.rectangle([x - 1, 9, x + bar_w, 24], outline=(80, 80, 80))
        draw.text((x + bar_w + 5, 11), "1", fill=(0, 0, 0), font=font)
    return img


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at ``size`` px (no system font needed); its small bitmap font on Pillow < 10.1."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: no size argument
        return ImageFont.load_default()


def _wrap(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    width: float,
) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` px (a single long word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def _banner(width: int, text: str) -> Image.Image:
    """A strip ``width`` px wide carrying ``text`` in dark amber on light amber, its letters scaled
    with the image (about 1/36 of its width) so that they stay legible when the overview is shown
    small, wrapped onto as many lines as it needs."""
    size = max(12, round(width / 36))
    font = _font(size)
    pad = max(4, size // 2)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(probe, text, font, width - 2 * pad)
    line_h = round(size * 1.25)
    img = Image.new("RGB", (width, 2 * pad + line_h * len(lines)), BANNER_FILL)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text(
            (pad, pad + i * line_h),
            line,
            fill=BANNER_INK,
            font=font,
            stroke_width=size // 28,
            stroke_fill=BANNER_INK,
        )
    edge = max(2, size // 8)
    draw.rectangle([0, img.height - edge, width - 1, img.height - 1], fill=BANNER_EDGE)
    return img


def write_overview(
    path: str | os.PathLike[str],
    thumbnail: ArrayLike,
    downsample: float,
    *,
    ca_geometry: BaseGeometry | None = None,
    purity: ArrayLike | None = None,
    purity_cell_size: float | None = None,
    cells: tuple[ArrayLike, ArrayLike, ArrayLike] | None = None,
    max_cells: int = 200_000,
    heat_alpha: float = 0.65,
    banner: str | None = None,
) -> Path:
    """Write ``overview.png`` atomically; return the path.

    Left panel: ``thumbnail`` (H, W, 3) uint8 with the cancer area (``ca_geometry``, level-0
    px) outlined in green and, if ``cells = (x, y, cls)`` is given, one dot per cell (TC red,
    BC blue; at most ``max_cells``, evenly subsampled). Right panel, when ``purity`` (a grid
    from ``purity_grid``) and ``purity_cell_size`` (level-0 px per grid square) are given: the
    faded thumbnail under the purity heat map (blue 0 → red 1, blank where no cells) with the
    same outline. A legend strip runs along the bottom. ``banner``: a warning drawn in a strip
    across the top, above the panels (:data:`DEMO_WEIGHTS_BANNER` for the demo weights); None
    (the default) draws none.
    """
    thumb = np.asarray(thumbnail)
    if thumb.ndim != 3 or thumb.shape[2] not in (3, 4) or thumb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be (H, W, 3) uint8, got {thumb.shape} {thumb.dtype}")
    thumb = np.ascontiguousarray(thumb[..., :3])
    if not downsample > 0:
        raise ValueError(f"downsample must be > 0, got {downsample}")
    h, w = thumb.shape[:2]
    outline_w = max(1, round(min(h, w) / 300))
    has_ca = ca_geometry is not None and not ca_geometry.is_empty

    left = Image.fromarray(thumb)
    if cells is not None:
        _draw_cells(left, cells, downsample, max_cells)
    if has_ca:
        _draw_outline(left, ca_geometry, downsample, outline_w)
    panels = [left]
    if purity is not None:
        if purity_cell_size is None or not purity_cell_size > 0:
            raise ValueError(
                "purity_cell_size (level-0 px per grid square) is needed with a purity grid"
            )
        grid = np.asarray(purity, dtype=np.float64)
        if grid.ndim != 2 or grid.size == 0:
            raise ValueError(f"purity must be a non-empty 2-D grid, got shape {grid.shape}")
        right = Image.fromarray(_heat_panel(thumb, grid, purity_cell_size, downsample, heat_alpha))
        if has_ca:
            _draw_outline(right, ca_geometry, downsample, outline_w)
        panels.append(right)

    total_w = sum(p.width for p in panels) + _GAP * (len(panels) - 1)
    legend_w = _legend_width(purity is not None, has_ca, cells is not None)
    canvas_w = max(total_w, legend_w)
    top = _banner(canvas_w, banner) if banner else None
    top_h = top.height if top is not None else 0
    canvas = Image.new("RGB", (canvas_w, top_h + h + _LEGEND_H), (255, 255, 255))
    if top is not None:
        canvas.paste(top, (0, 0))
    x = 0
    for p in panels:
        canvas.paste(p, (x, top_h))
        x += p.width + _GAP
    canvas.paste(
        _legend(canvas.width, purity is not None, has_ca, cells is not None), (0, top_h + h)
    )
    with atomic_open(path) as fh:
        # zlib level 1: the demo slide's 2056×1185 overview in 0.11 s instead of 0.30 s at PIL's
        # default 6 (2-core AMD EPYC), 13 % larger (2.0 vs 1.8 MB); it is on the slide's critical path
        canvas.save(fh, format="PNG", optimize=False, compress_level=1)
    log.debug("wrote overview %s (%d×%d)", path, canvas.width, canvas.height)
    return Path(path)
