"""Datasets on disk (the OCELOT release layout)."""

from __future__ import annotations

from wsi_ocelot.datasets.ocelot import (
    CELL_CLASSES,
    SPLITS,
    TISSUE_VALUES,
    PairRecord,
    dataset_name,
    list_pairs,
    read_cell_csv,
    read_metadata,
    read_rgb,
    read_tissue_png,
)

__all__ = [
    "CELL_CLASSES",
    "SPLITS",
    "TISSUE_VALUES",
    "PairRecord",
    "dataset_name",
    "list_pairs",
    "read_cell_csv",
    "read_metadata",
    "read_rgb",
    "read_tissue_png",
]
