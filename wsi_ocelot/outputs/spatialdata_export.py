"""A slide's result as a SpatialData ``.zarr`` for the scverse stack (docs/formats.md §2).

``wsi-ocelot export-spatialdata RESULT`` (or :func:`export_spatialdata`) reads a finished result
folder and writes ``RESULT/spatialdata.zarr``, which ``spatialdata.read_zarr`` opens:

* ``points["cells"]``: one point per cell, ``x``, ``y`` in the slide's level-0 px (OpenSlide's
  uncropped frame, like ``predictions.zarr``), with ``class_name`` (the feature key), ``class_id``,
  ``prob`` and ``in_cancer_area`` (the columns of :func:`~wsi_ocelot.outputs.cells_table.read_cells`);
* ``shapes["cancer_area"]``: the cancer-area polygons of ``tissue.geojson``, moved back from
  QuPath's frame to level-0 px;
* ``images["cancer_area_probability"]``: the tissue map (uint8, probability × 255; channel
  ``cancer_area_probability``), scaled by its level-0 downsample onto the slide (SpatialData puts
  pixel i over [i, i + 1), so map px c covers level-0 [c·d, (c+1)·d) as in ``tissue.ome.zarr``),
  with coarser levels for viewers; absent when the model has no tissue branch.

Both are in the coordinate system ``"global"`` = slide level-0 px (LazySlide's frame for a
slide) and in ``"micrometer"`` (scaled by the slide's µm/px). SpatialData is an optional extra
(``pip install "wsi-ocelot[spatialdata]"``): it is imported only here, when asked for.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import shapely
import shapely.affinity

from wsi_ocelot.atomic import partial_folder, publish_folder
from wsi_ocelot.errors import MissingExtraError, OutputWriteError, PredictionFileError
from wsi_ocelot.outputs.cells_table import read_cells
from wsi_ocelot.outputs.zarr_store import open_predictions

log = logging.getLogger(__name__)

__all__ = ["SPATIALDATA_NAME", "export_spatialdata"]

#: the export's default name inside a result folder
SPATIALDATA_NAME = "spatialdata.zarr"
COORDINATE_SYSTEM = "global"  # slide level-0 px
MAP_NAME = "cancer_area_probability"


def _spatialdata() -> Any:
    try:
        import spatialdata
    except ImportError as err:
        raise MissingExtraError(
            None,
            f"the SpatialData export needs the 'spatialdata' package ({err.name or err} is not installed)",
            'pip install "wsi-ocelot[spatialdata]"',
        ) from err
    return spatialdata


def _cancer_area(folder: Path, origin: tuple[float, float]) -> list[shapely.Polygon]:
    """The polygons of ``tissue.geojson`` (QuPath's frame) in OpenSlide level-0 px."""
    path = next(
        (p for p in (folder / "tissue.geojson", folder / "tissue.geojson.gz") if p.is_file()), None
    )
    if path is None:
        return []
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        doc = json.loads(raw)
        geoms = [shapely.geometry.shape(f["geometry"]) for f in doc.get("features", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise PredictionFileError(
            path,
            f"not a valid GeoJSON FeatureCollection ({err})",
            "rerun the slide to rewrite tissue.geojson",
        ) from err
    ox, oy = origin
    polys: list[shapely.Polygon] = []
    for g in geoms:
        g = shapely.affinity.translate(g, ox, oy) if (ox or oy) else g
        polys.extend(getattr(g, "geoms", [g]))
    return [p for p in polys if isinstance(p, shapely.Polygon) and not p.is_empty]


def export_spatialdata(
    result_folder: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write one slide's result (``<out>/<slide-id>/``) as a SpatialData ``.zarr``; return its path.

    Parameters
    ----------
    result_folder
        A slide's result folder (holding ``predictions.zarr``).
    out
        The ``.zarr`` to write; default ``result_folder/spatialdata.zarr``.
    overwrite
        Replace an existing export (otherwise that is an error).

    Raises
    ------
    MissingExtraError
        spatialdata is not installed (one line naming the extra to install).

    Examples
    --------
    >>> path = export_spatialdata("results/slide-01")            # doctest: +SKIP
    >>> sdata = spatialdata.read_zarr(path); sdata["cells"]       # doctest: +SKIP
    """
    folder = Path(result_folder)
    if not (folder / "predictions.zarr").exists():
        raise PredictionFileError(
            folder,
            "no predictions.zarr in this folder",
            "pass a slide's result folder (<out>/<slide-id>)",
        )
    final = Path(out) if out is not None else folder / SPATIALDATA_NAME
    if final.exists() and not overwrite:
        raise OutputWriteError(
            final, "the export exists", "pass --overwrite, or choose another --out"
        )
    sd = _spatialdata()
    import dask.array as da
    import geopandas as gpd  # spatialdata's own dependencies
    from spatialdata.models import Image2DModel, PointsModel, ShapesModel
    from spatialdata.transformations import Identity, Scale

    store = open_predictions(folder / "predictions.zarr")  # read-only: nothing to close
    attrs = store.attrs
    slide = attrs.get("slide") or {}
    mpp = float(slide.get("mpp") or 1.0)
    bounds = slide.get("bounds") or [0, 0]
    qupath_crop = (attrs.get("run") or {}).get("qupath_crop", True)
    origin = (float(bounds[0]), float(bounds[1])) if qupath_crop else (0.0, 0.0)

    def transforms() -> dict[str, Any]:
        return {COORDINATE_SYSTEM: Identity(), "micrometer": Scale([mpp, mpp], axes=("x", "y"))}

    cells = read_cells(folder)
    cells["class_name"] = cells["class_name"].astype(
        str
    )  # PointsModel keeps the feature key categorical itself
    points = PointsModel.parse(
        cells[["x", "y", "class_name", "class_id", "prob", "in_cancer_area"]],
        coordinates={"x": "x", "y": "y"},
        feature_key="class_name",
        transformations=transforms(),
    )
    polys = _cancer_area(folder, origin)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame({"name": ["Cancer area"] * len(polys)}, geometry=polys),
        transformations=transforms(),
    )
    images: dict[str, Any] = {}
    if store.tissue_map is not None:
        d = store.tissue_map.level0_downsample(mpp)  # level-0 px per map px
        level0 = store.tissue(0)
        n_down = 0
        while n_down < 4 and min(level0.shape) >= 512 * 2 ** (n_down + 1):
            n_down += 1
        images[MAP_NAME] = Image2DModel.parse(
            da.from_zarr(level0)[None],
            dims=("c", "y", "x"),
            c_coords=[MAP_NAME],
            scale_factors=[2] * n_down or None,
            transformations={
                COORDINATE_SYSTEM: Scale([d, d], axes=("y", "x")),
                "micrometer": Scale([d * mpp, d * mpp], axes=("y", "x")),
            },
        )
    sdata = sd.SpatialData(
        points={"cells": points},
        shapes={"cancer_area": shapes},
        images=images,
        attrs={
            "wsi_ocelot": {
                "slide": slide,
                "coordinate_system": f"{COORDINATE_SYSTEM} = slide level-0 px (OpenSlide frame)",
                "model": {
                    k: (attrs.get("model") or {}).get(k) for k in ("path", "variant", "encoder")
                },
            }
        },
    )
    final.parent.mkdir(parents=True, exist_ok=True)
    work = partial_folder(final.parent, final.name)
    try:
        target = work / final.name
        sdata.write(target)
        publish_folder(target, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info(
        "SpatialData export of %s: %d cells, %d cancer-area polygons%s -> %s",
        folder,
        len(cells),
        len(polys),
        ", the tissue map" if images else "",
        final,
    )
    return final
