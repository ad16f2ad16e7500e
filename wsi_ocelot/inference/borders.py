"""Where a tile's detections go on the slide, and cells seen by two tiles reported once.

Each cell tile owns its core (``tiling/grid.py``); peaks are kept in the tile's own core
and converted to level-0 px. A cell on a shared core border can be placed on its own side
by both tiles: such detections (within ``radius`` of a core border) wait in a
:class:`BorderBuffer` until the tiles around theirs are done, and of two from different tiles
closer than the radius the weaker is dropped.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

__all__ = ["BorderBuffer", "cores_in_tile_px", "in_core", "points_to_level0", "reach_cores"]


def points_to_level0(pts: np.ndarray | torch.Tensor, box: np.ndarray, tile: int) -> np.ndarray:
    """Peaks (N, 4) in tile px (pixel j covers [j, j + 1)) → (N, 4) level-0 x, y, cls, prob."""
    if isinstance(pts, torch.Tensor):
        pts = pts.detach().cpu().numpy()
    p = np.array(pts, dtype=np.float64, copy=True).reshape(-1, 4)
    if not len(p):
        return np.zeros((0, 4))
    sx, sy = box[2] / tile, box[3] / tile
    p[:, 0] = box[0] + (p[:, 0] + 0.5) * sx
    p[:, 1] = box[1] + (p[:, 1] + 0.5) * sy
    return p


def cores_in_tile_px(
    boxes: np.ndarray, cores: np.ndarray, tile: int
) -> tuple[float, float, float, float]:
    """The union over a batch of each tile's core in its own tile px (pixel j has its centre at
    ``box + (j + 0.5) * box / tile``), one px wider on each side. Peaks are searched there
    only; the exact level-0 core test follows in :func:`in_core`."""
    sx, sy = boxes[:, 2] / tile, boxes[:, 3] / tile
    x0 = ((cores[:, 0] - boxes[:, 0]) / sx - 0.5).min()
    y0 = ((cores[:, 1] - boxes[:, 1]) / sy - 0.5).min()
    x1 = ((cores[:, 2] - boxes[:, 0]) / sx - 0.5).max()
    y1 = ((cores[:, 3] - boxes[:, 1]) / sy - 0.5).max()
    return (math.floor(x0) - 1.0, math.floor(y0) - 1.0, math.ceil(x1) + 1.0, math.ceil(y1) + 1.0)


def in_core(p: np.ndarray, core: np.ndarray) -> np.ndarray:
    """Whether level-0 points (N, >= 2) lie in the half-open box ``core`` (x0, y0, x1, y1)."""
    return (p[:, 0] >= core[0]) & (p[:, 0] < core[2]) & (p[:, 1] >= core[1]) & (p[:, 1] < core[3])


def reach_cores(cores: np.ndarray, reach: float, width: int, height: int) -> np.ndarray:
    """Cores (N, 4) widened by ``reach`` level-0 px on each side that borders another core
    (not on the slide's edge): where a tile keeps its detections.

    Two tiles place a cell on their shared core border from different pixels; measured on
    the demo model, each tends to put it a fraction of a pixel on the *other* tile's side,
    so with strict cores up to half the cells within 2 px of a border were reported by
    neither tile (``benchmarks/results/host.md``). Kept up to ``reach`` beyond the core,
    such a cell is reported by both, and :class:`BorderBuffer` keeps the stronger."""
    out = np.asarray(cores, dtype=np.float64).copy().reshape(-1, 4)
    if reach > 0:
        out[:, 0] -= np.where(out[:, 0] > 0, reach, 0.0)
        out[:, 1] -= np.where(out[:, 1] > 0, reach, 0.0)
        out[:, 2] += np.where(out[:, 2] < width, reach, 0.0)
        out[:, 3] += np.where(out[:, 3] < height, reach, 0.0)
    return out


class BorderBuffer:
    """Detections near a tile-core border, held back until every tile that could see them too
    is done.

    Neighbouring tiles see a cell on their shared core border with the same pixels but place
    its peak independently, and each keeps it up to ``reach`` beyond its own core: both may
    report it. Such a pair is closer than ``radius``; one point lies at most ``reach`` beyond
    the border, so neither lies more than ``reach + radius`` inside its core. Only points
    that close to a border (or beyond it) are held (a few % of the cells, about 50 bytes
    each). Of two points from different tiles closer than ``radius`` the weaker is dropped,
    strongest first (higher probability; of equal ones the earlier tile's): a point is kept
    unless a stronger partner is kept.

    A held point can pair only with points of the tiles around its own (grid rows ``r - 1 ..
    r + 1``). :meth:`release` (called as the pass finishes grid rows) decides every point
    whose partners are all known and whose stronger partners are decided, and hands the kept
    ones back; decided points stay while a point still open may need them. So the buffer
    holds a few rows of tiles' border points, not the slide's, and the outcome is the same as
    deciding everything at the end (:meth:`resolve`).
    """

    def __init__(self, radius: float, reach: float = 0.0):
        self.radius = float(radius)
        self.hold = float(radius) + max(0.0, float(reach))
        self.points: list[np.ndarray] = []
        self.inside: list[np.ndarray] = []
        self.tile: list[np.ndarray] = []
        self.row: list[np.ndarray] = []
        self.state: list[
            np.ndarray
        ] = []  # _OPEN, or decided: _KEPT (already handed back) / _DROPPED
        self._next = 0

    def __len__(self) -> int:
        return sum(len(p) for p in self.points)

    def split(
        self, p: np.ndarray, inside: np.ndarray | None, core: np.ndarray, row: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Keep the points near ``core``'s border (and any beyond it) of a tile in grid row
        ``row``; return the others (to be written now)."""
        tid, self._next = self._next, self._next + 1
        if not len(p) or self.radius <= 0:
            return p, inside
        d = np.minimum.reduce(
            [p[:, 0] - core[0], core[2] - p[:, 0], p[:, 1] - core[1], core[3] - p[:, 1]]
        )
        near = d < self.hold
        if near.any():
            n = int(near.sum())
            self.points.append(p[near])
            self.inside.append(inside[near] if inside is not None else np.zeros(n, bool))
            self.tile.append(np.full(n, tid))
            self.row.append(np.full(n, row, np.int64))
            self.state.append(np.full(n, _OPEN, np.int8))
        return p[~near], (inside[~near] if inside is not None else None)

    def release(self, done_row: float) -> tuple[np.ndarray, np.ndarray, int]:
        """Given that every tile of grid rows ``<= done_row`` is done, decide what can be
        decided; return the points kept now, their cancer-area flags and how many were dropped."""
        if not self.points:
            return np.zeros((0, 4)), np.zeros(0, bool), 0
        p, inside = np.concatenate(self.points), np.concatenate(self.inside)
        tile, row, state = (
            np.concatenate(self.tile),
            np.concatenate(self.row),
            np.concatenate(self.state),
        )
        was_open = state == _OPEN
        known = was_open & (row + 1 <= done_row)  # every tile it could pair with is done
        if not known.any():
            self._keep(p, inside, tile, row, state, np.ones(len(p), bool))
            return np.zeros((0, 4)), np.zeros(0, bool), 0
        pairs = cKDTree(p[:, :2]).query_pairs(self.radius, output_type="ndarray")
        pairs = pairs[tile[pairs[:, 0]] != tile[pairs[:, 1]]]
        # held in tile order, so the lower index is the earlier tile: it wins a tie
        a, b = (
            (pairs[:, 0], pairs[:, 1])
            if len(pairs)
            else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        )
        a_wins = (p[a, 3] > p[b, 3]) | ((p[a, 3] == p[b, 3]) & (a < b))
        strong, weak = np.where(a_wins, a, b), np.where(a_wins, b, a)
        has_stronger = np.zeros(len(p), bool)
        has_stronger[weak] = True
        state[known & ~has_stronger] = _KEPT  # no stronger partner: kept
        todo = np.flatnonzero(known & has_stronger)
        if len(todo):
            by_weak = np.argsort(weak, kind="stable")
            starts = np.searchsorted(weak[by_weak], np.arange(len(p) + 1))
            order = todo[np.lexsort((todo, -p[todo, 3]))]  # strongest first
            for w in order.tolist():
                partners = strong[by_weak[starts[w] : starts[w + 1]]]
                s = state[partners]
                if (s == _OPEN).any():
                    continue  # a stronger partner still open: decide later
                state[w] = _DROPPED if (s == _KEPT).any() else _KEPT
        now_kept = was_open & (state == _KEPT)
        dropped = int((was_open & (state == _DROPPED)).sum())
        # a decided point stays while a point still open may pair with it
        needed = state == _OPEN
        if len(pairs):
            needed[a[state[b] == _OPEN]] = True
            needed[b[state[a] == _OPEN]] = True
        needed |= row + 2 > done_row
        self._keep(p, inside, tile, row, state, needed)
        return p[now_kept], inside[now_kept], dropped

    def _keep(
        self,
        p: np.ndarray,
        inside: np.ndarray,
        tile: np.ndarray,
        row: np.ndarray,
        state: np.ndarray,
        keep: np.ndarray,
    ) -> None:
        if keep.all():
            self.points, self.inside, self.tile, self.row, self.state = (
                [p],
                [inside],
                [tile],
                [row],
                [state],
            )
        else:
            self.points, self.inside, self.tile, self.row, self.state = (
                [p[keep]],
                [inside[keep]],
                [tile[keep]],
                [row[keep]],
                [state[keep]],
            )
        if not len(self.points[0]):
            self.points, self.inside, self.tile, self.row, self.state = [], [], [], [], []

    def resolve(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Every point still held, without cross-tile duplicates, their cancer-area flags, and how many were dropped."""
        out = self.release(math.inf)
        if any(
            (s == _OPEN).any() for s in self.state
        ):  # pragma: no cover - everything is known at the end
            raise RuntimeError("border buffer: points left undecided")
        self.points, self.inside, self.tile, self.row, self.state = [], [], [], [], []
        return out


_OPEN, _KEPT, _DROPPED = 0, 1, 2
