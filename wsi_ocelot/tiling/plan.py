"""Everything one slide needs before inference: tissue mask, the cell-tile grid with
each tile's context box, and the tissue-pass grid, restricted to tiles on tissue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.slide import Slide, TissueMask, tissue_mask
from wsi_ocelot.tiling.grid import Grid, cell_grid, context_boxes, filter_by_mask, tissue_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideTiles:
    """The tiling of one slide (all boxes in level-0 px).

    ``cells``: cell tiles on tissue; ``contexts`` (N, 4) their centred context boxes;
    ``tissue``: tissue-pass tiles on tissue; ``mask``: the tissue mask used."""

    cells: Grid
    contexts: np.ndarray
    tissue: Grid
    mask: TissueMask
    geometry: GeometryConfig


def plan_tiles(
    slide: Slide, geometry: GeometryConfig, mask: TissueMask | None = None
) -> SlideTiles:
    """Grids for ``slide`` at the geometry's MPPs, keeping tiles that touch tissue."""
    if mask is None:
        mask = tissue_mask(slide)
    w, h = slide.dimensions
    cells = filter_by_mask(cell_grid(w, h, slide.mpp, geometry), mask)
    tissue = filter_by_mask(tissue_grid(w, h, slide.mpp, geometry), mask)
    ctx = context_boxes(cells.boxes, geometry.context_factor)
    log.info(
        "%s: %d cell tiles and %d tissue tiles on %.1f%% tissue",
        slide.path.name,
        len(cells),
        len(tissue),
        100 * mask.fraction,
    )
    return SlideTiles(cells=cells, contexts=ctx, tissue=tissue, mask=mask, geometry=geometry)
