"""Inference: peaks (cell points from probability maps); the engine lives beside it."""

from __future__ import annotations

from wsi_ocelot.inference.peaks import PeakConfig, find_peaks, gaussian_blur

__all__ = ["PeakConfig", "find_peaks", "gaussian_blur"]
