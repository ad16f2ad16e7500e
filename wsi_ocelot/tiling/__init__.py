"""Tiling: cell/context/tissue grids in level-0 px and the tile Dataset."""

from __future__ import annotations

from wsi_ocelot.lazy import lazy_exports
from wsi_ocelot.tiling.grid import (
    Grid,
    cell_grid,
    context_boxes,
    filter_by_mask,
    make_grid,
    tissue_grid,
)

__all__ = [
    "Grid",
    "cell_grid",
    "context_boxes",
    "filter_by_mask",
    "make_grid",
    "tissue_grid",
    "TileDataset",
    "BlockBatches",
    "block_ids",
    "plan_batches",
    "read_batches",
    "SlideTiles",
    "plan_tiles",
]


# deferred: torch is imported only when the Dataset is asked for
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **dict.fromkeys(
            ("TileDataset", "BlockBatches", "block_ids", "plan_batches", "read_batches"),
            "wsi_ocelot.tiling.dataset",
        ),
        "SlideTiles": "wsi_ocelot.tiling.plan",
        "plan_tiles": "wsi_ocelot.tiling.plan",
    },
)
