"""Names the library, the CLI and the report share: the choices a user picks from and the
numbers the outputs are defined by (docs/architecture.md). Imports nothing, so the CLI's
``--help`` and the batch report can read them without torch."""

from __future__ import annotations

__all__ = [
    "BC",
    "CANCER_AREA_THRESHOLD",
    "CANCER_AREA_UINT8",
    "CELL_CLASS_IDS",
    "CELL_TABLE_FORMATS",
    "DEFAULT_MAX_UNREADABLE",
    "NGFF_VERSIONS",
    "PRECISIONS",
    "PURITY_GRID_UM",
    "READERS",
    "RUNTIMES",
    "TC",
]

#: The readers a slide can use; ``openslide`` is the default for every format.
READERS: tuple[str, ...] = ("openslide", "tifffile")
#: The OME-NGFF versions ``tissue.ome.zarr`` is written in: 0.4 on Zarr v2 (default), 0.5 on Zarr v3.
NGFF_VERSIONS: tuple[str, ...] = ("0.4", "0.5")
#: ``--cells-table`` choices → file name.
CELL_TABLE_FORMATS: dict[str, str] = {"parquet": "cells.parquet", "csv": "cells.csv"}
#: What runs the forward pass and in which precision (docs/runtimes.md); ``auto`` first.
RUNTIMES: tuple[str, ...] = ("auto", "torch", "openvino", "onnxruntime")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "int8")

#: The cell classes: 1 = BC (background cell), 2 = TC (tumour cell).
BC, TC = 1, 2
CELL_CLASS_IDS: tuple[int, ...] = (BC, TC)

#: A map pixel is cancer area when its probability is at least this ...
CANCER_AREA_THRESHOLD = 0.5
#: ... which in the uint8 maps (``round(probability × 255)``) is a value of at least 128.
CANCER_AREA_UINT8 = 128

#: Side of a purity heat-map square, µm.
PURITY_GRID_UM = 100.0
#: The fraction of a pass's tiles that may be unreadable before the slide fails.
DEFAULT_MAX_UNREADABLE = 0.05
