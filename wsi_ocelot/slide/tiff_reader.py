"""A faster decode path for tiled TIFF and SVS slides: tifffile + imagecodecs.

OpenSlide stays the default reader for every format. For tiled, 8-bit RGB TIFF pyramids
(generic TIFF, Aperio SVS) this reader decodes the stored tiles of a region straight into a
numpy array, skipping OpenSlide's ARGB painting and the RGBA conversion. Measured on a JPEG
tiled TIFF (`benchmarks/results/host.md`): the same pixels in about 0.4× the CPU time.

It answers only the requests it can answer exactly like OpenSlide: a pyramid level whose
size equals OpenSlide's level, at a level-0 location that falls on a whole pixel of that
level. Anything else (other formats, other sample layouts, fractional level coordinates)
returns ``None`` and the caller reads through OpenSlide. Areas outside the image are white,
as OpenSlide's transparent pixels composited on white.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import tifffile

from wsi_ocelot.constants import READERS

log = logging.getLogger(__name__)

__all__ = ["READERS", "TiffLevelReader", "open_tiff_reader"]


class TiffLevelReader:
    """Level regions of one tiled TIFF, decoded tile by tile with tifffile in the calling
    thread (open one per process)."""

    def __init__(self, path: str | os.PathLike[str], level_dimensions: tuple[tuple[int, int], ...]):
        self._tif = tifffile.TiffFile(path)
        self._fh = self._tif.filehandle
        try:
            levels = list(self._tif.series[0].levels)
        except Exception:  # noqa: BLE001 - not a TIFF tifffile can walk: no fast path
            levels = []
        by_size: dict[tuple[int, int], Any] = {}
        for lvl in levels:
            pages = getattr(lvl, "pages", None) or []
            page = pages[0] if len(pages) == 1 else None
            if page is None or not getattr(page, "is_tiled", False) or lvl.dtype != np.uint8:
                continue
            if (
                len(lvl.shape) != 3
                or lvl.shape[2] != 3
                or lvl.axes != "YXS"
                or page.planarconfig != 1
            ):
                continue
            by_size.setdefault((int(lvl.shape[1]), int(lvl.shape[0])), page)
        self._pages = {
            i: by_size[(w, h)] for i, (w, h) in enumerate(level_dimensions) if (w, h) in by_size
        }
        self.usable = 0 in self._pages

    def close(self) -> None:
        self._tif.close()

    def read(
        self, location: tuple[int, int], level: int, size: tuple[int, int], downsample: float
    ) -> np.ndarray | None:
        """``(size[1], size[0], 3)`` uint8 of the level region at level-0 ``location``, or
        None when this reader cannot give OpenSlide's pixels exactly."""
        page = self._pages.get(level)
        if page is None:
            return None
        lx, ly = location[0] / downsample, location[1] / downsample
        if abs(lx - round(lx)) > 1e-6 or abs(ly - round(ly)) > 1e-6:
            return None
        x, y = int(round(lx)), int(round(ly))
        w, h = int(size[0]), int(size[1])
        W, H = int(page.imagewidth), int(page.imagelength)
        tw, th = int(page.tilewidth), int(page.tilelength)
        across = -(-W // tw)
        cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if cx1 <= cx0 or cy1 <= cy0:
            return np.full((h, w, 3), 255, np.uint8)
        out = np.empty(
            (h, w, 3), np.uint8
        )  # every pixel is written below: decoded, or white outside the image
        out[: cy0 - y] = 255
        out[cy1 - y :] = 255
        out[:, : cx0 - x] = 255
        out[:, cx1 - x :] = 255
        offsets, counts = page.dataoffsets, page.databytecounts
        tables = getattr(page, "jpegtables", None)
        for ty in range(cy0 // th, (cy1 - 1) // th + 1):
            for tx in range(cx0 // tw, (cx1 - 1) // tw + 1):
                k = ty * across + tx
                sx0, sy0 = max(cx0, tx * tw), max(cy0, ty * th)
                sx1, sy1 = min(cx1, (tx + 1) * tw), min(cy1, (ty + 1) * th)
                if not counts[
                    k
                ]:  # a tile the scanner never wrote: white, like OpenSlide's transparent
                    out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = 255
                    continue
                self._fh.seek(offsets[k])
                tile = page.decode(self._fh.read(counts[k]), k, jpegtables=tables)[0]
                tile = tile.reshape(tile.shape[-3:])
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = tile[
                    sy0 - ty * th : sy1 - ty * th, sx0 - tx * tw : sx1 - tx * tw
                ]
        return out


def open_tiff_reader(
    path: str | os.PathLike[str], level_dimensions: tuple[tuple[int, int], ...]
) -> TiffLevelReader | None:
    """A :class:`TiffLevelReader` for ``path``, or None (logged) where it cannot serve level 0."""
    try:
        reader = TiffLevelReader(path, level_dimensions)
    except Exception as err:  # noqa: BLE001 - not a TIFF: OpenSlide reads it
        log.info(
            "%s: the tifffile reader cannot open this file (%s); reading with OpenSlide", path, err
        )
        return None
    if not reader.usable:
        reader.close()
        log.info("%s: not a tiled 8-bit RGB TIFF pyramid; reading with OpenSlide", path)
        return None
    return reader
