"""Write pyramidal tiled TIFFs that OpenSlide opens as "generic-tiff" with an MPP.

Level 0 first, then one page per 2× level until the image fits in one tile; tiles of 256
px, JPEG (or deflate) compressed; resolution tags in pixels per centimetre, which
OpenSlide reports as ``openslide.mpp-x/y``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

log = logging.getLogger(__name__)

TILE = 256


class _Compression(TypedDict, total=False):
    """The compression arguments of ``TiffWriter.write``."""

    compression: str
    compressionargs: dict[str, Any]


class _Resolution(TypedDict, total=False):
    """The resolution arguments of ``TiffWriter.write`` (none: no resolution tags)."""

    resolution: tuple[float, float]
    resolutionunit: str


def _downsample2(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    im = Image.fromarray(img)
    return np.asarray(im.resize((max(1, (w + 1) // 2), max(1, (h + 1) // 2)), Image.Resampling.BOX))


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray | None = None,
    mpp: float | None = 0.25,
    *,
    size: tuple[int, int] | None = None,
    render_tile: Callable[[int, int, int, int], np.ndarray] | None = None,
    compression: str = "jpeg",
    quality: int = 90,
    min_level_size: int = TILE,
    description: str = "",
) -> None:
    """Write ``image`` (``(H, W, 3)`` uint8) as a pyramidal tiled TIFF.

    Instead of ``image`` a ``render_tile(x, y, w, h)`` callback and ``size=(W, H)`` may
    be given; level 0 is then rendered in 256-px-aligned bands so memory stays bounded.
    ``mpp=None`` writes no resolution tags (a slide without MPP, for tests).
    """
    if image is None:
        if render_tile is None or size is None:
            raise ValueError("give image, or render_tile and size")
        width, height = size
    else:
        height, width = image.shape[:2]

    comp: _Compression = {}
    if compression == "jpeg" and not _has_jpeg_encoder():
        log.warning(
            "imagecodecs has no JPEG encoder here: writing %s with deflate compression instead",
            path,
        )
        compression = "deflate"
    if compression == "jpeg":
        comp = {"compression": "jpeg", "compressionargs": {"level": quality}}
    elif compression in ("deflate", "zlib"):
        comp = {"compression": "zlib"}
    res_kwargs: _Resolution = {}
    if mpp is not None:
        ppcm = 1e4 / mpp
        res_kwargs = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}

    # Level 0 rendered in bands of whole tiles; the pyramid is built from a reduced copy.
    band = TILE * 4

    def level0_tiles() -> Iterator[np.ndarray]:
        for y in range(0, height, TILE):
            if image is not None:
                row = image[y : y + TILE]
            else:
                row = _band_cache(y)
            for x in range(0, width, TILE):
                t = row[:, x : x + TILE]
                if t.shape[0] < TILE or t.shape[1] < TILE:
                    pad = np.full((TILE, TILE, 3), 255, np.uint8)
                    pad[: t.shape[0], : t.shape[1]] = t
                    t = pad
                yield np.ascontiguousarray(t)

    cache: dict[int, np.ndarray] = {}
    reduced_parts: list[np.ndarray] = []

    def _band_cache(y: int) -> np.ndarray:
        b0 = (y // band) * band
        if b0 not in cache:
            cache.clear()
            h = min(band, height - b0)
            arr = render_tile(0, b0, width, h)  # type: ignore[misc]
            if arr.shape[:2] != (h, width):
                raise ValueError(f"render_tile returned {arr.shape}, expected {(h, width, 3)}")
            cache[b0] = arr
            reduced_parts.append(_downsample2(arr))
        return cache[b0][y - b0 : y - b0 + TILE]

    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        tif.write(
            level0_tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(TILE, TILE),
            photometric="rgb",
            **comp,
            description=description or None,
            metadata=None,
            **res_kwargs,
        )
        level = _downsample2(image) if image is not None else np.concatenate(reduced_parts, axis=0)
        scale = 2
        while True:
            h, w = level.shape[:2]
            if max(h, w) < min_level_size:
                break
            lr: _Resolution = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * scale)
                lr = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tif.write(
                level,
                tile=(TILE, TILE),
                photometric="rgb",
                **comp,
                subfiletype=1,
                metadata=None,
                **lr,
            )
            if max(h, w) <= TILE:
                break
            level = _downsample2(level)
            scale *= 2


def _has_jpeg_encoder() -> bool:
    return hasattr(imagecodecs, "jpeg8_encode") or hasattr(imagecodecs, "jpeg_encode")


def corrupt_tile(
    path: str | os.PathLike[str], x: int, y: int, level: int = 0
) -> tuple[int, int, int, int]:
    """Make the stored tile holding level-``level`` pixel ``(x, y)`` of a tiled TIFF undecodable,
    as a bad sector or an interrupted scanner write would: its compressed data keeps its length
    and start-of-image marker, the rest is zeros, so OpenSlide (and tifffile) raise when they
    decode it. The file is changed in place; returns the tile's level-0 box ``(x, y, w, h)``."""
    with tifffile.TiffFile(path) as tif:
        # TiffPage only: tifffile gives TiffFrame objects only where asked to (useframes)
        pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
        page = pages[level]
        tw, th = int(page.tilewidth), int(page.tilelength)
        across = -(-int(page.imagewidth) // tw)
        k = (y // th) * across + x // tw
        offset, count = int(page.dataoffsets[k]), int(page.databytecounts[k])
        d = int(pages[0].imagewidth) / int(page.imagewidth)
    if count < 4:
        raise ValueError(f"{path}: tile {k} of level {level} holds no data to corrupt")
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff\xd8" + bytes(count - 2))
    return (round((x // tw) * tw * d), round((y // th) * th * d), round(tw * d), round(th * d))
