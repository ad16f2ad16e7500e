"""The slide engine: one slide in, a complete result folder out.

Two passes for the tissue-prediction injection models (DESIGN.md §2):

1. **tissue pass** — context-resolution tiles over the tissue, batched through the tissue
   branch; each tile's core is written into a slide-level cancer-area probability map in
   Zarr (``predictions.zarr/tissue``), cross-faded with its neighbours across core borders
   so that tiles meet without seams, and the map never sits in RAM;
2. **cell pass** — overlapping cell tiles; for each, the matching crop of the tissue map
   goes into the cell branch; peaks are found on the device, and only the peaks inside
   the tile's own core are kept, converted to level-0 px and streamed to the cell table.

``feature_sharing`` checkpoints (which cannot be split) and every checkpoint under
``per_tile=True`` use the paper's per-tile path: each cell tile with its own context read
from the slide. Outputs appear atomically: everything is written into a hidden folder that
is renamed to ``<out>/<slide-id>`` at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsi_ocelot import __version__
from wsi_ocelot.errors import WsiOcelotError
from wsi_ocelot.inference.peaks import find_peaks
from wsi_ocelot.inference.predictor import Predictor, resolve_device, with_oom_retry
from wsi_ocelot.naming import slide_id_for
from wsi_ocelot.slide import Slide, open_slide, tissue_mask
from wsi_ocelot.tiling import TileDataset, make_loader, plan_tiles

log = logging.getLogger(__name__)

PURITY_GRID_UM = 100.0  # side of a purity heat-map square, µm
DUPLICATE_UM = 3.0  # two tiles' detections closer than this across a core border are one cell


@dataclass(frozen=True)
class EngineConfig:
    """How a slide is run (the model decides the geometry)."""

    device: str = "auto"
    batch_size: int = 8
    workers: int = 2
    prefetch: int = 2
    amp: bool = True
    channels_last: bool = True
    per_tile: bool = False
    geojson_gzip: bool = False
    qupath_crop: bool = True  # subtract openslide.bounds-x/y in GeoJSON (QuPath's default frame)
    progress: bool = True
    tissue_chunk: int = 512
    cell_margin: int | None = None  # overlap of cell tiles in cell px; None = the checkpoint's geometry


@dataclass
class SlideResult:
    """What :func:`run_slide` produced for one slide."""

    slide_id: str
    out_dir: Path
    n_cells: int
    purity: dict[str, Any]
    timings: dict[str, float]
    mode: str


class _Timer:
    def __init__(self) -> None:
        self.t: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] += time.perf_counter() - t0


def _timed_batches(loader, timer: _Timer) -> Iterator[dict[str, Any]]:
    it = iter(loader)
    while True:
        with timer("read"):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tile", disable=not enabled, leave=False, dynamic_ncols=True)


class _TissueMap:
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
        return (math.floor(x / s) - pad, math.floor(y / s) - pad, math.ceil((x + w) / s) + pad, math.ceil((y + h) / s) + pad)


def _read_region(store, tmap: _TissueMap, region: tuple[int, int, int, int]) -> np.ndarray:
    """Map values (uint8) of an integer region, zero (= no cancer) outside the map."""
    x0, y0, x1, y1 = region
    out = np.zeros((y1 - y0, x1 - x0), np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, tmap.width), min(y1, tmap.height)
    if cx1 > cx0 and cy1 > cy0:
        out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = store.read_tissue(cy0, cy1, cx0, cx1)
    return out


def _sample_grid(boxes: np.ndarray, regions: np.ndarray, scale: float, n: int, region_hw: tuple[int, int]) -> torch.Tensor:
    """grid_sample grids (B, n, n, 2) sampling each level-0 box at n × n pixel centres out
    of its map region (align_corners=False coordinates)."""
    rh, rw = region_hw
    i = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    gx = []
    for (x, y, w, h), (rx0, ry0, _, _) in zip(boxes.astype(np.float64), regions, strict=True):
        u = (x / scale - rx0) + i * (w / scale)  # map px coordinates within the region
        v = (y / scale - ry0) + i * (h / scale)
        gu = 2.0 * u / rw - 1.0
        gv = 2.0 * v / rh - 1.0
        yy, xx = torch.meshgrid(gv, gu, indexing="ij")
        gx.append(torch.stack([xx, yy], dim=-1))
    return torch.stack(gx).float()


def _crops_from_map(store, tmap: _TissueMap, boxes: np.ndarray, n: int) -> tuple[torch.Tensor, list[np.ndarray], np.ndarray]:
    """For cell boxes (B, 4) in level-0 px: the (B, 2, n, n) tissue-probability crop over
    exactly each box (BG = 1 − CA, CA), the map regions read (uint8) and their origins."""
    regions = np.array([tmap.region(b) for b in boxes], dtype=np.int64)
    rh = int((regions[:, 3] - regions[:, 1]).max())
    rw = int((regions[:, 2] - regions[:, 0]).max())
    stack = np.zeros((len(boxes), 1, rh, rw), np.float32)
    raw: list[np.ndarray] = []
    for k, reg in enumerate(regions):
        vals = _read_region(store, tmap, tuple(reg))
        raw.append(vals)
        stack[k, 0, : vals.shape[0], : vals.shape[1]] = vals / 255.0
    grid = _sample_grid(boxes, regions, tmap.scale, n, (rh, rw))
    ca = F.grid_sample(torch.from_numpy(stack), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return torch.cat([1.0 - ca, ca], dim=1), raw, regions


def _core_block(probs: torch.Tensor, box: np.ndarray, core: np.ndarray, tmap: _TissueMap) -> tuple[int, int, np.ndarray] | None:
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
    vals = F.grid_sample(probs[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]
    return mx0, my0, (vals * 255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _sample_tile(probs: torch.Tensor, box: np.ndarray, xs_l0: np.ndarray, ys_l0: np.ndarray) -> np.ndarray:
    """A tile's CA probabilities ``(T, T)`` (covering the level-0 ``box``) sampled bilinearly
    at the level-0 points ``xs × ys`` (map pixel centres) → float32 (len(ys), len(xs))."""
    bx, by, bw, bh = (float(v) for v in box)
    u = (torch.from_numpy(xs_l0) - bx) / bw * 2 - 1
    v = (torch.from_numpy(ys_l0) - by) / bh * 2 - 1
    yy, xx = torch.meshgrid(v, u, indexing="ij")
    grid = torch.stack([xx, yy], -1)[None].to(probs.dtype)
    return F.grid_sample(probs[None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0].numpy()


class _BlendedTissueMap:
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

    def __init__(self, grid, tmap: _TissueMap, store, slide_w: int, slide_h: int):
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

    def add(self, r: int, c: int, probs: torch.Tensor, box: np.ndarray) -> None:
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
                tiles = [(rr, cc) for rr in self._covering(ky, g.n_rows) for cc in self._covering(kx, g.n_cols) if self.exists[rr, cc]]
                xs = (np.arange(mx0, mx1, dtype=np.float64) + 0.5) * s
                ys = (np.arange(my0, my1, dtype=np.float64) + 0.5) * s
                vals = _sample_tile(probs, box, xs, ys).astype(np.float64)
                if len(tiles) > 1:
                    total = sum(np.outer(self._ramp(ys, rr, g.n_rows), self._ramp(xs, cc, g.n_cols)) for rr, cc in tiles)
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
        self.ca_pixels += int((block >= 128).sum())

    def close(self) -> None:
        if self.pending:  # every tile was added, so nothing can be pending
            raise RuntimeError(f"tissue map: {len(self.pending)} band rectangles were never completed")


def _points_to_level0(pts: torch.Tensor, box: np.ndarray, tile: int) -> np.ndarray:
    """Peaks (N, 4) in tile px (pixel j covers [j, j + 1)) → (N, 4) level-0 x, y, cls, prob."""
    p = pts.detach().cpu().numpy().astype(np.float64)
    if not len(p):
        return np.zeros((0, 4))
    sx, sy = box[2] / tile, box[3] / tile
    p[:, 0] = box[0] + (p[:, 0] + 0.5) * sx
    p[:, 1] = box[1] + (p[:, 1] + 0.5) * sy
    return p


def _cores_in_tile_px(boxes: np.ndarray, cores: np.ndarray, tile: int) -> tuple[float, float, float, float]:
    """The union over a batch of each tile's core in its own tile px (pixel j has its centre at
    ``box + (j + 0.5) * box / tile``), one px wider on each side. Peaks are searched there
    only; the exact level-0 core test follows in :func:`_in_core`."""
    sx, sy = boxes[:, 2] / tile, boxes[:, 3] / tile
    x0 = ((cores[:, 0] - boxes[:, 0]) / sx - 0.5).min()
    y0 = ((cores[:, 1] - boxes[:, 1]) / sy - 0.5).min()
    x1 = ((cores[:, 2] - boxes[:, 0]) / sx - 0.5).max()
    y1 = ((cores[:, 3] - boxes[:, 1]) / sy - 0.5).max()
    return (math.floor(x0) - 1.0, math.floor(y0) - 1.0, math.ceil(x1) + 1.0, math.ceil(y1) + 1.0)


def _in_core(p: np.ndarray, core: np.ndarray) -> np.ndarray:
    return (p[:, 0] >= core[0]) & (p[:, 0] < core[2]) & (p[:, 1] >= core[1]) & (p[:, 1] < core[3])


class _BorderBuffer:
    """Detections within ``radius`` of a tile-core border, held back until the pass is done.

    Neighbouring tiles see a cell on their shared core border with the same pixels but place
    its peak independently; when each puts it on its own side, both report it. Such a pair is
    closer than ``radius`` and each point lies within ``radius`` of the border, so only those
    points are held (a few % of the cells, 40 bytes each) and, at the end, of two points from
    different tiles closer than ``radius`` the one with the lower probability is dropped.
    """

    def __init__(self, radius: float):
        self.radius = float(radius)
        self.points: list[np.ndarray] = []
        self.inside: list[np.ndarray] = []
        self.tile: list[np.ndarray] = []
        self._next = 0

    def split(self, p: np.ndarray, inside: np.ndarray | None, core: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Keep the points near ``core``'s border; return the others (to be written now)."""
        tid, self._next = self._next, self._next + 1
        if not len(p) or self.radius <= 0:
            return p, inside
        d = np.minimum.reduce([p[:, 0] - core[0], core[2] - p[:, 0], p[:, 1] - core[1], core[3] - p[:, 1]])
        near = d < self.radius
        if near.any():
            self.points.append(p[near])
            self.inside.append(inside[near] if inside is not None else np.zeros(int(near.sum()), bool))
            self.tile.append(np.full(int(near.sum()), tid))
        return p[~near], (inside[~near] if inside is not None else None)

    def resolve(self) -> tuple[np.ndarray, np.ndarray, int]:
        """The held points without cross-tile duplicates, their cancer-area flags, and how many were dropped."""
        if not self.points:
            return np.zeros((0, 4)), np.zeros(0, bool), 0
        from scipy.spatial import cKDTree

        p, inside, tile = np.concatenate(self.points), np.concatenate(self.inside), np.concatenate(self.tile)
        pairs = cKDTree(p[:, :2]).query_pairs(self.radius, output_type="ndarray")
        pairs = pairs[tile[pairs[:, 0]] != tile[pairs[:, 1]]]
        drop = np.zeros(len(p), bool)
        if len(pairs):
            order = np.argsort(-p[:, 3], kind="stable")  # strongest first keeps its place
            rank = np.empty(len(p), np.int64)
            rank[order] = np.arange(len(p))
            partners: dict[int, list[int]] = {}
            for a, b in pairs:
                partners.setdefault(int(a), []).append(int(b))
                partners.setdefault(int(b), []).append(int(a))
            for i in sorted(partners, key=lambda j: rank[j]):
                if not drop[i]:
                    for j in partners[i]:
                        drop[j] = True
        return p[~drop], inside[~drop], int(drop.sum())


@dataclass
class _Accumulator:
    """Running counts for purity and the heat map (nothing per cell is kept)."""

    grid_px: float
    grid_shape: tuple[int, int]
    tc_grid: np.ndarray = field(init=False)
    bc_grid: np.ndarray = field(init=False)
    n_tc: int = 0
    n_bc: int = 0
    n_tc_ca: int = 0
    n_bc_ca: int = 0

    def __post_init__(self) -> None:
        self.tc_grid = np.zeros(self.grid_shape, np.int64)
        self.bc_grid = np.zeros(self.grid_shape, np.int64)

    def add(self, p: np.ndarray, inside: np.ndarray | None) -> None:
        if not len(p):
            return
        tc = p[:, 2] == 2
        self.n_tc += int(tc.sum())
        self.n_bc += int((~tc).sum())
        if inside is not None:
            self.n_tc_ca += int((tc & inside).sum())
            self.n_bc_ca += int((~tc & inside).sum())
        gy = np.clip((p[:, 1] // self.grid_px).astype(int), 0, self.grid_shape[0] - 1)
        gx = np.clip((p[:, 0] // self.grid_px).astype(int), 0, self.grid_shape[1] - 1)
        np.add.at(self.tc_grid, (gy[tc], gx[tc]), 1)
        np.add.at(self.bc_grid, (gy[~tc], gx[~tc]), 1)


def _ratio(tc: int, bc: int) -> float | None:
    return tc / (tc + bc) if tc + bc else None


class SlideRunner:
    """Runs slides with one loaded model (load it once, run many slides)."""

    def __init__(self, model_path: str | os.PathLike[str], config: EngineConfig = EngineConfig()):
        from wsi_ocelot.model import load_model
        from wsi_ocelot.weights import resolve_model

        model_path = resolve_model(model_path)  # "demo" → the shipped weights
        self.config = config
        self.device = resolve_device(config.device)
        self.model_path = str(model_path)
        model, info = load_model(model_path, device="cpu")
        if getattr(model, "needs_tissue_label", False):
            raise WsiOcelotError(model_path, "this is a tissue-label-leaking model, which needs tissue labels as input", "use it for analysis with `wsi-ocelot evaluate --data`; run slides with an injection model")
        self.info = info
        self.geometry = info.geometry
        if config.cell_margin is not None:
            self.geometry = dataclasses.replace(info.geometry, cell_margin=config.cell_margin)
        self.peaks = info.peaks
        self.predictor = Predictor(model, self.device, amp=config.amp, channels_last=config.channels_last)
        self.has_tissue = bool(getattr(model, "has_tissue_branch", False))
        self.two_pass = bool(getattr(model, "supports_two_pass", True)) and not config.per_tile
        log.info("model %s (%s, encoder %s) on %s, %s path", Path(model_path).name, info.model.variant, info.model.encoder,
                 self.device, "two-pass" if self.two_pass else "per-tile")

    # ------------------------------------------------------------------------------------
    def run(self, slide_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, mpp: float | None = None,
            slide_id: str | None = None, overwrite: bool = True) -> SlideResult:
        """Process one slide into ``out_dir/<slide-id>/`` (atomically) and return a summary."""
        t_start = time.perf_counter()
        out_root = Path(out_dir)
        sid = slide_id or slide_id_for(slide_path)
        final = out_root / sid
        if final.exists() and not overwrite:
            raise WsiOcelotError(final, "the output folder exists", "pass --overwrite, or choose another --out")
        out_root.mkdir(parents=True, exist_ok=True)
        work = out_root / f".{sid}.partial-{os.getpid()}"
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        try:
            with open_slide(slide_path, mpp=mpp) as slide:
                result = self._run(slide, work, sid)
            result.timings["total"] = time.perf_counter() - t_start
            self._finish_purity(work, result)
            if final.exists():
                old = out_root / f".{sid}.old-{os.getpid()}"
                os.replace(final, old)
                os.replace(work, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        result.out_dir = final
        log.info("%s: %d cells, purity %s, %.1f s -> %s", sid, result.n_cells,
                 "n/a" if result.purity["purity"] is None else f"{result.purity['purity']:.3f}", result.timings["total"], final)
        return result

    def _finish_purity(self, work: Path, result: SlideResult) -> None:
        result.purity["runtime_s"] = {k: round(v, 3) for k, v in result.timings.items()}
        tmp = work / "purity.json.tmp"
        tmp.write_text(json.dumps(result.purity, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, work / "purity.json")

    # ------------------------------------------------------------------------------------
    def _run(self, slide: Slide, work: Path, sid: str) -> SlideResult:
        from wsi_ocelot.outputs import (
            CellsGeoJSONWriter,
            PredictionStore,
            polygons_from_map,
            write_overview,
            write_tissue_geojson,
        )

        cfg, geo = self.config, self.geometry
        timer = _Timer()
        with timer("plan"):
            mask = tissue_mask(slide)
            plan = plan_tiles(slide, geo, mask)
        W, H = slide.dimensions
        mpp = slide.mpp
        T = geo.tile_size
        tissue_scale = plan.tissue.tile_l0 / T if len(plan.tissue) else geo.tissue_mpp / mpp
        tmap = _TissueMap(W, H, tissue_scale)
        grid_px = PURITY_GRID_UM / mpp
        acc = _Accumulator(grid_px, (max(1, math.ceil(H / grid_px)), max(1, math.ceil(W / grid_px))))
        origin = (slide.bounds[0], slide.bounds[1]) if cfg.qupath_crop else (0, 0)
        mode = "two-pass" if self.two_pass else "per-tile"
        ca_pixels = 0

        store = PredictionStore(work / "predictions.zarr", mode="w")
        cells_name = "cells.geojson.gz" if cfg.geojson_gzip else "cells.geojson"
        try:
            if self.has_tissue:
                store.create_tissue_map(tmap.height, tmap.width, tmap.scale * mpp, chunk=cfg.tissue_chunk, level0_downsample=tmap.scale)
            # cells closer than 3 µm (OCELOT's matching radius) from two tiles are one cell
            self._border = _BorderBuffer(DUPLICATE_UM / mpp)
            with CellsGeoJSONWriter(work / cells_name, gzip=cfg.geojson_gzip, origin=origin) as gj:
                if self.two_pass:
                    if self.has_tissue:
                        ca_pixels = self._tissue_pass(slide, plan, store, tmap, timer)
                    self._cell_pass(slide, plan, store, tmap, gj, acc, timer)
                else:
                    ca_pixels = self._per_tile_pass(slide, plan, store, tmap, gj, acc, timer)
                self._flush_border(gj, store, acc, timer)
                with timer("write"):
                    store.flush()
                n_cells = gj.count

            # tissue outputs
            with timer("write"):
                ca_geom = None
                if self.has_tissue:
                    coarse, k = self._coarse_map(store, tmap)
                    ca_geom = polygons_from_map(coarse, threshold=0.5, scale=tmap.scale * k, min_area=(20.0 / mpp) ** 2)
                write_tissue_geojson(work / "tissue.geojson", ca_geom, origin=origin)
                thumb, ds = slide.thumbnail(mpp=max(1.0, max(W, H) * mpp / 1200.0))  # ~1200 px on the long side
                tc, bc = acc.tc_grid, acc.bc_grid
                with np.errstate(invalid="ignore", divide="ignore"):
                    grid = np.where(tc + bc > 0, tc / np.maximum(tc + bc, 1), np.nan)
                write_overview(work / "overview.png", thumb, ds, ca_geometry=ca_geom, purity=grid, purity_cell_size=grid_px)

            tissue_mm2 = float(mask.mask.sum()) * (mask.downsample * mpp) ** 2 / 1e6
            ca_mm2 = ca_pixels * (tmap.scale * mpp) ** 2 / 1e6 if self.has_tissue else None
            purity = self._purity_dict(slide, acc, tissue_mm2, ca_mm2, n_cells, plan, mode)
            store.set_attrs({
                "slide": {"path": str(slide.path), "id": sid, "dimensions": [W, H], "mpp": mpp, "mpp_source": slide.mpp_info.source,
                          "vendor": slide.vendor, "bounds": list(slide.bounds)},
                "coordinates": "cells x, y in OpenSlide level-0 px (GeoJSON subtracts openslide.bounds-x/y when qupath_crop)",
                "model": {"path": self.model_path, "variant": self.info.model.variant, "encoder": self.info.model.encoder,
                          "config": asdict(self.info.model), "geometry": asdict(geo), "peaks": asdict(self.peaks),
                          "training": self.info.training, "metrics": self.info.metrics},
                "software": {"wsi_ocelot": __version__, "torch": torch.__version__},
                "run": {**asdict(cfg), "mode": mode, "device": str(self.device)},
                "timings_s": {k: round(v, 3) for k, v in timer.t.items()},
                "counts": {"cells": n_cells, "tc": acc.n_tc, "bc": acc.n_bc},
            })
        finally:
            store.close()
        return SlideResult(sid, work, n_cells, purity, dict(timer.t), mode)

    # ------------------------------------------------------------------------------------
    def _loader(self, slide: Slide, boxes: np.ndarray, contexts: np.ndarray | None = None):
        cfg = self.config
        ds = TileDataset(slide, boxes, self.geometry.tile_size, contexts)
        workers = min(cfg.workers, max(0, len(ds) // max(cfg.batch_size, 1)))
        return make_loader(ds, batch_size=cfg.batch_size, workers=workers, prefetch=cfg.prefetch,
                           pin_memory=self.device.type == "cuda")

    def _tissue_pass(self, slide: Slide, plan, store, tmap: _TissueMap, timer: _Timer) -> int:
        """Tissue branch over the tissue grid; each tile's core goes into the map.
        Returns the number of map px predicted as cancer area."""
        grid = plan.tissue
        W, H = slide.dimensions
        blend = _BlendedTissueMap(grid, tmap, store, W, H)
        bar = _progress(len(grid), "tissue pass", self.config.progress)
        for batch in _timed_batches(self._loader(slide, grid.boxes), timer):
            with timer("tissue pass"):
                probs = with_oom_retry(self.predictor.tissue_probs, batch["cell"])[:, 1].float().cpu()
            with timer("write"):
                for k, idx in enumerate(batch["index"].tolist()):
                    blend.add(int(grid.rows[idx]), int(grid.cols[idx]), probs[k], grid.boxes[idx])
            bar.update(len(batch["index"]))
        blend.close()
        bar.close()
        return blend.ca_pixels

    def _emit(self, pts_list, boxes: np.ndarray, cores: np.ndarray, inside_fn, gj, store, acc: _Accumulator, timer: _Timer) -> None:
        T = self.geometry.tile_size
        with timer("post-processing"):
            keep_all = []
            inside_all = []
            for k, pts in enumerate(pts_list):
                p = _points_to_level0(pts, boxes[k], T)
                p = p[_in_core(p, cores[k])]
                p, ins = self._border.split(p, inside_fn(k, p) if inside_fn is not None else None, cores[k])
                keep_all.append(p)
                inside_all.append(ins)
            p = np.concatenate(keep_all) if keep_all else np.zeros((0, 4))
            inside = None if inside_fn is None else np.concatenate(inside_all) if inside_all else np.zeros(0, bool)
        self._write_points(p, inside, gj, store, acc, timer)

    def _write_points(self, p: np.ndarray, inside: np.ndarray | None, gj, store, acc: _Accumulator, timer: _Timer) -> None:
        with timer("post-processing"):
            acc.add(p, inside)
        if len(p):
            with timer("write"):
                gj.write(p[:, 0], p[:, 1], p[:, 2].astype(np.uint8), np.clip(p[:, 3], 0.0, 1.0))
                store.append_cells(p[:, 0].astype(np.float32), p[:, 1].astype(np.float32), p[:, 2].astype(np.uint8), p[:, 3].astype(np.float32))

    def _flush_border(self, gj, store, acc: _Accumulator, timer: _Timer) -> None:
        with timer("post-processing"):
            p, inside, dropped = self._border.resolve()
        if dropped:
            log.info("%d cell(s) seen by two neighbouring tiles on their shared border reported once", dropped)
        self._write_points(p, inside, gj, store, acc, timer)

    def _cell_pass(self, slide: Slide, plan, store, tmap: _TissueMap, gj, acc: _Accumulator, timer: _Timer) -> None:
        grid = plan.cells
        T, f = self.geometry.tile_size, self.geometry.context_factor
        n_crop = max(1, round(T / f))
        bar = _progress(len(grid), "cell pass", self.config.progress)
        for batch in _timed_batches(self._loader(slide, grid.boxes), timer):
            idx = batch["index"].numpy()
            boxes = grid.boxes[idx]
            crop = None
            inside_fn = None
            if self.has_tissue:
                with timer("read"):
                    crop, raw, regions = _crops_from_map(store, tmap, boxes, n_crop)

                def inside_fn(k, p, raw=raw, regions=regions):
                    if not len(p):
                        return np.zeros(0, bool)
                    c = np.clip(np.floor(p[:, 0] / tmap.scale).astype(int) - regions[k][0], 0, raw[k].shape[1] - 1)
                    r = np.clip(np.floor(p[:, 1] / tmap.scale).astype(int) - regions[k][1], 0, raw[k].shape[0] - 1)
                    return raw[k][r, c] >= 128
            with timer("cell pass"):
                probs = with_oom_retry(self.predictor.cell_probs, batch["cell"], crop)
            with timer("post-processing"):
                pts = find_peaks(probs, self.peaks, core=_cores_in_tile_px(boxes, grid.cores[idx], T))
            self._emit(pts, boxes, grid.cores[idx], inside_fn, gj, store, acc, timer)
            bar.update(len(idx))
        bar.close()

    def _per_tile_pass(self, slide: Slide, plan, store, tmap: _TissueMap, gj, acc: _Accumulator, timer: _Timer) -> int:
        """The paper's path: every cell tile with its own context. The tissue map is
        filled from each context's prediction over the tile's core."""
        grid = plan.cells
        ca = 0
        bar = _progress(len(grid), "per-tile pass", self.config.progress)
        for batch in _timed_batches(self._loader(slide, grid.boxes, plan.contexts), timer):
            idx = batch["index"].numpy()
            boxes, cores, ctx = grid.boxes[idx], grid.cores[idx], plan.contexts[idx]
            with timer("cell pass"):
                cell_probs, tissue_probs = with_oom_retry(self.predictor.per_tile, batch["cell"], batch["context"], batch["offset"])
            with timer("post-processing"):
                pts = find_peaks(cell_probs, self.peaks, core=_cores_in_tile_px(boxes, cores, self.geometry.tile_size))
            inside_fn = None
            if tissue_probs is not None:
                ca_probs = tissue_probs[:, 1].float().cpu()
                blocks = []
                with timer("write"):
                    for k in range(len(idx)):
                        # this tile's core in the map, sampled from its own context's prediction
                        placed = _core_block(ca_probs[k], ctx[k], cores[k], tmap)
                        blocks.append(placed)
                        if placed is not None:
                            mx0, my0, block = placed
                            store.write_tissue_block(my0, mx0, block)
                            ca += int((block >= 128).sum())

                def inside_fn(k, p, blocks=blocks):
                    if not len(p) or blocks[k] is None:
                        return np.zeros(len(p), bool)
                    bx, by, blk = blocks[k]
                    c = np.clip(np.floor(p[:, 0] / tmap.scale).astype(int) - bx, 0, blk.shape[1] - 1)
                    r = np.clip(np.floor(p[:, 1] / tmap.scale).astype(int) - by, 0, blk.shape[0] - 1)
                    return blk[r, c] >= 128
            self._emit(pts, boxes, cores, inside_fn, gj, store, acc, timer)
            bar.update(len(idx))
        bar.close()
        return ca

    def _coarse_map(self, store, tmap: _TissueMap, max_side: int = 4096) -> tuple[np.ndarray, int]:
        """The tissue map block-averaged to at most ``max_side`` px (read block by block)."""
        k = max(1, math.ceil(max(tmap.height, tmap.width) / max_side))
        hh, ww = math.ceil(tmap.height / k), math.ceil(tmap.width / k)
        out = np.zeros((hh, ww), np.float32)
        step = max(k, (2048 // k) * k)
        for y0 in range(0, tmap.height, step):
            for x0 in range(0, tmap.width, step):
                y1, x1 = min(y0 + step, tmap.height), min(x0 + step, tmap.width)
                blk = store.read_tissue(y0, y1, x0, x1).astype(np.float32) / 255.0
                ph, pw = (-blk.shape[0]) % k, (-blk.shape[1]) % k
                if ph or pw:
                    blk = np.pad(blk, ((0, ph), (0, pw)), mode="edge")
                red = blk.reshape(blk.shape[0] // k, k, blk.shape[1] // k, k).mean(axis=(1, 3))
                out[y0 // k:y0 // k + red.shape[0], x0 // k:x0 // k + red.shape[1]] = red
        return out, k

    def _purity_dict(self, slide: Slide, acc: _Accumulator, tissue_mm2: float, ca_mm2: float | None, n_cells: int, plan, mode: str) -> dict[str, Any]:
        purity = _ratio(acc.n_tc, acc.n_bc)
        if purity is None:
            reason = "no tissue found on the slide" if plan.mask.fraction == 0 or len(plan.cells) == 0 else "no cells detected"
        else:
            reason = None
        if not self.has_tissue:
            p_ca, ca_reason = None, "the model has no tissue branch"
        elif not ca_mm2:
            p_ca, ca_reason = None, "no cancer area found"
        else:
            p_ca = _ratio(acc.n_tc_ca, acc.n_bc_ca)
            ca_reason = None if p_ca is not None else "no cells inside the cancer area"
        return {
            "slide": str(slide.path),
            "n_cells": n_cells,
            "n_tc": acc.n_tc,
            "n_bc": acc.n_bc,
            "purity": purity,
            "purity_reason": reason,
            "n_tc_in_cancer_area": acc.n_tc_ca if self.has_tissue else None,
            "n_bc_in_cancer_area": acc.n_bc_ca if self.has_tissue else None,
            "purity_in_cancer_area": p_ca,
            "purity_in_cancer_area_reason": ca_reason,
            "tissue_area_mm2": round(tissue_mm2, 6),
            "cancer_area_mm2": None if ca_mm2 is None else round(ca_mm2, 6),
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_info.source,
            "model": {"path": self.model_path, "variant": self.info.model.variant, "encoder": self.info.model.encoder},
            "mode": mode,
            "device": str(self.device),
            "n_cell_tiles": len(plan.cells),
            "n_tissue_tiles": len(plan.tissue) if self.two_pass and self.has_tissue else 0,
        }


def run_slide(slide_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], model_path: str | os.PathLike[str],
              config: EngineConfig = EngineConfig(), *, mpp: float | None = None) -> SlideResult:
    """Load ``model_path`` and run one slide (convenience for a single slide)."""
    return SlideRunner(model_path, config).run(slide_path, out_dir, mpp=mpp)
