"""QuPath-importable GeoJSON: cell detections (streamed) and cancer-area annotations.

Frame: every coordinate written is a **level-0 pixel of the slide in QuPath's frame**
(x = column, y = row, origin top-left), i.e. the OpenSlide level-0 coordinate minus
``origin`` where ``origin = (openslide.bounds-x, openslide.bounds-y)`` (docs/formats.md §2; pass
``(0, 0)`` for slides without bounds or for QuPath images added with ``--no-crop``).
Coordinates are rounded to 0.01 px, QuPath's own grid since 0.6.

Output is deterministic: no random ids, a fixed key order, compact separators, one feature
per line, and gzip headers without a timestamp — the same input gives the same bytes.
Files are written to a hidden temporary name in the target folder and renamed on success.
"""

from __future__ import annotations

import gzip as _gzip
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.atomic import StreamedFile, StreamedWriter, atomic_open
from wsi_ocelot.cells import check_cell_classes
from wsi_ocelot.outputs.polygons import clean_polygons, polygons_from_map

log = logging.getLogger(__name__)

__all__ = [
    "CELL_CLASSES",
    "CA_COLOR",
    "CellsGeoJSONWriter",
    "polygons_from_map",
    "write_tissue_geojson",
]

#: OCELOT cell class id → (QuPath classification name, RGB colour). "Tumor" keeps QuPath's
#: built-in class name and colour so QuPath's Tumor tools and colours apply.
CELL_CLASSES: dict[int, tuple[str, tuple[int, int, int]]] = {
    1: ("Background cell", (30, 110, 220)),
    2: ("Tumor", (200, 0, 0)),
}
#: Default colour of the cancer-area annotations (the green of the overview outline).
CA_COLOR: tuple[int, int, int] = (0, 170, 0)

_HEADER = b'{"type":"FeatureCollection","features":[\n'
_FOOTER = b"\n]}\n"
_SUB_BATCH = 65536  # rows formatted at a time: bounds the text held in memory (~15 MB)


def _point_template(name: str, color: tuple[int, int, int]) -> str:
    r, g, b = (int(v) for v in color)
    return (
        '{"type":"Feature","geometry":{"type":"Point","coordinates":[%.2f,%.2f]},'
        '"properties":{"objectType":"detection","classification":{"name":'
        + _json_str(name)
        + f',"color":[{r},{g},{b}]}},"measurements":{{"probability":%.4f}}}}}}'
    )


def _json_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def _round2(a: NDArray[np.float64]) -> list[float]:
    """Round to 0.01 and drop negative zeros (``-0.0 + 0.0 == 0.0``), as Python floats."""
    return (np.round(a, 2) + 0.0).tolist()


class CellsGeoJSONWriter(StreamedWriter):
    """Stream cell detections into a QuPath FeatureCollection of Point detections.

    ::

        with CellsGeoJSONWriter(out / "cells.geojson", origin=(bx, by)) as w:
            for batch in batches:
                w.write(batch.x, batch.y, batch.cls, batch.prob)

    ``x``, ``y`` are OpenSlide level-0 px (float); ``origin`` is subtracted on writing (QuPath's
    frame). ``cls`` holds OCELOT ids (1 BC → "Background cell", 2 TC → "Tumor"); ``prob`` in
    [0, 1] becomes ``measurements.probability`` (4 decimals). Batches are formatted
    ``_SUB_BATCH`` rows at a time, so memory stays flat however many cells are written.

    With ``gzip=True`` the stream is gzip-compressed (QuPath reads ``.geojson.gz``; name the
    path accordingly). The file appears under ``path`` only after a clean ``close()`` / end of
    the ``with`` block; an exception inside the block removes the temporary file.
    """

    _what = "cell detections"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        gzip: bool = False,
        origin: tuple[float, float] = (0.0, 0.0),
        compresslevel: int = 6,
    ) -> None:
        self.path = Path(path)
        self.origin = (float(origin[0]), float(origin[1]))
        self.count = 0
        self._templates = {k: _point_template(n, c) for k, (n, c) in CELL_CLASSES.items()}
        self._table = [self._templates.get(k, "") for k in range(max(self._templates) + 1)]
        self._file = StreamedFile(self.path)
        self._out: BinaryIO
        if gzip:
            # filename="" and mtime=0: no name or timestamp in the header → reproducible bytes
            self._out = _gzip.GzipFile(
                filename="", mode="wb", fileobj=self._file.raw, mtime=0, compresslevel=compresslevel
            )  # type: ignore[assignment]
        else:
            self._out = self._file.raw
        self._closed = False
        self._out.write(_HEADER)

    # -- writing --------------------------------------------------------------------------
    def write(self, x: ArrayLike, y: ArrayLike, cls: ArrayLike, prob: ArrayLike) -> int:
        """Append one batch of cells (1-D arrays of equal length); return how many were written.

        Raises ``ValueError`` for mismatched lengths, non-finite values, a class other than
        1 or 2, or a probability outside [0, 1]; nothing of that batch is written then.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the writer is closed")
        xa = np.asarray(x, dtype=np.float64).reshape(-1)
        ya = np.asarray(y, dtype=np.float64).reshape(-1)
        ca = np.asarray(cls).reshape(-1)
        pa = np.asarray(prob, dtype=np.float64).reshape(-1)
        n = xa.size
        if not (ya.size == n and ca.size == n and pa.size == n):
            raise ValueError(
                f"x, y, cls, prob must have the same length, got {xa.size}, {ya.size}, {ca.size}, {pa.size}"
            )
        if n == 0:
            return 0
        if not (np.isfinite(xa).all() and np.isfinite(ya).all() and np.isfinite(pa).all()):
            raise ValueError("cell coordinates and probabilities must be finite (no NaN / inf)")
        ci = check_cell_classes(ca)
        if (pa < 0).any() or (pa > 1).any():
            raise ValueError(
                f"probabilities must be in [0, 1], got min {pa.min():.4g}, max {pa.max():.4g}"
            )
        ox, oy = self.origin
        table = self._table
        for s in range(0, n, _SUB_BATCH):
            e = min(n, s + _SUB_BATCH)
            rows = zip(_round2(xa[s:e] - ox), _round2(ya[s:e] - oy), pa[s:e].tolist(), strict=True)
            text = ",\n".join(map(str.__mod__, [table[k] for k in ci[s:e].tolist()], rows))
            if self.count:
                self._out.write(b",\n")
            self._out.write(text.encode("utf-8"))
            self.count += e - s
        return n

    def _end(self) -> None:
        self._out.write(_FOOTER)
        if self._out is not self._file.raw:
            self._out.close()  # ends the gzip stream; leaves the file itself open

    def _closers(self) -> tuple[Callable[[], Any], ...]:
        return (self._out.close,)


# --------------------------------------------------------------------------------------
# Cancer-area annotations
# --------------------------------------------------------------------------------------


def _ring_text(coords: NDArray[np.float64]) -> str:
    xs = _round2(coords[:, 0])
    ys = _round2(coords[:, 1])
    return "[" + ",".join([f"[{a:.2f},{b:.2f}]" for a, b in zip(xs, ys, strict=True)]) + "]"


def _polygon_text(poly: shapely.Polygon) -> str:
    rings = [poly.exterior, *poly.interiors]
    return "[" + ",".join(_ring_text(shapely.get_coordinates(r)) for r in rings) + "]"


def write_tissue_geojson(
    path: str | os.PathLike[str],
    geometry: BaseGeometry | Iterable[BaseGeometry] | None,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    name: str = "Cancer area",
    color: tuple[int, int, int] = CA_COLOR,
    gzip: bool = False,
) -> Path:
    """Write cancer-area polygons as QuPath annotations, one feature per polygon; return the path.

    ``geometry``: a shapely Polygon / MultiPolygon / collection (or an iterable of them) in
    OpenSlide level-0 px; ``origin`` is subtracted (QuPath's frame). Every polygon written is
    valid after rounding to 0.01 px: the input is repaired (``make_valid``), snapped to the
    0.01 grid (``set_precision``, which keeps validity), and collapsed or degenerate parts
    (empty, zero area, < 3 distinct vertices) are dropped; non-polygonal parts are dropped.
    ``None`` or empty geometry gives an empty FeatureCollection. Properties: ``objectType =
    "annotation"``, ``name``, ``classification {name, color}`` (QuPath measures areas itself).
    """
    ox, oy = float(origin[0]), float(origin[1])
    if geometry is None:
        parts: list[shapely.Polygon] = []
    else:
        geoms = [geometry] if isinstance(geometry, BaseGeometry) else list(geometry)
        if ox or oy:
            geoms = [_translate(g, -ox, -oy) for g in geoms]
        parts = clean_polygons(geoms, grid=0.01)
    r, g, b = (int(v) for v in color)
    props_tail = (
        '"properties":{"objectType":"annotation","name":'
        + _json_str(name)
        + ',"classification":{"name":'
        + _json_str(name)
        + f',"color":[{r},{g},{b}]}}}}'
    )
    n = 0
    with atomic_open(path) as raw:
        out: BinaryIO = (
            _gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)  # type: ignore[assignment]
            if gzip
            else raw
        )
        out.write(_HEADER)
        for i, poly in enumerate(parts):
            text = (
                ("" if i == 0 else ",\n")
                + '{"type":"Feature","geometry":{"type":"Polygon","coordinates":'
                + _polygon_text(poly)
                + "},"
                + props_tail
                + "}"
            )
            out.write(text.encode("utf-8"))
            n += 1
        out.write(_FOOTER)
        if gzip:
            out.close()
    log.debug("wrote %d cancer-area polygons to %s", n, path)
    return Path(path)


def _translate(geom: BaseGeometry, dx: float, dy: float) -> Any:
    return shapely.transform(geom, lambda c: c + np.array([dx, dy]))
