"""Per-slide output writers, one module per format (docs/formats.md).

- :mod:`~wsi_ocelot.outputs.geojson`: QuPath GeoJSON — streamed cell detections and
  cancer-area annotations (QuPath's frame: level-0 px minus the OpenSlide bounds offset).
- :mod:`~wsi_ocelot.outputs.polygons`: raster probability map → valid polygons.
- :mod:`~wsi_ocelot.outputs.zarr_store`: ``predictions.zarr`` (Zarr v3: the cells, the run's attributes).
- :mod:`~wsi_ocelot.outputs.ome_zarr`: ``tissue.ome.zarr`` (the tissue map; OME-NGFF 0.4 on Zarr v2 or 0.5 on v3).
- :mod:`~wsi_ocelot.outputs.overview`: ``overview.png``.
- :mod:`~wsi_ocelot.outputs.spatialdata_export`: a result as a SpatialData ``.zarr`` (optional extra).
- :mod:`~wsi_ocelot.outputs.cells_table`: a result folder's cells as a table: ``read_cells``
  (pandas) and the streamed ``cells.parquet`` / ``cells.csv``.

Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

from wsi_ocelot.errors import OutputWriteError
from wsi_ocelot.outputs.cells_table import (
    CELL_TABLE_COLUMNS,
    CELL_TABLE_FORMATS,
    CellsTableWriter,
    read_cells,
)
from wsi_ocelot.outputs.geojson import (
    CA_COLOR,
    CELL_CLASSES,
    CellsGeoJSONWriter,
    write_tissue_geojson,
)
from wsi_ocelot.outputs.ome_zarr import (
    NGFF_VERSIONS,
    TISSUE_MAP_NAME,
    TissueMapStore,
    ngff_multiscales,
)
from wsi_ocelot.outputs.overview import purity_colormap, write_overview
from wsi_ocelot.outputs.polygons import clean_polygons, polygons_from_map, threshold_map
from wsi_ocelot.outputs.spatialdata_export import SPATIALDATA_NAME, export_spatialdata
from wsi_ocelot.outputs.zarr_store import (
    CELL_COLUMNS,
    PredictionStore,
    open_predictions,
)

__all__ = [
    "CA_COLOR",
    "CELL_CLASSES",
    "CELL_COLUMNS",
    "CELL_TABLE_COLUMNS",
    "CELL_TABLE_FORMATS",
    "CellsGeoJSONWriter",
    "CellsTableWriter",
    "NGFF_VERSIONS",
    "OutputWriteError",
    "SPATIALDATA_NAME",
    "PredictionStore",
    "TISSUE_MAP_NAME",
    "TissueMapStore",
    "clean_polygons",
    "export_spatialdata",
    "ngff_multiscales",
    "open_predictions",
    "polygons_from_map",
    "read_cells",
    "purity_colormap",
    "threshold_map",
    "write_overview",
    "write_tissue_geojson",
]
