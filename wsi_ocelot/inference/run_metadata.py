"""The attributes of ``predictions.zarr``'s root group: what was run on which slide, how, with
which software, and what came out (docs/formats.md)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from wsi_ocelot import __version__
from wsi_ocelot.inference.run_setup import EngineConfig, LoadedModel
from wsi_ocelot.purity import SlideRecord
from wsi_ocelot.slide import Slide

__all__ = ["run_attributes"]


def run_attributes(
    model: LoadedModel,
    config: EngineConfig,
    slide: Slide,
    slide_id: str,
    record: SlideRecord,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Slide, coordinates, model (config, geometry, peaks, training, metrics), software, run
    config, per-stage timings and counts, as JSON-ready values."""
    W, H = slide.dimensions
    info = model.info
    p = record.purity
    return {
        "slide": {
            "path": str(slide.path),
            "id": slide_id,
            "dimensions": [W, H],
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_info.source,
            "vendor": slide.vendor,
            "bounds": list(slide.bounds),
        },
        "coordinates": "cells x, y in OpenSlide level-0 px (GeoJSON subtracts openslide.bounds-x/y when qupath_crop)",
        "model": {
            "path": model.path,
            "variant": info.model.variant,
            "encoder": info.model.encoder,
            "note": record.model_note,
            "config": asdict(info.model),
            "geometry": asdict(model.geometry),
            "peaks": asdict(model.peaks),
            "training": info.training,
            "metrics": info.metrics,
        },
        "software": {"wsi_ocelot": __version__, "torch": torch.__version__},
        "run": {**asdict(config), "mode": record.mode, "device": str(model.device)},
        "runtime": model.runtime.to_json(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "counts": {"cells": p.n_cells, "tc": p.n_tc, "bc": p.n_bc},
    }
