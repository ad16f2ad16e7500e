"""Slide access: open any format OpenSlide reads, resolve MPP, read boxes at any MPP."""

from __future__ import annotations

from wsi_ocelot.slide._slide import (
    MPP_FIX,
    SYNTHETIC_DESCRIPTION,
    MppInfo,
    Slide,
    check_mpp,
    check_slide_file,
    open_slide,
    resolve_mpp,
)
from wsi_ocelot.slide.mask import TissueMask, tissue_mask
from wsi_ocelot.slide.tiff_reader import READERS

__all__ = [
    "MPP_FIX",
    "READERS",
    "SYNTHETIC_DESCRIPTION",
    "MppInfo",
    "Slide",
    "TissueMask",
    "check_mpp",
    "check_slide_file",
    "open_slide",
    "resolve_mpp",
    "tissue_mask",
]
