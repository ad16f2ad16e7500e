"""The slide-level tissue (cancer-area) map: its geometry, the crops the cell branch gets
from it, and its two writers (docs/architecture.md), which share one interface
(:class:`TissueMapWriter`: ``aggregate`` a batch of tiles' predictions, ``finalize`` at the end):
the tissue pass's seamless :class:`BlendedTissueMap` and the per-tile path's :class:`CoreTissueMap`.

Map px ``(r, c)`` covers level-0 ``[c * s, (c + 1) * s) × [r * s, (r + 1) * s)`` with ``s``
the level-0 px per map px; the map lives in Zarr (``tissue.ome.zarr``, an OME-Zarr image), never whole
in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from wsi_ocelot.cells import cancer_area
from wsi_ocelot.purity import inside_map

__all__ = [
    "BlendedTissueMap",
    "CoreTissueMap",
    "MapWindow",
    "TissueMap",
    "TissueMapWriter",
    "coarse_map",
    "core_block",
    "crops_from_map",
    "read_map_region",
]


class TissueMap:
    """Geometry of the slide-level tissue map: map px (r, c) covers level-0
    ``[c * s, (c + 1) * s) × [r * s, (r + 1) * s)`` with ``s`` = level-0 px per map px."""

    def __init__(self, width: int, height: int, scale: float):
        self.scale = float(scale)
        self.width = max(1, math.ceil(width / scale))
        self.height = max(1, math.ceil(height / scale))

    def region(self, box_l0: np.ndarray, pad: int = 2) -> tuple[int, int, int, int]:
        """Integer map region (x0, y0, x1, y1) enclosing a level-0 box, ``pad`` px wider."""
        x, y, w, h = (float(v) for v in box_l0)
        s = self.scale
        return (
            math.floor(x / s) - pad,
            math.floor(y / s) - pad,
            math.ceil((x + w) / s) + pad,
            math.ceil((y + h) / s) + pad,
        )


def read_map_region(store: Any, tmap: TissueMap, region: tuple[int, int, int, int]) -> np.ndarray:
    """Map values (uint8) of an integer region, zero (= no cancer) outside the map."""
    x0, y0, x1, y1 = region
    out = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, tmap.width), min(y1, tmap.height)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = store.read_tissue(cy0, cy1, cx0, cx1)
    return out


def _sample_grid(
    boxes: np.ndarray, regions: np.ndarray, scale: float, n: int, region_hw: tuple[int, int]
) -> torch.Tensor:
    """grid_sample grids (B, n, n, 2) sampling each level-0 box at n × n pixel centres out
    of its map region (align_corners=False coordinates)."""
    rh, rw = region_hw
    b = torch.from_numpy(np.asarray(boxes, dtype=np.float64))
    r = torch.from_numpy(np.asarray(regions, dtype=np.float64))
    i = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    u = (b[:, 0:1] / scale - r[:, 0:1]) + i[None, :] * (
        b[:, 2:3] / scale
    )  # map px within each region
    v = (b[:, 1:2] / scale - r[:, 1:2]) + i[None, :] * (b[:, 3:4] / scale)
    gu = 2.0 * u / rw - 1.0
    gv = 2.0 * v / rh - 1.0
    m = len(b)
    return torch.stack(
        [gu[:, None, :].expand(m, n, n), gv[:, :, None].expand(m, n, n)], dim=-1
    ).float()


@dataclass(frozen=True)
class MapWindow:
    """Tissue-map values (uint8) read for a batch of cell tiles: one region per block of
    neighbouring tiles, and for each tile the block it lies in."""

    scale: float
    values: list[np.ndarray]
    origins: np.ndarray  # (G, 2) map x0, y0 of each block's region
    group: np.ndarray  # (B,) block of each tile

    def in_cancer_area(self, k: int, p: np.ndarray) -> np.ndarray:
        """Whether level-0 points ``p`` (N, >= 2) of tile ``k`` lie on map px >= 0.5 (cancer area)."""
        if not len(p):
            return np.zeros(0, bool)
        g = int(self.group[k])
        vals, (x0, y0) = self.values[g], self.origins[g]
        # the map px of each point counted from the values' origin, a point beyond them taking
        # the nearest (the per-tile path holds only each core's px; its cells reach past it)
        c = np.clip(np.floor(p[:, 0] / self.scale).astype(np.int64) - x0, 0, vals.shape[1] - 1)
        r = np.clip(np.floor(p[:, 1] / self.scale).astype(np.int64) - y0, 0, vals.shape[0] - 1)
        return inside_map(c, r, vals, 1.0)


def crops_from_map(
    store: Any,
    tmap: TissueMap,
    boxes: np.ndarray,
    n: int,
    groups: np.ndarray,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, MapWindow]:
    """For cell boxes (B, 4) in level-0 px: the (B, 2, n, n) tissue-probability crop over
    exactly each box (BG = 1 − CA, CA), sampled on ``device``, and the map values read.

    The map is read once per group of tiles (``groups``: a block id per tile, neighbouring
    tiles share one), over the union of the group's tile regions; each tile's region is then
    cut from it, so the crops equal those of reading every tile's region on its own."""
    regions = np.array([tmap.region(b) for b in boxes], dtype=np.int64)
    rh = int((regions[:, 3] - regions[:, 1]).max())
    rw = int((regions[:, 2] - regions[:, 0]).max())
    stack = np.zeros((len(boxes), 1, rh, rw), np.float32)
    keys, group = np.unique(np.asarray(groups), return_inverse=True)
    values: list[np.ndarray] = []
    origins = np.zeros((len(keys), 2), np.int64)
    for g in range(len(keys)):
        sel = np.flatnonzero(group == g)
        u = (
            int(regions[sel, 0].min()),
            int(regions[sel, 1].min()),
            int(regions[sel, 2].max()),
            int(regions[sel, 3].max()),
        )
        vals = read_map_region(store, tmap, u)
        values.append(vals)
        origins[g] = u[:2]
        for k in sel:
            x0, y0, x1, y1 = (int(v) for v in regions[k])
            stack[k, 0, : y1 - y0, : x1 - x0] = (
                vals[y0 - u[1] : y1 - u[1], x0 - u[0] : x1 - u[0]] / 255.0
            )
    grid = _sample_grid(boxes, regions, tmap.scale, n, (rh, rw))
    dev = device or torch.device("cpu")
    ca = F.grid_sample(
        torch.from_numpy(stack).to(dev, non_blocking=True),
        grid.to(dev, non_blocking=True),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return torch.cat([1.0 - ca, ca], dim=1), MapWindow(
        tmap.scale, values, origins, group.astype(np.int64)
    )


def core_block(
    probs: torch.Tensor, box: np.ndarray, core: np.ndarray, tmap: TissueMap
) -> tuple[int, int, np.ndarray] | None:
    """Resample one tile's CA probabilities ``(T, T)`` (covering the level-0 ``box``) onto
    the map pixels whose centres lie in the level-0 ``core``. Cores partition the slide, so
    every map pixel is written by exactly one tile, at its exact position (no drift when
    the tile size in level-0 px is not a whole number of map pixels).
    Returns ``(map_x0, map_y0, uint8 block)``, or None when the core holds no map pixel."""
    s = tmap.scale
    x0, y0, x1, y1 = (float(v) for v in core)
    mx0, my0 = max(0, math.ceil(x0 / s - 0.5)), max(0, math.ceil(y0 / s - 0.5))
    mx1, my1 = min(tmap.width, math.ceil(x1 / s - 0.5)), min(tmap.height, math.ceil(y1 / s - 0.5))
    if mx1 <= mx0 or my1 <= my0:
        return None
    bx, by, bw, bh = (float(v) for v in box)
    u = ((torch.arange(mx0, mx1, dtype=torch.float64) + 0.5) * s - bx) / bw * 2 - 1
    v = ((torch.arange(my0, my1, dtype=torch.float64) + 0.5) * s - by) / bh * 2 - 1
    yy, xx = torch.meshgrid(v, u, indexing="ij")
    grid = torch.stack([xx, yy], -1)[None].to(probs.dtype)
    vals = F.grid_sample(
        probs[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0]
    return mx0, my0, (vals * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _sample_tile(
    probs: torch.Tensor, box: np.ndarray, xs_l0: np.ndarray, ys_l0: np.ndarray
) -> np.ndarray:
    """A tile's CA probabilities ``(T, T)`` (covering the level-0 ``box``) sampled bilinearly
    at the level-0 points ``xs × ys`` (map pixel centres) → float32 (len(ys), len(xs))."""
    bx, by, bw, bh = (float(v) for v in box)
    u = (torch.from_numpy(xs_l0) - bx) / bw * 2 - 1
    v = (torch.from_numpy(ys_l0) - by) / bh * 2 - 1
    yy, xx = torch.meshgrid(v, u, indexing="ij")
    grid = torch.stack([xx, yy], -1)[None].to(probs.dtype)
    return F.grid_sample(
        probs[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[0, 0].numpy()


class BlendedTissueMap:
    """Writes tissue-tile predictions into the map, cross-fading across core borders.

    Every map pixel belongs to the tile whose core holds its centre (pixels of cores without
    a tile stay 0). Near a core border shared with an existing neighbour the two (at a corner
    up to four) tiles' predictions are blended: each tile's weight is a product of linear
    ramps, 1 deep inside its core, 0.5 on the border and 0 at ``band`` level-0 px beyond it,
    normalised over the tiles that exist, so a band without a neighbour (tissue edge) keeps
    the tile's own value. ``band`` is half the tile margin, so blended values come from at
    least half a margin inside each tile.

    The map is split along each axis into core interiors and ``2 × band`` wide bands at the
    internal core borders; each rectangle of that split is written once, as soon as every tile
    covering it is done (a rectangle inside one core at once; a band when its second tile
    arrives, accumulated in a small float buffer until then). Only the pending band rectangles
    sit in memory: at most about one row of bands, ``map width × 2 band`` floats.
    """

    def __init__(self, grid: Any, tmap: TissueMap, store: Any, slide_w: int, slide_h: int):
        self.grid, self.tmap, self.store = grid, tmap, store
        self.stride = float(grid.stride_l0)
        self.band = max(0.0, min(grid.margin_l0 / 2.0, self.stride / 2.0))
        self.exists = np.zeros((grid.n_rows, grid.n_cols), bool)
        self.exists[grid.rows, grid.cols] = True
        self.xseg = self._segments(grid.n_cols, slide_w, tmap.width)
        self.yseg = self._segments(grid.n_rows, slide_h, tmap.height)
        self.pending: dict[tuple[int, int], list] = {}
        self.ca_pixels = 0

    def _segments(self, n: int, size_l0: int, size_map: int) -> list[tuple[int, int]]:
        """Map-px ranges of the split along one axis: index 2c = interior of core c,
        2c − 1 = the band at the border between cores c − 1 and c."""
        s, b, st = self.tmap.scale, self.band, self.stride
        bounds = []
        for c in range(n):
            if c > 0:
                bounds.append((c * st - b, c * st + b))
            lo = c * st + (b if c > 0 else 0.0)
            hi = size_l0 if c == n - 1 else (c + 1) * st - (b if c < n - 1 else 0.0)
            bounds.append((lo, hi))
        out = []
        for lo, hi in bounds:  # map px whose centre lies in [lo, hi)
            m0 = min(size_map, max(0, math.ceil(lo / s - 0.5)))
            m1 = min(size_map, max(0, math.ceil(hi / s - 0.5)))
            out.append((m0, max(m0, m1)))
        return out

    @staticmethod
    def _covering(k: int, n: int) -> list[int]:
        """Tiles (along one axis) whose extended core covers segment ``k``."""
        return [k // 2] if k % 2 == 0 else [(k - 1) // 2, (k + 1) // 2]

    def _ramp(self, pos: np.ndarray, idx: int, n: int) -> np.ndarray:
        """A tile's weight along one axis: linear fades across its internal core borders."""
        w = np.ones_like(pos)
        if self.band <= 0:
            return w
        if idx > 0:
            w *= np.clip(0.5 + (pos - idx * self.stride) / (2 * self.band), 0.0, 1.0)
        if idx < n - 1:
            w *= np.clip(0.5 + ((idx + 1) * self.stride - pos) / (2 * self.band), 0.0, 1.0)
        return w

    def _owner(self, pos: np.ndarray, n: int) -> np.ndarray:
        return np.clip(np.floor(pos / self.stride).astype(np.int64), 0, n - 1)

    def aggregate(self, idx: np.ndarray, probs: torch.Tensor) -> None:
        """The CA probabilities ``probs`` (B, T, T) of the grid's tiles ``idx`` (B,), each over its
        level-0 box."""
        g = self.grid
        for k, i in enumerate(np.asarray(idx).tolist()):
            self._add(int(g.rows[i]), int(g.cols[i]), probs[k], g.boxes[i])

    def _add(self, r: int, c: int, probs: torch.Tensor, box: np.ndarray) -> None:
        """Tile (r, c)'s CA probabilities (T, T) over its level-0 ``box``."""
        g, s = self.grid, self.tmap.scale
        for ky in (2 * r - 1, 2 * r, 2 * r + 1):
            if not 0 <= ky < len(self.yseg):
                continue
            for kx in (2 * c - 1, 2 * c, 2 * c + 1):
                if not 0 <= kx < len(self.xseg):
                    continue
                (mx0, mx1), (my0, my1) = self.xseg[kx], self.yseg[ky]
                if mx1 <= mx0 or my1 <= my0:
                    continue
                tiles = [
                    (rr, cc)
                    for rr in self._covering(ky, g.n_rows)
                    for cc in self._covering(kx, g.n_cols)
                    if self.exists[rr, cc]
                ]
                xs = (np.arange(mx0, mx1, dtype=np.float64) + 0.5) * s
                ys = (np.arange(my0, my1, dtype=np.float64) + 0.5) * s
                vals = _sample_tile(probs, box, xs, ys).astype(np.float64)
                if len(tiles) > 1:
                    total = sum(
                        np.outer(self._ramp(ys, rr, g.n_rows), self._ramp(xs, cc, g.n_cols))
                        for rr, cc in tiles
                    )
                    own = np.outer(self._ramp(ys, r, g.n_rows), self._ramp(xs, c, g.n_cols))
                    vals *= own / total
                owned = self.exists[self._owner(ys, g.n_rows)][:, self._owner(xs, g.n_cols)]
                vals[~owned] = 0.0
                if len(tiles) == 1:
                    self._write(my0, mx0, vals)
                    continue
                key = (ky, kx)
                if key not in self.pending:
                    self.pending[key] = [np.zeros_like(vals), len(tiles)]
                entry = self.pending[key]
                entry[0] += vals
                entry[1] -= 1
                if entry[1] == 0:
                    del self.pending[key]
                    self._write(my0, mx0, entry[0])

    def _write(self, my0: int, mx0: int, vals: np.ndarray) -> None:
        block = np.rint(np.clip(vals, 0.0, 1.0) * 255.0).astype(np.uint8)
        self.store.write_tissue_block(my0, mx0, block)
        self.ca_pixels += int(cancer_area(block).sum())

    def finalize(self) -> None:
        """Check that every band rectangle was completed (every tile was aggregated)."""
        if self.pending:
            raise RuntimeError(
                f"tissue map: {len(self.pending)} band rectangles were never completed"
            )


class CoreTissueMap:
    """The per-tile path's writer: each cell tile's core of the map, sampled from its own
    context's prediction (:func:`core_block`; cores partition the slide, so every map pixel is
    written once, without blending). ``aggregate`` returns the values it wrote as a
    :class:`MapWindow`, which tells the tiles' cells whether they lie in the cancer area."""

    def __init__(self, grid: Any, contexts: np.ndarray, tmap: TissueMap, store: Any):
        self.grid, self.contexts, self.tmap, self.store = grid, contexts, tmap, store
        self.ca_pixels = 0

    def aggregate(self, idx: np.ndarray, probs: torch.Tensor) -> MapWindow:
        """The CA probabilities ``probs`` (B, T, T) of the cell tiles ``idx`` (B,), each over
        its context box."""
        cores, ctx = self.grid.cores[idx], self.contexts[idx]
        values, origins = [], np.zeros((len(idx), 2), np.int64)
        for k in range(len(idx)):
            placed = core_block(probs[k], ctx[k], cores[k], self.tmap)
            if placed is None:  # the core holds no map pixel
                values.append(np.zeros((1, 1), np.uint8))
                continue
            mx0, my0, block = placed
            self.store.write_tissue_block(my0, mx0, block)
            self.ca_pixels += int(cancer_area(block).sum())
            values.append(block)
            origins[k] = (mx0, my0)
        return MapWindow(self.tmap.scale, values, origins, np.arange(len(idx)))

    def finalize(self) -> None:
        """Nothing is held back: each core was written when its tile came."""


class TissueMapWriter(Protocol):
    """What both map writers share: ``aggregate`` a batch of tiles' CA probabilities (the
    :class:`MapWindow` of values written, where the caller needs them, else None),
    ``finalize`` once every tile is in; ``ca_pixels`` counts the cancer-area pixels written."""

    ca_pixels: int

    def aggregate(self, idx: np.ndarray, probs: torch.Tensor) -> MapWindow | None: ...

    def finalize(self) -> None: ...


def coarse_map(store: Any, tmap: TissueMap, max_side: int = 4096) -> tuple[np.ndarray, int]:
    """The tissue map block-averaged to at most ``max_side`` px (read block by block)."""
    k = max(1, math.ceil(max(tmap.height, tmap.width) / max_side))
    hh, ww = math.ceil(tmap.height / k), math.ceil(tmap.width / k)
    out = np.zeros((hh, ww), np.float32)
    step = max(k, (2048 // k) * k)
    for y0 in range(0, tmap.height, step):
        for x0 in range(0, tmap.width, step):
            y1, x1 = min(y0 + step, tmap.height), min(x0 + step, tmap.width)
            if not store.tissue_written(y0, y1, x0, x1):
                continue  # nothing written there: zeros, as ``out`` already is
            blk = store.read_tissue(y0, y1, x0, x1).astype(np.float32) / 255.0
            ph, pw = (-blk.shape[0]) % k, (-blk.shape[1]) % k
            if ph or pw:
                blk = np.pad(blk, ((0, ph), (0, pw)), mode="edge")
            red = blk.reshape(blk.shape[0] // k, k, blk.shape[1] // k, k).mean(axis=(1, 3))
            out[y0 // k : y0 // k + red.shape[0], x0 // k : x0 // k + red.shape[1]] = red
    return out, k
