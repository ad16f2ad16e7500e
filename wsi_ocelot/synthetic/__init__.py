"""Synthetic H&E whole-slide images with exact ground truth.

* :func:`build_tissue_model` — the tissue in µm (MPP-independent, deterministic per seed);
* :func:`render_um` — any µm region at any MPP, no TIFF needed;
* :func:`make_synthetic_slide` / :func:`write_synthetic_slide` — the model bound to a
  level-0 MPP, in memory or written as pyramidal TIFF + ``.cells.csv`` + ``.tissue.geojson``;
* :func:`read_ground_truth` — the sidecar files back as (cells, cancer-area geometry);
* :func:`write_pyramidal_tiff` — the TIFF writer itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsi_ocelot.lazy import lazy_exports

if TYPE_CHECKING:  # the names are imported on first use (below): see __getattr__
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

#: public name → the module that defines it
_API = {
    **dict.fromkeys(
        (
            "BC",
            "KIND_NAMES",
            "TC",
            "CellTable",
            "SyntheticParams",
            "TissueModel",
            "build_tissue_model",
        ),
        "wsi_ocelot.synthetic.layout",
    ),
    "render_um": "wsi_ocelot.synthetic.render",
    **dict.fromkeys(
        ("SyntheticSlide", "make_synthetic_slide", "read_ground_truth", "write_synthetic_slide"),
        "wsi_ocelot.synthetic.slide",
    ),
    "SyntheticStats": "wsi_ocelot.synthetic.stats",
    "compute_stats": "wsi_ocelot.synthetic.stats",
    "write_pyramidal_tiff": "wsi_ocelot.synthetic.tiff",
}

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


# deferred (scipy and the renderer take ~0.5 s to import): the CLI's parser imports
# wsi_ocelot.synthetic.command, and `wsi-ocelot --help` stays instant
__getattr__, __dir__ = lazy_exports(__name__, _API)
