"""Tile grids in level-0 pixels (pure numpy, no I/O).

A grid covers the slide with square tiles of ``tile_l0`` level-0 px that step by
``stride_l0 = tile_l0 - 2 * margin_l0``. Tile ``(r, c)`` reads the box starting at
``(c * stride - margin, r * stride - margin)`` and *owns* the core
``[c * stride, (c + 1) * stride) × [r * stride, (r + 1) * stride)`` (the last core in a
row or column extends to the slide edge). Cores tile the slide exactly, so a point
belongs to exactly one tile: keeping only the peaks inside each tile's core reports
every cell once, and the margin gives the model context at tile borders.

Each cell tile's context (the paper's x_l) is ``context_factor`` × its field of view,
centred on it, read at ``tissue_mpp``; its relative offset is therefore (0.5, 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from wsi_ocelot.config import GeometryConfig

if TYPE_CHECKING:
    from wsi_ocelot.slide import TissueMask


@dataclass(frozen=True)
class Grid:
    """Tiles of one pass over one slide. All arrays are level-0 px.

    ``boxes`` (N, 4) int64 ``x, y, w, h`` of the read box (with margins);
    ``cores`` (N, 4) int64 ``x0, y0, x1, y1`` of the owned core (half-open);
    ``rows``/``cols`` (N,) grid indices; ``tile_size`` output px per side;
    ``mpp`` the effective µm/px of the resized tiles (``tile_l0 * slide_mpp / tile_size``).
    """

    boxes: np.ndarray
    cores: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    tile_l0: int
    margin_l0: int
    tile_size: int
    mpp: float
    n_rows: int
    n_cols: int

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def stride_l0(self) -> int:
        return self.tile_l0 - 2 * self.margin_l0

    def subset(self, keep: np.ndarray) -> Grid:
        """The grid restricted to a boolean mask or index array."""
        return Grid(
            self.boxes[keep],
            self.cores[keep],
            self.rows[keep],
            self.cols[keep],
            self.tile_l0,
            self.margin_l0,
            self.tile_size,
            self.mpp,
            self.n_rows,
            self.n_cols,
        )


def _even(value: float) -> int:
    return max(2, 2 * round(value / 2))


def make_grid(
    width: int, height: int, slide_mpp: float, target_mpp: float, tile_size: int, margin: int
) -> Grid:
    """Square tiles of ``tile_size`` px at ``target_mpp`` with ``margin`` px overlap on
    each side, over a ``width × height`` level-0 slide with ``slide_mpp`` µm/px.

    The level-0 tile size is rounded to an even number of px so centred context boxes
    stay on integer coordinates; the effective MPP is reported in ``Grid.mpp``."""
    scale = target_mpp / slide_mpp  # level-0 px per output px
    tile_l0 = _even(tile_size * scale)
    margin_l0 = round(margin * tile_l0 / tile_size)
    stride = tile_l0 - 2 * margin_l0
    if stride <= 0:
        raise ValueError(f"margin {margin} leaves no core in a {tile_size} px tile")
    n_cols = max(1, math.ceil(width / stride))
    n_rows = max(1, math.ceil(height / stride))
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rows, cols = rr.ravel().astype(np.int64), cc.ravel().astype(np.int64)
    x0, y0 = cols * stride, rows * stride
    # the last core in a row or column ends at the slide edge (n = ceil(size / stride), so x0 < width)
    x1 = np.where(cols == n_cols - 1, width, x0 + stride)
    y1 = np.where(rows == n_rows - 1, height, y0 + stride)
    boxes = np.stack(
        [x0 - margin_l0, y0 - margin_l0, np.full_like(x0, tile_l0), np.full_like(y0, tile_l0)],
        axis=1,
    )
    cores = np.stack([x0, y0, x1, y1], axis=1)
    return Grid(
        boxes.astype(np.int64),
        cores.astype(np.int64),
        rows,
        cols,
        tile_l0,
        margin_l0,
        tile_size,
        tile_l0 * slide_mpp / tile_size,
        n_rows,
        n_cols,
    )


def cell_grid(width: int, height: int, slide_mpp: float, geometry: GeometryConfig) -> Grid:
    """The cell-pass grid: ``geometry.tile_size`` px tiles at ``geometry.cell_mpp``."""
    return make_grid(
        width, height, slide_mpp, geometry.cell_mpp, geometry.tile_size, geometry.cell_margin
    )


def tissue_grid(width: int, height: int, slide_mpp: float, geometry: GeometryConfig) -> Grid:
    """The tissue-pass grid: ``geometry.tile_size`` px tiles at ``geometry.tissue_mpp``."""
    return make_grid(
        width, height, slide_mpp, geometry.tissue_mpp, geometry.tile_size, geometry.tissue_margin
    )


def context_boxes(
    boxes: np.ndarray, context_factor: int, offset: tuple[float, float] | np.ndarray = (0.5, 0.5)
) -> np.ndarray:
    """Level-0 context boxes (N, 4) for cell boxes (N, 4): ``context_factor`` × the
    field of view, placed so the cell box centre sits at ``offset`` (relative x, y) of
    the context. ``offset`` is one pair or an (N, 2) array; (0.5, 0.5) centres it."""
    boxes = np.asarray(boxes, dtype=np.int64)
    off = np.broadcast_to(np.asarray(offset, dtype=np.float64), (boxes.shape[0], 2))
    w, h = boxes[:, 2], boxes[:, 3]
    cw, ch = w * context_factor, h * context_factor
    cx = boxes[:, 0] + w / 2.0
    cy = boxes[:, 1] + h / 2.0
    x = np.round(cx - off[:, 0] * cw).astype(np.int64)
    y = np.round(cy - off[:, 1] * ch).astype(np.int64)
    return np.stack([x, y, cw, ch], axis=1)


def filter_by_mask(
    grid: Grid, mask: TissueMask, min_fraction: float = 0.0, *, use_core: bool = True
) -> Grid:
    """Keep the tiles whose core (or whole box) touches tissue in ``mask``
    (a :class:`~wsi_ocelot.slide.TissueMask`)."""
    keep = np.zeros(len(grid), dtype=bool)
    for i in range(len(grid)):
        if use_core:
            x0, y0, x1, y1 = grid.cores[i]
            box = (x0, y0, x1 - x0, y1 - y0)
        else:
            box = tuple(grid.boxes[i])
        keep[i] = mask.touches(box, min_fraction)
    return grid.subset(keep)
