"""``predictions.zarr``: the per-slide prediction store (Zarr v3, docs/formats.md §2).

Layout::

    predictions.zarr/            group; attributes = run metadata (set_attrs)
      cells/                     group; attributes {"count", "frame", "classes", "columns"}
        x, y    float32 (N,)     OpenSlide level-0 px (x = column, y = row, top-left origin;
                                 no bounds offset — that is only applied for QuPath GeoJSON)
        class   uint8   (N,)     1 = BC (background cell), 2 = TC (tumour cell)
        prob    float32 (N,)     detection confidence in [0, 1]
    tissue.ome.zarr/             the tissue map beside it, an OME-Zarr image of its own
                                 (``ome_zarr.py``: NGFF 0.4 on Zarr v2 by default, or 0.5 on v3)

The store's tissue methods (``create_tissue_map``, ``tissue``, ``read_tissue``, ...) work on that
image; a result written before the map had its own folder keeps it in ``predictions.zarr/tissue``
(NGFF 0.5), which is read the same way. Cells are appended in chunk-aligned writes from a small
buffer and the map is written block by block, so neither is ever held whole in memory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, cast

import numpy as np
import zarr
from numpy.typing import ArrayLike, NDArray

from wsi_ocelot.cells import check_cell_classes
from wsi_ocelot.errors import PredictionFileError
from wsi_ocelot.outputs.ome_zarr import TISSUE_MAP_NAME, TISSUE_NAME, TissueMapStore

log = logging.getLogger(__name__)

__all__ = ["CELL_COLUMNS", "PredictionStore", "open_predictions"]

#: column name → dtype of the ``cells/`` arrays
CELL_COLUMNS: dict[str, np.dtype[Any]] = {
    "x": np.dtype(np.float32),
    "y": np.dtype(np.float32),
    "class": np.dtype(np.uint8),
    "prob": np.dtype(np.float32),
}
Mode = Literal["w", "r", "r+", "a"]


# zarr types a node as Array | Group; the store's layout (module docstring) fixes which it is
def _array(group: zarr.Group, path: str) -> zarr.Array:
    return cast(zarr.Array, group[path])


def _group(group: zarr.Group, path: str) -> zarr.Group:
    return cast(zarr.Group, group[path])


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays, tuples, paths to JSON types (Zarr attributes are JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class PredictionStore:
    """Write (or read back) one slide's ``predictions.zarr``.

    ::

        with PredictionStore(out / "predictions.zarr") as store:       # mode "w": new store
            store.set_attrs({"slide": str(path), "mpp": 0.25})
            store.create_tissue_map(h, w, mpp=0.8, level0_downsample=3.2)
            for batch in batches:
                store.append_cells(batch.x, batch.y, batch.cls, batch.prob)
            for y0, x0, block in tissue_blocks:
                store.write_tissue_block(y0, x0, block)
        # close(): flushes the cell buffer, builds tissue level "1", records the cell count

    ``mode``: ``"w"`` create (replacing any store there), ``"r"`` read only, ``"r+"`` / ``"a"``
    open an existing store to add to it. ``cell_chunk``: cells per chunk of each column (also
    the write unit; appends are buffered until a whole chunk is ready).
    """

    def __init__(
        self, path: str | os.PathLike[str], mode: Mode = "w", *, cell_chunk: int = 65536
    ) -> None:
        self.path = Path(path)
        self.mode = mode
        if mode not in ("w", "r", "r+", "a"):
            raise ValueError(f"mode must be 'w', 'r', 'r+' or 'a', got {mode!r}")
        if cell_chunk < 1:
            raise ValueError(f"cell_chunk must be >= 1, got {cell_chunk}")
        self._buf: list[tuple[NDArray[Any], ...]] = []
        self._nbuf = 0
        self._closed = False
        self._tissue: TissueMapStore | None = None
        if mode == "w":
            if not self.path.parent.is_dir():
                raise PredictionFileError(
                    self.path,
                    "the output folder does not exist",
                    f"create {self.path.parent} first",
                )
            self.root = zarr.open_group(self.path, mode="w", zarr_format=3)
            cells = self.root.create_group(
                "cells",
                attributes={
                    "count": 0,
                    "frame": "OpenSlide level-0 px, x = column, y = row, origin top-left",
                    "classes": {"1": "BC (background cell)", "2": "TC (tumour cell)"},
                    "columns": list(CELL_COLUMNS),
                },
            )
            for name, dt in CELL_COLUMNS.items():
                cells.create_array(
                    name,
                    shape=(0,),
                    dtype=dt,
                    chunks=(cell_chunk,),
                    fill_value=0,
                    dimension_names=("cell",),
                )
            self.cell_chunk = cell_chunk
        else:
            if not (self.path / "zarr.json").is_file():
                raise PredictionFileError(
                    self.path,
                    "not a Zarr v3 predictions store (no zarr.json)",
                    "pass the predictions.zarr folder a wsi-ocelot run wrote",
                )
            self.root = zarr.open_group(self.path, mode="r" if mode == "r" else "r+", zarr_format=3)
            if "cells" not in self.root:
                raise PredictionFileError(
                    self.path,
                    "the store has no cells/ group",
                    "pass the predictions.zarr folder a wsi-ocelot run wrote",
                )
            self.cell_chunk = int(_array(self.root, "cells/x").chunks[0])
            if self.tissue_path.exists():
                self._tissue = TissueMapStore.open(
                    self.tissue_path, mode="r" if mode == "r" else "r+"
                )
            elif "tissue" in self.root:  # a result written before the map had its own folder
                self._tissue = TissueMapStore(_group(self.root, "tissue"), self.path / "tissue")
        self._n_written = int(_array(self.root, "cells/x").shape[0])

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # keep what was flushed; the engine discards the slide folder on failure
            self._closed = True

    # -- metadata -------------------------------------------------------------------------
    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Merge run metadata (slide, MPP, model, config, versions, timings) into the root
        group's attributes; numpy values, tuples and paths are converted to JSON types."""
        self._writable()
        self.root.attrs.update(_jsonable(dict(attrs)))

    @property
    def attrs(self) -> dict[str, Any]:
        """The root group's attributes (a copy)."""
        return dict(self.root.attrs)

    # -- cells ----------------------------------------------------------------------------
    @property
    def n_cells(self) -> int:
        """Cells in the store, including those still buffered."""
        return self._n_written + self._nbuf

    def append_cells(self, x: ArrayLike, y: ArrayLike, cls: ArrayLike, prob: ArrayLike) -> None:
        """Append a batch of cells (1-D arrays of one length; x, y in OpenSlide level-0 px).

        Data are buffered and written in whole chunks; call :meth:`flush` (or close) to write
        the remainder. Raises ``ValueError`` for mismatched lengths or a class other than 1/2.
        """
        self._writable()
        cols = [np.asarray(v).reshape(-1) for v in (x, y, cls, prob)]
        n = cols[0].size
        if any(c.size != n for c in cols):
            raise ValueError(
                f"x, y, cls, prob must have the same length, got {[c.size for c in cols]}"
            )
        if n == 0:
            return
        check_cell_classes(cols[2])
        self._buf.append(
            tuple(
                c.astype(dt, copy=True) for c, dt in zip(cols, CELL_COLUMNS.values(), strict=True)
            )
        )
        self._nbuf += n
        if self._nbuf >= self.cell_chunk:
            whole = (
                self._n_written + self._nbuf
            ) // self.cell_chunk * self.cell_chunk - self._n_written
            self._write_buffer(whole)

    def flush(self) -> None:
        """Write every buffered cell now."""
        if self._nbuf:
            self._write_buffer(self._nbuf)

    def _write_buffer(self, count: int) -> None:
        joined = [np.concatenate([b[i] for b in self._buf]) for i in range(len(CELL_COLUMNS))]
        start, stop = self._n_written, self._n_written + count
        cells = _group(self.root, "cells")
        for name, col in zip(CELL_COLUMNS, joined, strict=True):
            arr = _array(cells, name)
            arr.resize((stop,))
            arr[start:stop] = col[:count]
        rest = tuple(c[count:] for c in joined)
        self._buf = [rest] if rest[0].size else []
        self._nbuf = int(rest[0].size)
        self._n_written = stop

    def cells(self, start: int = 0, stop: int | None = None) -> dict[str, NDArray[Any]]:
        """Columns ``x, y, class, prob`` of cells ``[start, stop)`` (written cells only; a
        whole slide's table is ~13 bytes per cell — use :meth:`iter_cells` to stream)."""
        stop = self._n_written if stop is None else min(stop, self._n_written)
        cells = _group(self.root, "cells")
        return {name: np.asarray(_array(cells, name)[start:stop]) for name in CELL_COLUMNS}

    def iter_cells(self, batch_size: int = 1 << 20) -> Iterator[dict[str, NDArray[Any]]]:
        """Stream the written cells in batches of ``batch_size`` rows."""
        for s in range(0, self._n_written, batch_size):
            yield self.cells(s, s + batch_size)

    # -- tissue map (its own OME-Zarr image beside the store: outputs/ome_zarr.py) --------------
    @property
    def tissue_path(self) -> Path:
        """Where this store's tissue map lives: ``tissue.ome.zarr`` beside it."""
        return self.path.parent / TISSUE_MAP_NAME

    @property
    def tissue_map(self) -> TissueMapStore | None:
        """The tissue map, or None when the slide has none (a model without a tissue branch)."""
        return self._tissue

    def create_tissue_map(
        self,
        height: int,
        width: int,
        mpp: float,
        chunk: int = 512,
        *,
        levels: int = 2,
        level0_downsample: float | None = None,
        slide_mpp: float | None = None,
        ngff: str = "0.4",
        name: str = TISSUE_NAME,
    ) -> zarr.Array:
        """Create the tissue map ``tissue.ome.zarr`` beside the store: level 0 (uint8, zeros) of
        ``height × width`` px at ``mpp`` µm/px, OME-NGFF ``ngff`` ("0.4" on Zarr v2, "0.5" on Zarr
        v3); ``levels=2`` adds level "1" (2× mean), built on close. ``level0_downsample``: slide
        level-0 px per map px; ``slide_mpp``: the slide's µm/px (the map's placement)."""
        self._writable()
        self._tissue = TissueMapStore.create(
            self.tissue_path,
            height,
            width,
            mpp,
            slide_mpp=slide_mpp,
            level0_downsample=level0_downsample,
            ngff=ngff,
            chunk=chunk,
            levels=levels,
            name=name,
        )
        return self._tissue.level(0)

    @property
    def tissue_mpp(self) -> float | None:
        """µm per pixel of tissue level 0, or None when the store has no tissue map."""
        return None if self._tissue is None else self._tissue.mpp

    def _map(self) -> TissueMapStore:
        if self._tissue is None:
            raise PredictionFileError(
                self.path,
                f"the result has no tissue map ({TISSUE_MAP_NAME})",
                "create the tissue map first (create_tissue_map), or run a model with a tissue branch",
            )
        return self._tissue

    def tissue(self, level: int = 0) -> zarr.Array:
        """The tissue array of ``level`` (a lazy Zarr array: index it to read)."""
        return self._map().level(level)

    def write_tissue_block(self, y0: int, x0: int, block: ArrayLike) -> None:
        """Write ``block`` (h, w) with its top-left at map pixel ``(y0, x0)`` of level 0.

        Float blocks are probabilities in [0, 1] (stored as ``round(p × 255)``), uint8 blocks
        are stored as they are. Parts beyond the map's right/bottom edge are cropped.
        """
        self._writable()
        self._map().write_block(y0, x0, block)

    def tissue_written(self, y0: int, y1: int, x0: int, x1: int) -> bool:
        """Whether any of the tissue map's level-0 pixels ``[y0:y1, x0:x1]`` may hold a written
        value (False only where this handle created the map and wrote nothing: zeros)."""
        return True if self._tissue is None else self._tissue.written(y0, y1, x0, x1)

    def read_tissue(
        self, y0: int, y1: int, x0: int, x1: int, *, level: int = 0, as_float: bool = False
    ) -> NDArray[Any]:
        """Map pixels ``[y0:y1, x0:x1]`` of ``level`` (uint8, or float32 probabilities)."""
        out = np.asarray(self.tissue(level)[y0:y1, x0:x1])
        return out.astype(np.float32) / 255.0 if as_float else out

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Flush buffered cells and the tissue map's cached chunks, record the cell count, build
        tissue level "1"."""
        if self._closed:
            return
        if self.mode != "r":
            self.flush()
            self.root["cells"].attrs["count"] = self._n_written
            if self._tissue is not None:
                self._tissue.build_pyramid()  # stores the map's cached chunks first
            log.debug("predictions store %s: %d cells", self.path, self._n_written)
        self._closed = True

    def _writable(self) -> None:
        if self.mode == "r":
            raise ValueError(f"{self.path}: the store is open read-only")
        if self._closed:
            raise ValueError(f"{self.path}: the store is closed")


def open_predictions(path: str | os.PathLike[str]) -> PredictionStore:
    """Open a ``predictions.zarr`` read-only: ``.cells()``, ``.iter_cells()``, ``.tissue()``,
    ``.read_tissue()``, ``.tissue_mpp``, ``.attrs``."""
    p = Path(path)
    if not p.exists():
        raise PredictionFileError(
            p, "no such predictions store", "check the path (…/<slide-id>/predictions.zarr)"
        )
    return PredictionStore(p, mode="r")
