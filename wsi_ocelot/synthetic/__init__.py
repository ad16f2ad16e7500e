"""Synthetic H&E whole-slide images with exact ground truth.

* :func:`build_tissue_model` — the tissue in µm (MPP-independent, deterministic per seed);
* :func:`render_um` — any µm region at any MPP, no TIFF needed;
* :func:`make_synthetic_slide` / :func:`write_synthetic_slide` — the model bound to a
  level-0 MPP, in memory or written as pyramidal TIFF + ``.cells.csv`` + ``.tissue.geojson``;
* :func:`read_ground_truth` — the sidecar files back as (cells, cancer-area geometry);
* :func:`write_pyramidal_tiff` — the TIFF writer itself.
"""

from __future__ import annotations

from wsi_ocelot.synthetic.layout import (
    BC,
    KIND_NAMES,
    TC,
    CellTable,
    SyntheticParams,
    TissueModel,
    build_tissue_model,
)
from wsi_ocelot.synthetic.render import render_um
from wsi_ocelot.synthetic.slide import (
    SyntheticSlide,
    make_synthetic_slide,
    read_ground_truth,
    write_synthetic_slide,
)
from wsi_ocelot.synthetic.stats import SyntheticStats, compute_stats
from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff

__all__ = [
    "BC",
    "KIND_NAMES",
    "TC",
    "CellTable",
    "SyntheticParams",
    "SyntheticSlide",
    "SyntheticStats",
    "TissueModel",
    "build_tissue_model",
    "compute_stats",
    "make_synthetic_slide",
    "read_ground_truth",
    "render_um",
    "write_pyramidal_tiff",
    "write_synthetic_slide",
]
