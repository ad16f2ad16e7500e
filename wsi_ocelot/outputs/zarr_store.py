"""``predictions.zarr``: the per-slide prediction store (Zarr v3, docs/formats.md §2).

Layout::

    predictions.zarr/            group; attributes = run metadata (set_attrs)
      cells/                     group; attributes {"count", "frame", "classes", "columns"}
        x, y    float32 (N,)     OpenSlide level-0 px (x = column, y = row, top-left origin;
                                 no bounds offset — that is only applied for QuPath GeoJSON)
        class   uint8   (N,)     1 = BC (background cell), 2 = TC (tumour cell)
        prob    float32 (N,)     detection confidence in [0, 1]
      tissue/                    group; attributes {"ome": NGFF 0.5 multiscales, "wsi_ocelot": {...}}
        0       uint8 (H, W)     cancer-area probability × 255 at the tissue MPP
        1       uint8 (⌈H/2⌉, ⌈W/2⌉)  optional 2× mean-downsampled level

Tissue map frame: pixel ``(r, c)`` of level "0" covers level-0 px
``[c·d, (c+1)·d) × [r·d, (r+1)·d)`` with ``d = level0_downsample`` (= tissue MPP / slide MPP),
recorded in ``tissue`` attributes when known. Cells are appended in chunk-aligned writes from a
small buffer and the map is written block by block, so neither is ever held whole in memory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import ArrayLike, NDArray

from wsi_ocelot.errors import PredictionFileError

log = logging.getLogger(__name__)

__all__ = ["CELL_COLUMNS", "PredictionStore", "ngff_multiscales", "open_predictions"]

#: column name → dtype of the ``cells/`` arrays
CELL_COLUMNS: dict[str, np.dtype[Any]] = {
    "x": np.dtype(np.float32),
    "y": np.dtype(np.float32),
    "class": np.dtype(np.uint8),
    "prob": np.dtype(np.float32),
}
TISSUE_NAME = "cancer_area_probability"
Mode = Literal["w", "r", "r+", "a"]


def ngff_multiscales(mpp: float, levels: int = 1, name: str = TISSUE_NAME) -> dict[str, Any]:
    """OME-NGFF 0.5 ``ome`` attribute block for a 2-D (y, x) pyramid at ``mpp`` µm/px.

    Level ``k`` (path ``"k"``) is 2^k × downsampled: ``scale = [mpp·2^k] * 2``; levels above 0
    also carry ``translation = [mpp·(2^k − 1)/2] * 2`` so pixel centres line up with level 0
    (NGFF places array indices at pixel centres).
    """
    datasets = []
    for k in range(levels):
        f = 2**k
        ct: list[dict[str, Any]] = [{"type": "scale", "scale": [mpp * f, mpp * f]}]
        if k:
            off = mpp * (f - 1) / 2.0
            ct.append({"type": "translation", "translation": [off, off]})
        datasets.append({"path": str(k), "coordinateTransformations": ct})
    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": datasets,
                "type": "mean",
                "metadata": {"description": "uint8 = round(probability × 255); level k = 2^k × 2×2 mean"},
            }
        ],
    }


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

    def __init__(self, path: str | os.PathLike[str], mode: Mode = "w", *, cell_chunk: int = 65536) -> None:
        self.path = Path(path)
        self.mode = mode
        if mode not in ("w", "r", "r+", "a"):
            raise ValueError(f"mode must be 'w', 'r', 'r+' or 'a', got {mode!r}")
        if cell_chunk < 1:
            raise ValueError(f"cell_chunk must be >= 1, got {cell_chunk}")
        self._buf: list[tuple[NDArray[Any], ...]] = []
        self._nbuf = 0
        self._closed = False
        self._tissue_levels = 0
        self._written: np.ndarray | None = None  # tissue level-0 chunks written by this handle (None: unknown)
        if mode == "w":
            if not self.path.parent.is_dir():
                raise PredictionFileError(self.path, "the output folder does not exist",
                                          f"create {self.path.parent} first")
            self.root = zarr.open_group(self.path, mode="w", zarr_format=3)
            cells = self.root.create_group("cells", attributes={
                "count": 0,
                "frame": "OpenSlide level-0 px, x = column, y = row, origin top-left",
                "classes": {"1": "BC (background cell)", "2": "TC (tumour cell)"},
                "columns": list(CELL_COLUMNS),
            })
            for name, dt in CELL_COLUMNS.items():
                cells.create_array(name, shape=(0,), dtype=dt, chunks=(cell_chunk,), fill_value=0,
                                   dimension_names=("cell",))
            self.cell_chunk = cell_chunk
        else:
            if not (self.path / "zarr.json").is_file():
                raise PredictionFileError(self.path, "not a Zarr v3 predictions store (no zarr.json)",
                                          "pass the predictions.zarr folder a wsi-ocelot run wrote")
            self.root = zarr.open_group(self.path, mode="r" if mode == "r" else "r+", zarr_format=3)
            if "cells" not in self.root:
                raise PredictionFileError(self.path, "the store has no cells/ group",
                                          "pass the predictions.zarr folder a wsi-ocelot run wrote")
            self.cell_chunk = int(self.root["cells/x"].chunks[0])
            if "tissue" in self.root:
                self._tissue_levels = sum(1 for k in ("0", "1", "2", "3") if k in self.root["tissue"])
        self._n_written = int(self.root["cells/x"].shape[0])

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
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
            raise ValueError(f"x, y, cls, prob must have the same length, got {[c.size for c in cols]}")
        if n == 0:
            return
        if not np.isin(cols[2], (1, 2)).all():
            raise ValueError(f"cell classes must be 1 (BC) or 2 (TC), got {np.unique(cols[2])[:10].tolist()}")
        self._buf.append(tuple(c.astype(dt, copy=True) for c, dt in zip(cols, CELL_COLUMNS.values(), strict=True)))
        self._nbuf += n
        if self._nbuf >= self.cell_chunk:
            whole = (self._n_written + self._nbuf) // self.cell_chunk * self.cell_chunk - self._n_written
            self._write_buffer(whole)

    def flush(self) -> None:
        """Write every buffered cell now."""
        if self._nbuf:
            self._write_buffer(self._nbuf)

    def _write_buffer(self, count: int) -> None:
        joined = [np.concatenate([b[i] for b in self._buf]) for i in range(len(CELL_COLUMNS))]
        start, stop = self._n_written, self._n_written + count
        cells = self.root["cells"]
        for name, col in zip(CELL_COLUMNS, joined, strict=True):
            arr = cells[name]
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
        cells = self.root["cells"]
        return {name: np.asarray(cells[name][start:stop]) for name in CELL_COLUMNS}

    def iter_cells(self, batch_size: int = 1 << 20) -> Iterator[dict[str, NDArray[Any]]]:
        """Stream the written cells in batches of ``batch_size`` rows."""
        for s in range(0, self._n_written, batch_size):
            yield self.cells(s, s + batch_size)

    # -- tissue map -----------------------------------------------------------------------
    def create_tissue_map(self, height: int, width: int, mpp: float, chunk: int = 512, *,
                          levels: int = 2, level0_downsample: float | None = None,
                          name: str = TISSUE_NAME) -> zarr.Array:
        """Create ``tissue/0`` (uint8, zeros) of ``height × width`` px at ``mpp`` µm/px, with
        NGFF 0.5 multiscales attributes. ``levels=2`` adds level "1" (2× mean), built on close.
        ``level0_downsample``: slide level-0 px per map px, recorded for readers."""
        self._writable()
        if height < 1 or width < 1 or chunk < 1:
            raise ValueError(f"tissue map size and chunk must be >= 1, got {height}×{width}, chunk {chunk}")
        if not (mpp > 0 and math.isfinite(mpp)):
            raise ValueError(f"tissue mpp must be a positive number, got {mpp}")
        if levels not in (1, 2):
            raise ValueError(f"levels must be 1 or 2, got {levels}")
        grp = self.root.create_group("tissue", overwrite=True)
        arr = grp.create_array("0", shape=(height, width), dtype=np.uint8, chunks=(chunk, chunk),
                               fill_value=0, dimension_names=("y", "x"))
        if levels == 2:
            grp.create_array("1", shape=(-(-height // 2), -(-width // 2)), dtype=np.uint8,
                             chunks=(chunk, chunk), fill_value=0, dimension_names=("y", "x"))
        grp.attrs.update({
            "ome": ngff_multiscales(mpp, levels, name),
            "wsi_ocelot": _jsonable({
                "mpp": mpp, "level0_downsample": level0_downsample,
                "encoding": "uint8 = round(probability x 255)", "pyramid_built": False,
            }),
        })
        self._tissue_levels = levels
        self._written = np.zeros((-(-height // chunk), -(-width // chunk)), bool)
        return arr

    @property
    def tissue_mpp(self) -> float | None:
        """µm per pixel of tissue level 0, or None when the store has no tissue map."""
        if "tissue" not in self.root:
            return None
        return float(self.root["tissue"].attrs["ome"]["multiscales"][0]["datasets"][0]
                     ["coordinateTransformations"][0]["scale"][0])

    def tissue(self, level: int = 0) -> zarr.Array:
        """The tissue array of ``level`` (a lazy Zarr array: index it to read)."""
        if "tissue" not in self.root or str(level) not in self.root["tissue"]:
            raise PredictionFileError(self.path, f"the store has no tissue level {level}",
                                      "create the tissue map first (create_tissue_map)")
        arr = self.root["tissue"][str(level)]
        assert isinstance(arr, zarr.Array)
        return arr

    def write_tissue_block(self, y0: int, x0: int, block: ArrayLike) -> None:
        """Write ``block`` (h, w) with its top-left at map pixel ``(y0, x0)`` of level 0.

        Float blocks are probabilities in [0, 1] (stored as ``round(p × 255)``), uint8 blocks
        are stored as they are. Parts beyond the map's right/bottom edge are cropped.
        """
        self._writable()
        arr = self.tissue(0)
        b = np.asarray(block)
        if b.ndim != 2:
            raise ValueError(f"a tissue block must be 2-D (h, w), got shape {b.shape}")
        if y0 < 0 or x0 < 0:
            raise ValueError(f"tissue block origin must be >= 0, got ({y0}, {x0})")
        if b.dtype != np.uint8:
            b = np.rint(np.clip(b.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        h, w = arr.shape
        b = b[: max(0, h - y0), : max(0, w - x0)]
        if b.size:
            arr[y0 : y0 + b.shape[0], x0 : x0 + b.shape[1]] = b
            if self._written is not None:
                ch, cw = arr.chunks
                self._written[y0 // ch:(y0 + b.shape[0] - 1) // ch + 1, x0 // cw:(x0 + b.shape[1] - 1) // cw + 1] = True

    def tissue_written(self, y0: int, y1: int, x0: int, x1: int) -> bool:
        """Whether any of level 0's pixels ``[y0:y1, x0:x1]`` may hold a written value (False
        only when this handle created the map and wrote nothing there: it reads as zeros)."""
        if self._written is None:
            return True
        ch, cw = self.tissue(0).chunks
        return bool(self._written[y0 // ch:max(y0 + 1, -(-y1 // ch)), x0 // cw:max(x0 + 1, -(-x1 // cw))].any())

    def read_tissue(self, y0: int, y1: int, x0: int, x1: int, *, level: int = 0,
                    as_float: bool = False) -> NDArray[Any]:
        """Map pixels ``[y0:y1, x0:x1]`` of ``level`` (uint8, or float32 probabilities)."""
        out = np.asarray(self.tissue(level)[y0:y1, x0:x1])
        return out.astype(np.float32) / 255.0 if as_float else out

    def build_tissue_pyramid(self) -> None:
        """Fill level "1" from level "0" by 2×2 means, tile by tile (edge pixels replicated)."""
        self._writable()
        if self._tissue_levels < 2:
            return
        src, dst = self.tissue(0), self.tissue(1)
        h, w = src.shape
        step = 2 * int(dst.chunks[0])
        for y in range(0, h, step):
            for x in range(0, w, step):
                if not self.tissue_written(y, y + step, x, x + step):
                    continue  # zeros give zeros, and level 1 reads as zeros where nothing is written
                t = np.asarray(src[y : y + step, x : x + step]).astype(np.uint16)
                th, tw = t.shape
                if th % 2 or tw % 2:
                    t = np.pad(t, ((0, th % 2), (0, tw % 2)), mode="edge")
                s = t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]
                dst[y // 2 : y // 2 + s.shape[0], x // 2 : x // 2 + s.shape[1]] = ((s + 2) // 4).astype(np.uint8)
        meta = dict(self.root["tissue"].attrs["wsi_ocelot"])
        meta["pyramid_built"] = True
        self.root["tissue"].attrs["wsi_ocelot"] = meta

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Flush buffered cells, record the cell count, build tissue level "1"."""
        if self._closed:
            return
        if self.mode != "r":
            self.flush()
            self.root["cells"].attrs["count"] = self._n_written
            if self._tissue_levels == 2 and not self.root["tissue"].attrs["wsi_ocelot"].get("pyramid_built"):
                self.build_tissue_pyramid()
            log.info("predictions store %s: %d cells", self.path, self._n_written)
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
        raise PredictionFileError(p, "no such predictions store", "check the path (…/<slide-id>/predictions.zarr)")
    return PredictionStore(p, mode="r")
