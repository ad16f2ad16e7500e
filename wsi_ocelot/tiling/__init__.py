"""Tiling: cell/context/tissue grids in level-0 px and the tile Dataset."""

from __future__ import annotations

from typing import Any

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


def __getattr__(name: str) -> Any:  # deferred: torch is imported only when the Dataset is asked for
    if name in ("TileDataset", "BlockBatches", "block_ids", "plan_batches", "read_batches"):
        from wsi_ocelot.tiling import dataset

        return getattr(dataset, name)
    if name in ("SlideTiles", "plan_tiles"):
        from wsi_ocelot.tiling import plan

        return getattr(plan, name)
    raise AttributeError(name)
