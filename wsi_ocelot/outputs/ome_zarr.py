"""``tissue.ome.zarr``: the slide-level cancer-area map as an OME-Zarr image (docs/formats.md §2).

One standalone OME-Zarr image per slide, beside ``predictions.zarr``, so that viewers open it
as it is: **OME-NGFF 0.4 on Zarr v2** by default (what QuPath reads through Bio-Formats and what
napari's OME-Zarr plugin reads), or **OME-NGFF 0.5 on Zarr v3** (``ngff="0.5"``). Layout::

    tissue.ome.zarr/             group; attributes: NGFF multiscales (0.4: ``multiscales`` at the
                                 top; 0.5: inside ``ome``) and ``wsi_ocelot`` (the placement)
      0      uint8 (H, W)        cancer-area probability × 255 at the map's µm/px
      1      uint8 (⌈H/2⌉, ⌈W/2⌉)  2×2 means of level 0 (optional)

**Placement on the slide.** Map px ``(r, c)`` of level ``k`` covers slide level-0 px
``[c·d·2^k, (c+1)·d·2^k) × [r·d·2^k, (r+1)·d·2^k)`` with ``d`` = ``level0_downsample`` (level-0 px
per map px). The NGFF ``coordinateTransformations`` put every level in the space of the slide's
level 0 shown at ``scale = slide µm/px`` with no translation (level-0 px ``(i, j)`` centred at
``(i·mpp, j·mpp)`` µm, as napari or an OME-Zarr copy of the slide places it):
``scale = d·2^k·mpp`` and ``translation = (d·2^k − 1)·mpp / 2`` on y and x. The ``wsi_ocelot``
attribute states the same in level-0 px (``level0_downsample``, ``level0_offset``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path
from typing import Any, cast

import numcodecs
import numpy as np
import zarr
from numpy.typing import ArrayLike, NDArray

from wsi_ocelot.constants import NGFF_VERSIONS
from wsi_ocelot.errors import PredictionFileError

log = logging.getLogger(__name__)

__all__ = ["NGFF_VERSIONS", "TISSUE_MAP_NAME", "TissueMapStore", "ngff_multiscales"]

#: the map's folder name, beside ``predictions.zarr``
TISSUE_MAP_NAME = "tissue.ome.zarr"
TISSUE_NAME = "cancer_area_probability"
ENCODING = "uint8 = round(probability x 255)"
# Bio-Formats (JZarr) decodes blosc and zlib but not zstd, zarr-python 3's default for v2 arrays
_V2_COMPRESSOR = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)


def check_ngff_version(version: str) -> str:
    """``version`` if it is one wsi-ocelot writes; ``ValueError`` naming the choices otherwise."""
    if version not in NGFF_VERSIONS:
        raise ValueError(
            f"unknown OME-NGFF version {version!r}; use one of {', '.join(NGFF_VERSIONS)}"
        )
    return version


def ngff_multiscales(
    map_mpp: float,
    levels: int = 1,
    *,
    slide_mpp: float | None = None,
    version: str = "0.4",
    name: str = TISSUE_NAME,
) -> dict[str, Any]:
    """The NGFF ``multiscales`` entry for a 2-D (y, x) pyramid of a map at ``map_mpp`` µm/px.

    Level ``k`` (path ``"k"``) is 2^k × coarser: ``scale = [map_mpp·2^k] * 2`` and
    ``translation = [(map_mpp·2^k − slide_mpp) / 2] * 2``, which places each map pixel's centre
    where the slide level-0 pixels it covers have theirs (see the module docstring).
    ``slide_mpp`` None: the map is its own frame (``slide_mpp = map_mpp``)."""
    check_ngff_version(version)
    if not (map_mpp > 0 and math.isfinite(map_mpp)):
        raise ValueError(f"map mpp must be a positive number, got {map_mpp}")
    base = map_mpp if slide_mpp is None else float(slide_mpp)
    datasets = []
    for k in range(levels):
        s = map_mpp * 2**k
        off = (s - base) / 2.0
        datasets.append(
            {
                "path": str(k),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [s, s]},
                    {"type": "translation", "translation": [off, off]},
                ],
            }
        )
    ms: dict[str, Any] = {
        "name": name,
        "axes": [
            {"name": "y", "type": "space", "unit": "micrometer"},
            {"name": "x", "type": "space", "unit": "micrometer"},
        ],
        "datasets": datasets,
        "type": "mean",
        "metadata": {"description": f"{ENCODING}; level k = 2^k x coarser (2x2 means)"},
    }
    if version == "0.4":
        ms = {"version": "0.4", **ms}
    return ms


def _multiscales_of(attrs: dict[str, Any]) -> list[dict[str, Any]]:
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if not ms:
        raise KeyError("multiscales")
    return list(ms)


class TissueMapStore:
    """Write or read the tissue map OME-Zarr image (``tissue.ome.zarr``, or the ``tissue``
    group of a ``predictions.zarr`` written before the map had its own folder).

    ::

        tm = TissueMapStore.create(out / "tissue.ome.zarr", h, w, map_mpp=0.8, slide_mpp=0.25,
                                   level0_downsample=3.2, ngff="0.4")
        tm.write_block(y0, x0, probs)     # float probabilities or uint8
        tm.build_pyramid()                # stores the cached chunks; level "1" from level "0"
        TissueMapStore.open(out / "tissue.ome.zarr").read(0, 64, 0, 64)

    Writes go through a write-back cache of level-0 chunks: a block lands in the chunks it
    covers in memory, and a chunk is stored (compressed once, as a whole) as soon as every one of
    its pixels has been written, or when the cache passes ``cache_bytes`` (oldest chunk first),
    or before anything reads the map (:meth:`level`, :meth:`read`), and by :meth:`flush` and
    :meth:`build_pyramid` (a handle that wrote must end with one of them). Writing
    unaligned blocks straight into Zarr would decompress and recompress a chunk for every block
    that touches it (the tissue pass writes ~9 blocks per tile). A chunk never written is
    zeros, so storing a partly written chunk whole gives what Zarr would have.
    """

    def __init__(self, group: zarr.Group, path: Path, cache_bytes: int = 64 << 20) -> None:
        self.group = group
        self.path = path
        self.levels = sum(1 for k in ("0", "1", "2", "3") if k in group)
        self._written: np.ndarray | None = (
            None  # level-0 chunks written through this handle (None: unknown)
        )
        self._cache: dict[
            tuple[int, int], tuple[np.ndarray, np.ndarray]
        ] = {}  # chunk -> (pixels, written mask)
        self._stored: set[tuple[int, int]] = (
            set()
        )  # chunks this handle has stored (a later write reads them back)
        self._cache_bytes = int(cache_bytes)
        self._lock = threading.Lock()

    # -- create / open ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        height: int,
        width: int,
        map_mpp: float,
        *,
        slide_mpp: float | None = None,
        level0_downsample: float | None = None,
        ngff: str = "0.4",
        chunk: int = 512,
        levels: int = 2,
        name: str = TISSUE_NAME,
    ) -> TissueMapStore:
        """A new map (zeros) of ``height × width`` px at ``map_mpp`` µm/px, replacing any there."""
        check_ngff_version(ngff)
        if height < 1 or width < 1 or chunk < 1:
            raise ValueError(
                f"tissue map size and chunk must be >= 1, got {height}×{width}, chunk {chunk}"
            )
        if levels not in (1, 2):
            raise ValueError(f"levels must be 1 or 2, got {levels}")
        ms = ngff_multiscales(map_mpp, levels, slide_mpp=slide_mpp, version=ngff, name=name)
        if ngff == "0.4":
            grp = zarr.open_group(path, mode="w", zarr_format=2)
            kw: dict[str, Any] = {
                "compressors": _V2_COMPRESSOR,
                "chunk_key_encoding": {"name": "v2", "separator": "/"},
            }
        else:
            grp = zarr.open_group(path, mode="w", zarr_format=3)
            kw = {"dimension_names": ("y", "x")}
        for k in range(levels):
            grp.create_array(
                str(k),
                shape=(-(-height // 2**k), -(-width // 2**k)),
                dtype=np.uint8,
                chunks=(chunk, chunk),
                fill_value=0,
                **kw,
            )
        placement = {
            "slide_mpp": slide_mpp,
            "map_mpp": map_mpp,
            "level0_downsample": level0_downsample,
            "level0_offset": [0.0, 0.0],
            "placement": "map px (r, c) of level k covers slide level-0 px [c*d*2^k, (c+1)*d*2^k) x "
            "[r*d*2^k, (r+1)*d*2^k), d = level0_downsample; level0_offset = (x, y) level-0 px "
            "of map px (0, 0)'s top-left corner",
            "encoding": ENCODING,
            "pyramid_built": False,
        }
        if ngff == "0.4":
            grp.attrs.update({"multiscales": [ms], "wsi_ocelot": placement})
        else:
            grp.attrs.update(
                {"ome": {"version": "0.5", "multiscales": [ms]}, "wsi_ocelot": placement}
            )
        tm = cls(grp, Path(path))
        tm._written = np.zeros((-(-height // chunk), -(-width // chunk)), bool)
        return tm

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> TissueMapStore:
        """An existing map (Zarr v2 or v3, found from its metadata files)."""
        p = Path(path)
        if not ((p / ".zattrs").is_file() or (p / "zarr.json").is_file()):
            raise PredictionFileError(
                p,
                "not an OME-Zarr tissue map (no .zattrs or zarr.json)",
                "pass the tissue.ome.zarr folder a wsi-ocelot run wrote",
            )
        grp = zarr.open_group(p, mode="r" if mode == "r" else "r+")
        try:
            _multiscales_of(dict(grp.attrs))
        except KeyError:
            raise PredictionFileError(
                p,
                "the group has no OME-NGFF multiscales metadata",
                "pass the tissue.ome.zarr folder a wsi-ocelot run wrote",
            ) from None
        return cls(grp, p)

    # -- metadata -------------------------------------------------------------------------------
    @property
    def ngff_version(self) -> str:
        """``"0.4"`` or ``"0.5"``."""
        attrs: dict[str, Any] = dict(self.group.attrs)  # NGFF metadata: JSON of a known layout
        if "ome" in attrs:
            return str(attrs["ome"].get("version", "0.5"))
        return str(_multiscales_of(attrs)[0].get("version", "0.4"))

    @property
    def mpp(self) -> float:
        """µm per pixel of level 0 (the NGFF scale of its first dataset)."""
        ds = _multiscales_of(dict(self.group.attrs))[0]["datasets"][0]
        return float(
            next(t for t in ds["coordinateTransformations"] if t["type"] == "scale")["scale"][-1]
        )

    @property
    def meta(self) -> dict[str, Any]:
        """The ``wsi_ocelot`` attribute (placement, encoding)."""
        return dict(cast("dict[str, Any]", self.group.attrs.get("wsi_ocelot") or {}))

    def level0_downsample(self, slide_mpp: float | None = None) -> float:
        """Slide level-0 px per map px: the recorded value, else map µm/px over ``slide_mpp``."""
        d = self.meta.get("level0_downsample")
        if d:
            return float(d)
        if slide_mpp:
            return self.mpp / float(slide_mpp)
        raise PredictionFileError(
            self.path, "the map does not record its level-0 downsample", "pass the slide's µm/px"
        )

    # -- pixels -----------------------------------------------------------------------------------
    def level(self, k: int = 0) -> zarr.Array:
        """The array of level ``k`` (lazy: index it to read), with every cached write stored."""
        self.flush()
        return self._array(k)

    def _array(self, k: int) -> zarr.Array:
        if str(k) not in self.group:
            raise PredictionFileError(self.path, f"the tissue map has no level {k}", "use level 0")
        arr = self.group[str(k)]
        assert isinstance(arr, zarr.Array)
        return arr

    def write_block(self, y0: int, x0: int, block: ArrayLike) -> None:
        """Write ``block`` (h, w) with its top-left at level-0 map px ``(y0, x0)``; float blocks are
        probabilities in [0, 1] (stored as ``round(p × 255)``), uint8 as they are; parts beyond the
        map's right/bottom edge are cropped. The pixels reach Zarr through the chunk cache."""
        arr = self._array(0)
        b = np.asarray(block)
        if b.ndim != 2:
            raise ValueError(f"a tissue block must be 2-D (h, w), got shape {b.shape}")
        if y0 < 0 or x0 < 0:
            raise ValueError(f"tissue block origin must be >= 0, got ({y0}, {x0})")
        if b.dtype != np.uint8:
            b = np.rint(np.clip(b.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
        h, w = arr.shape
        b = b[: max(0, h - y0), : max(0, w - x0)]
        if not b.size:
            return
        ch, cw = arr.chunks
        y1, x1 = y0 + b.shape[0], x0 + b.shape[1]
        with self._lock:
            if self._written is not None:
                self._written[y0 // ch : (y1 - 1) // ch + 1, x0 // cw : (x1 - 1) // cw + 1] = True
            for cy in range(y0 // ch, (y1 - 1) // ch + 1):
                for cx in range(x0 // cw, (x1 - 1) // cw + 1):
                    pix, mask = self._chunk(arr, cy, cx)
                    oy, ox = cy * ch, cx * cw
                    sy0, sy1 = max(y0, oy), min(y1, oy + ch)
                    sx0, sx1 = max(x0, ox), min(x1, ox + cw)
                    pix[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = b[
                        sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0
                    ]
                    mask[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = True
                    if mask.all():
                        self._store(arr, (cy, cx))
            while (
                len(self._cache) * 2 * ch * cw > self._cache_bytes
            ):  # pixels and mask: 2 bytes per px
                self._store(arr, next(iter(self._cache)))  # the oldest chunk

    def _chunk(self, arr: zarr.Array, cy: int, cx: int) -> tuple[np.ndarray, np.ndarray]:
        """Chunk (cy, cx) in the cache: read back when it may hold stored pixels, else zeros."""
        key = (cy, cx)
        hit = self._cache.get(key)
        if hit is None:
            ch, cw = arr.chunks
            ys, xs = (
                slice(cy * ch, min(arr.shape[0], (cy + 1) * ch)),
                slice(cx * cw, min(arr.shape[1], (cx + 1) * cw)),
            )
            shape = (ys.stop - ys.start, xs.stop - xs.start)
            if self._written is None or key in self._stored:
                pix = np.array(arr[ys, xs], dtype=np.uint8)
            else:
                pix = np.zeros(shape, np.uint8)
            hit = self._cache[key] = (pix, np.zeros(shape, bool))
        return hit

    def _store(self, arr: zarr.Array, key: tuple[int, int]) -> None:
        pix, _ = self._cache.pop(key)
        ch, cw = arr.chunks
        y, x = key[0] * ch, key[1] * cw
        arr[y : y + pix.shape[0], x : x + pix.shape[1]] = pix
        self._stored.add(key)

    def flush(self) -> None:
        """Store every cached chunk."""
        if not self._cache:
            return
        with self._lock:
            if self._cache:
                arr = self._array(0)
                for key in list(self._cache):
                    self._store(arr, key)

    def written(self, y0: int, y1: int, x0: int, x1: int) -> bool:
        """Whether any of level 0's pixels ``[y0:y1, x0:x1]`` may hold a written value (False
        only when this handle created the map and wrote nothing there: it reads as zeros)."""
        if self._written is None:
            return True
        ch, cw = self._array(0).chunks
        return bool(
            self._written[
                y0 // ch : max(y0 + 1, -(-y1 // ch)), x0 // cw : max(x0 + 1, -(-x1 // cw))
            ].any()
        )

    def read(self, y0: int, y1: int, x0: int, x1: int, *, level: int = 0) -> NDArray[np.uint8]:
        """Map pixels ``[y0:y1, x0:x1]`` of ``level`` (uint8)."""
        return np.asarray(self.level(level)[y0:y1, x0:x1])

    def build_pyramid(self) -> None:
        """Store the cached chunks, then fill level "1" from level "0" by 2×2 means, tile by tile
        (edge pixels replicated)."""
        self.flush()
        if self.levels < 2 or self.meta.get("pyramid_built"):
            return
        src, dst = self.level(0), self.level(1)
        h, w = src.shape
        step = 2 * int(dst.chunks[0])
        for y in range(0, h, step):
            for x in range(0, w, step):
                if not self.written(y, y + step, x, x + step):
                    continue  # zeros give zeros, and level 1 reads as zeros where nothing is written
                t = np.asarray(src[y : y + step, x : x + step]).astype(np.uint16)
                th, tw = t.shape
                if th % 2 or tw % 2:
                    t = np.pad(t, ((0, th % 2), (0, tw % 2)), mode="edge")
                s = t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]
                dst[y // 2 : y // 2 + s.shape[0], x // 2 : x // 2 + s.shape[1]] = (
                    (s + 2) // 4
                ).astype(np.uint8)
        self.group.attrs["wsi_ocelot"] = {**self.meta, "pyramid_built": True}
        log.debug("tissue map %s: level 1 built", self.path)
