"""Tumour purity: a streaming counter and functions on cell tables (level-0 px, OCELOT class ids)."""

from __future__ import annotations

from wsi_ocelot.purity.purity import (
    PurityCounter,
    PurityResult,
    compute_purity,
    inside_geometry,
    inside_map,
    purity_grid,
)
from wsi_ocelot.purity.record import SUMMARY_COLUMNS, SlideRecord

__all__ = [
    "SUMMARY_COLUMNS",
    "PurityCounter",
    "PurityResult",
    "SlideRecord",
    "compute_purity",
    "inside_geometry",
    "inside_map",
    "purity_grid",
]
