"""Per-slide output writers, one module per format (docs/formats.md).

- :mod:`~wsi_ocelot.outputs.geojson`: QuPath GeoJSON — streamed cell detections and
  cancer-area annotations (QuPath's frame: level-0 px minus the OpenSlide bounds offset).
- :mod:`~wsi_ocelot.outputs.polygons`: raster probability map → valid polygons.
- :mod:`~wsi_ocelot.outputs.zarr_store`: ``predictions.zarr`` (Zarr v3, OME-NGFF 0.5 tissue map).
- :mod:`~wsi_ocelot.outputs.overview`: ``overview.png``.
- :mod:`~wsi_ocelot.outputs.cells_table`: a result folder's cells as a pandas table.

Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

from wsi_ocelot.atomic import atomic_open
from wsi_ocelot.errors import OutputWriteError
from wsi_ocelot.outputs.cells_table import read_cells
from wsi_ocelot.outputs.geojson import (
    CA_COLOR,
    CELL_CLASSES,
    CellsGeoJSONWriter,
    write_tissue_geojson,
)
from wsi_ocelot.outputs.overview import purity_colormap, write_overview
from wsi_ocelot.outputs.polygons import clean_polygons, polygons_from_map, threshold_map
from wsi_ocelot.outputs.zarr_store import (
    CELL_COLUMNS,
    PredictionStore,
    ngff_multiscales,
    open_predictions,
)

__all__ = [
    "CA_COLOR",
    "CELL_CLASSES",
    "CELL_COLUMNS",
    "CellsGeoJSONWriter",
    "OutputWriteError",
    "PredictionStore",
    "atomic_open",
    "clean_polygons",
    "ngff_multiscales",
    "open_predictions",
    "polygons_from_map",
    "read_cells",
    "purity_colormap",
    "threshold_map",
    "write_overview",
    "write_tissue_geojson",
]
