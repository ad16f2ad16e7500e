"""Draw a dataset's pairs as the model will learn them: what a region's labels look like on disk.

For each pair, left: the cell tile with its marked cells (tumour red, background cells green) and
the area outside the pair's cell mask dimmed (unknown to the loss and the metric); right: the
tissue context with the cancer area (label 2) tinted red, unknown context (255) greyed, and the
cell tile's place outlined. Works on any OCELOT-layout dataset (the release has no masks)::

    python -m training.show_labels my_data --split train --pairs 3 --out labels.png
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from wsi_ocelot.datasets.ocelot import (
    list_pairs,
    read_cell_csv,
    read_cell_mask,
    read_rgb,
    read_tissue_png,
)

log = logging.getLogger("training.show_labels")

TC_COLOUR, BC_COLOUR = (220, 20, 20), (20, 170, 60)


def _cell_panel(
    rgb: np.ndarray, cells: np.ndarray, mask: np.ndarray | None, size: int
) -> Image.Image:
    img = rgb.astype(np.float32)
    if mask is not None:
        img[~mask] = img[~mask] * 0.35 + 255 * 0.1  # unknown: dimmed
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    if mask is not None:  # the mask's edge, yellow
        m = (
            np.asarray(
                Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
            )
            > 0
        )
        edge = (m ^ np.roll(m, 1, 0)) | (m ^ np.roll(m, 1, 1))
        edge[0, :] = edge[:, 0] = False
        arr = np.asarray(im).copy()
        arr[edge] = (255, 210, 0)
        im = Image.fromarray(arr)
    d = ImageDraw.Draw(im)
    k = size / rgb.shape[1]
    r = max(2.0, 10 * k)
    for x, y, c in cells:
        col = TC_COLOUR if int(c) == 2 else BC_COLOUR
        d.ellipse((x * k - r, y * k - r, x * k + r, y * k + r), outline=col, width=2)
    return im


def _tissue_panel(
    rgb: np.ndarray, label: np.ndarray, offset: tuple[float, float], size: int
) -> Image.Image:
    img = rgb.astype(np.float32)
    ca, unknown = label == 2, label == 255
    img[ca] = img[ca] * 0.6 + np.array([230, 40, 40]) * 0.4
    img[unknown] = img[unknown] * 0.3 + 160 * 0.7
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    side = size / 4  # the cell tile's field of view in its 4x context
    cx, cy = offset[0] * size, offset[1] * size
    d.rectangle(
        (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), outline=(0, 0, 0), width=2
    )
    return im


def render(
    root: str | Path,
    split: str = "train",
    pairs: int = 3,
    size: int = 320,
    ids: Sequence[str] | None = None,
) -> Image.Image:
    """One row per pair: the cell panel and the tissue panel, ``size`` px each."""
    recs = list_pairs(root, split)
    if ids:
        recs = [r for r in recs if r.id in set(ids)]
    recs = recs[:pairs]
    canvas = Image.new("RGB", (2 * size + 30, len(recs) * (size + 10) + 10), (255, 255, 255))
    for i, r in enumerate(recs):
        mask = read_cell_mask(r.cell_mask) if r.cell_mask else None
        cell = _cell_panel(read_rgb(r.cell_image), read_cell_csv(r.cell_csv), mask, size)
        tissue = _tissue_panel(
            read_rgb(r.tissue_image), read_tissue_png(r.tissue_png), r.offset, size
        )
        canvas.paste(cell, (10, 10 + i * (size + 10)))
        canvas.paste(tissue, (size + 20, 10 + i * (size + 10)))
    return canvas


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="an OCELOT-layout dataset root")
    p.add_argument("--split", default="train")
    p.add_argument("--pairs", type=int, default=3, help="how many pairs (rows)")
    p.add_argument("--ids", nargs="+", help="these pair ids instead of the first ones")
    p.add_argument("--size", type=int, default=320, help="px per panel")
    p.add_argument("--out", required=True, help="the PNG to write")
    args = p.parse_args(argv)
    render(args.data, args.split, args.pairs, args.size, args.ids).save(args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
