"""A result folder's cells as a table (pandas), for notebooks and scripts (docs/formats.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wsi_ocelot.errors import PredictionFileError
from wsi_ocelot.outputs.geojson import CELL_CLASSES
from wsi_ocelot.outputs.zarr_store import open_predictions

__all__ = ["read_cells"]


def read_cells(result_folder: str | os.PathLike[str]) -> pd.DataFrame:
    """The cells of one slide's result folder (``<out>/<slide-id>/``) as a DataFrame.

    Parameters
    ----------
    result_folder
        A slide's output folder (the one holding ``predictions.zarr``), or the
        ``predictions.zarr`` itself.

    Returns
    -------
    pandas.DataFrame
        One row per cell: ``x``, ``y`` (OpenSlide level-0 px), ``x_um``, ``y_um`` (µm from the
        slide's top-left corner), ``class_id`` (1 background cell, 2 tumour cell),
        ``class_name`` ("Background cell" / "Tumor", QuPath's names), ``prob`` and
        ``in_cancer_area`` (the tissue map's probability at the cell ≥ 0.5; False when the
        model has no tissue branch).

    Examples
    --------
    >>> cells = read_cells("results/slide-01")            # doctest: +SKIP
    >>> cells.groupby("class_name").size()                # doctest: +SKIP
    """
    folder = Path(result_folder)
    zpath = folder if folder.name.endswith(".zarr") else folder / "predictions.zarr"
    if not zpath.exists():
        raise PredictionFileError(zpath, "no predictions.zarr in this folder", "pass a slide's result folder (<out>/<slide-id>)")
    with open_predictions(zpath) as store:
        c = store.cells()
        attrs = store.attrs
        mpp = float((attrs.get("slide") or {}).get("mpp") or np.nan)
        inside = np.zeros(len(c["x"]), bool)
        if store.tissue_mpp is not None and len(c["x"]):
            tissue = store.tissue(0)
            scale = store.tissue_mpp / mpp  # level-0 px per map px
            col = np.clip(np.floor(c["x"] / scale).astype(np.int64), 0, tissue.shape[1] - 1)
            row = np.clip(np.floor(c["y"] / scale).astype(np.int64), 0, tissue.shape[0] - 1)
            inside = np.asarray(tissue.vindex[row, col]) >= 128
    names = np.array([CELL_CLASSES[k][0] for k in sorted(CELL_CLASSES)])
    cls = c["class"].astype(np.int64)
    return pd.DataFrame({
        "x": c["x"], "y": c["y"], "x_um": c["x"].astype(np.float64) * mpp, "y_um": c["y"].astype(np.float64) * mpp,
        "class_id": c["class"], "class_name": pd.Categorical(names[np.clip(cls - 1, 0, len(names) - 1)], categories=list(names)),
        "prob": c["prob"], "in_cancer_area": inside,
    })
