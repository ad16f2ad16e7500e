"""A result folder's cells as a table: ``read_cells`` (pandas, from ``predictions.zarr``) and the
streamed ``cells.parquet`` / ``cells.csv`` beside the GeoJSON (docs/formats.md §2).

Both have the same columns, in the same order as the Zarr cell columns and ``cells.geojson``:

=================  ==========  ========================================================
column             type        meaning
=================  ==========  ========================================================
``x``, ``y``       float32     OpenSlide level-0 px (uncropped frame, like the Zarr)
``x_um``, ``y_um`` float64     µm from the slide's top-left corner (x · slide µm/px)
``class_id``       uint8       1 background cell, 2 tumour cell
``class_name``     category    "Background cell" / "Tumor" (QuPath's names)
``prob``           float32     the class probability at the peak
``in_cancer_area`` bool        the tissue map's cancer-area probability at the cell ≥ 0.5
=================  ==========  ========================================================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from wsi_ocelot.atomic import StreamedFile, StreamedWriter
from wsi_ocelot.cells import cancer_area, check_cell_classes
from wsi_ocelot.constants import CELL_TABLE_FORMATS
from wsi_ocelot.errors import OutputWriteError, PredictionFileError
from wsi_ocelot.outputs.geojson import CELL_CLASSES
from wsi_ocelot.outputs.zarr_store import open_predictions

log = logging.getLogger(__name__)

__all__ = [
    "CELL_TABLE_COLUMNS",
    "CELL_TABLE_FORMATS",
    "CellsTableWriter",
    "cells_table_name",
    "read_cells",
]

#: the table's columns, in order
CELL_TABLE_COLUMNS: tuple[str, ...] = (
    "x",
    "y",
    "x_um",
    "y_um",
    "class_id",
    "class_name",
    "prob",
    "in_cancer_area",
)
_CLASS_NAMES: list[str] = [CELL_CLASSES[k][0] for k in sorted(CELL_CLASSES)]


def cells_table_name(fmt: str) -> str:
    """The file name of a cells table format; ``ValueError`` naming the choices otherwise."""
    if fmt not in CELL_TABLE_FORMATS:
        raise ValueError(
            f"unknown cells table format {fmt!r}; use one of {', '.join(CELL_TABLE_FORMATS)}"
        )
    return CELL_TABLE_FORMATS[fmt]


def _frame(
    x: ArrayLike,
    y: ArrayLike,
    cls: ArrayLike,
    prob: ArrayLike,
    inside: ArrayLike | None,
    mpp: float,
) -> pd.DataFrame:
    """The table's rows for one batch of cells (x, y in level-0 px)."""
    xf = np.asarray(x, dtype=np.float32).reshape(-1)
    yf = np.asarray(y, dtype=np.float32).reshape(-1)
    ci = np.asarray(cls).reshape(-1).astype(np.uint8)
    names = np.asarray(_CLASS_NAMES, dtype=object)[
        np.clip(ci.astype(np.int64) - 1, 0, len(_CLASS_NAMES) - 1)
    ]
    flags = (
        np.zeros(xf.size, bool) if inside is None else np.asarray(inside, dtype=bool).reshape(-1)
    )
    return pd.DataFrame(
        {
            "x": xf,
            "y": yf,
            "x_um": xf.astype(np.float64) * mpp,
            "y_um": yf.astype(np.float64) * mpp,
            "class_id": ci,
            "class_name": pd.Categorical(names, categories=_CLASS_NAMES),
            "prob": np.asarray(prob, dtype=np.float32).reshape(-1),
            "in_cancer_area": flags,
        },
        columns=list(CELL_TABLE_COLUMNS),
    )


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
        One row per cell (the module's columns): ``x``, ``y`` (OpenSlide level-0 px), ``x_um``,
        ``y_um`` (µm from the slide's top-left corner), ``class_id`` (1 background cell, 2 tumour
        cell), ``class_name`` ("Background cell" / "Tumor", QuPath's names), ``prob`` and
        ``in_cancer_area`` (the tissue map's probability at the cell ≥ 0.5; False when the
        model has no tissue branch). The rows of ``cells.parquet`` / ``cells.csv``, in their order.

    Examples
    --------
    >>> cells = read_cells("results/slide-01")            # doctest: +SKIP
    >>> cells.groupby("class_name").size()                # doctest: +SKIP
    """
    folder = Path(result_folder)
    zpath = folder if folder.name.endswith(".zarr") else folder / "predictions.zarr"
    if not zpath.exists():
        raise PredictionFileError(
            zpath,
            "no predictions.zarr in this folder",
            "pass a slide's result folder (<out>/<slide-id>)",
        )
    with open_predictions(zpath) as store:
        c = store.cells()
        mpp = float((store.attrs.get("slide") or {}).get("mpp") or np.nan)
        inside = np.zeros(len(c["x"]), bool)
        if store.tissue_map is not None and len(c["x"]):
            tissue = store.tissue(0)
            scale = store.tissue_map.level0_downsample(mpp)  # level-0 px per map px
            col = np.clip(
                np.floor(c["x"].astype(np.float64) / scale).astype(np.int64), 0, tissue.shape[1] - 1
            )
            row = np.clip(
                np.floor(c["y"].astype(np.float64) / scale).astype(np.int64), 0, tissue.shape[0] - 1
            )
            inside = cancer_area(np.asarray(tissue.vindex[row, col]))
    return _frame(c["x"], c["y"], c["class"], c["prob"], inside, mpp)


class CellsTableWriter(StreamedWriter):
    """Stream cells into ``cells.parquet`` (one row group per ``row_group`` rows) or ``cells.csv``
    (header line, then one line per cell), both written with pyarrow under a temporary name and
    renamed on a clean close.

    ::

        with CellsTableWriter(out / "cells.parquet", mpp=0.25) as w:
            for batch in batches:
                w.write(batch.x, batch.y, batch.cls, batch.prob, batch.in_cancer_area)

    Rows are buffered up to ``row_group`` and then written, so memory stays flat however many
    cells come. ``x``, ``y`` are OpenSlide level-0 px; ``mpp`` the slide's µm/px (for ``x_um``).
    The format follows the file name's suffix (``.parquet`` or ``.csv``).
    """

    _what = "cells"

    def __init__(
        self, path: str | os.PathLike[str], *, mpp: float, row_group: int = 1 << 18
    ) -> None:
        import pyarrow as pa  # imported here to keep `import wsi_ocelot.outputs` light
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.fmt = self.path.suffix.lstrip(".").lower()
        cells_table_name(self.fmt)  # parquet or csv
        if row_group < 1:
            raise ValueError(f"row_group must be >= 1, got {row_group}")
        if not self.path.parent.is_dir():
            raise OutputWriteError(
                self.path, "the output folder does not exist", f"create {self.path.parent} first"
            )
        self.mpp = float(mpp)
        self.row_group = row_group
        self.count = 0
        self._buf: list[tuple[np.ndarray, ...]] = []
        self._nbuf = 0
        self._closed = False
        self._pa = pa
        self._names = pa.array(_CLASS_NAMES, pa.string())
        name_type = pa.dictionary(pa.int8(), pa.string()) if self.fmt == "parquet" else pa.string()
        self._schema = pa.schema(
            [
                ("x", pa.float32()),
                ("y", pa.float32()),
                ("x_um", pa.float64()),
                ("y_um", pa.float64()),
                ("class_id", pa.uint8()),
                ("class_name", name_type),
                ("prob", pa.float32()),
                ("in_cancer_area", pa.bool_()),
            ],
            metadata={
                "wsi_ocelot": "cells of one slide; x, y OpenSlide level-0 px; x_um, y_um = x, y * slide mpp"
            },
        )
        self._file = StreamedFile(self.path)
        try:
            if self.fmt == "parquet":
                self._writer: Any = pq.ParquetWriter(
                    self._file.raw, self._schema, compression="zstd"
                )
            else:
                self._writer = pa_csv.CSVWriter(self._file.raw, self._schema)
        except BaseException:
            self._file.discard()
            raise

    # -- writing --------------------------------------------------------------------------
    def write(
        self,
        x: ArrayLike,
        y: ArrayLike,
        cls: ArrayLike,
        prob: ArrayLike,
        in_cancer_area: ArrayLike | None = None,
    ) -> int:
        """Append one batch of cells (1-D arrays of equal length; ``in_cancer_area`` None = all
        False); return how many rows were added. ``ValueError`` for mismatched lengths or a
        class other than 1 or 2 (nothing of that batch is written then)."""
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        cols = [np.asarray(v).reshape(-1) for v in (x, y, cls, prob)]
        n = cols[0].size
        flags = (
            np.zeros(n, bool)
            if in_cancer_area is None
            else np.asarray(in_cancer_area, dtype=bool).reshape(-1)
        )
        if any(c.size != n for c in (*cols, flags)):
            raise ValueError(
                f"x, y, cls, prob (and in_cancer_area) must have the same length, got {[c.size for c in (*cols, flags)]}"
            )
        if n == 0:
            return 0
        ci = check_cell_classes(cols[2])
        self._buf.append(
            (
                cols[0].astype(np.float32),
                cols[1].astype(np.float32),
                ci,
                cols[3].astype(np.float32),
                flags,
            )
        )
        self._nbuf += n
        while self._nbuf >= self.row_group:
            self._flush(self.row_group)
        return n

    def _flush(self, rows: int) -> None:
        pa = self._pa
        joined = [np.concatenate([b[i] for b in self._buf]) for i in range(5)]
        x, y, ci, prob, flags = (c[:rows] for c in joined)
        names = pa.DictionaryArray.from_arrays(
            pa.array(ci.astype(np.int8) - 1, pa.int8()), self._names
        )
        if self.fmt == "csv":
            names = names.cast(pa.string())
        table = pa.Table.from_arrays(
            [
                pa.array(x),
                pa.array(y),
                pa.array(x.astype(np.float64) * self.mpp),
                pa.array(y.astype(np.float64) * self.mpp),
                pa.array(ci),
                names,
                pa.array(prob),
                pa.array(flags),
            ],
            schema=self._schema,
        )
        self._writer.write_table(table)
        self.count += rows
        rest = tuple(c[rows:] for c in joined)
        self._buf = [rest] if rest[0].size else []
        self._nbuf = int(rest[0].size)

    def _end(self) -> None:
        if self._nbuf:
            self._flush(self._nbuf)
        self._writer.close()

    def _closers(self) -> tuple[Callable[[], Any], ...]:
        return (self._writer.close,)
