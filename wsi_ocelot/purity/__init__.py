"""Tumour purity: pure functions on cell tables (level-0 px, OCELOT class ids)."""

from __future__ import annotations

from wsi_ocelot.purity.purity import (
    PurityResult,
    compute_purity,
    inside_geometry,
    inside_map,
    purity_grid,
)

__all__ = ["PurityResult", "compute_purity", "inside_geometry", "inside_map", "purity_grid"]
