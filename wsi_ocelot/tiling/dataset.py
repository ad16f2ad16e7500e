"""Torch datasets of aligned tiles read from one slide.

Each item reads its boxes in the worker process that asks for it (the :class:`Slide`
re-opens its handle once per process), so tile reading and decoding run beside the
model, never in front of it.

:class:`TileDataset` reads every tile (and its context) on its own: the paper's per-tile
path. :class:`BlockBatches` serves whole batches of neighbouring tiles, each batch cut
from one region read over the tiles' union (:meth:`Slide.read_boxes`), so the overlap
between tiles is decoded once: the engine's two-pass path.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from wsi_ocelot.slide import Slide

log = logging.getLogger(__name__)


class TileDataset(Dataset):
    """Items ``{"cell": (3, T, T) uint8, "context": (3, T, T) uint8, "offset": (2,)
    float32, "box": (4,) int64 level-0 x, y, w, h of the cell tile, "index": int}``.

    ``cell_boxes`` (N, 4) are level-0 boxes resized to ``tile_size``; ``context_boxes``
    (N, 4) (optional) likewise, with ``offsets`` (N, 2) the cell centre's relative
    position in its context. Without context boxes only ``cell`` is returned (the
    tissue pass uses this with its own boxes)."""

    def __init__(
        self,
        slide: Slide,
        cell_boxes: np.ndarray,
        tile_size: int,
        context_boxes: np.ndarray | None = None,
        offsets: np.ndarray | None = None,
    ):
        self.slide = slide
        self.cell_boxes = np.asarray(cell_boxes, dtype=np.int64).reshape(-1, 4)
        self.tile_size = int(tile_size)
        self.context_boxes = None if context_boxes is None else np.asarray(context_boxes, dtype=np.int64).reshape(-1, 4)
        if self.context_boxes is not None and len(self.context_boxes) != len(self.cell_boxes):
            raise ValueError("cell_boxes and context_boxes differ in length")
        n = len(self.cell_boxes)
        self.offsets = np.full((n, 2), 0.5, np.float32) if offsets is None else np.asarray(offsets, np.float32).reshape(n, 2)

    def __len__(self) -> int:
        return len(self.cell_boxes)

    def _read(self, box: np.ndarray) -> torch.Tensor:
        img = self.slide.read_box(tuple(int(v) for v in box), (self.tile_size, self.tile_size))
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"cell": self._read(self.cell_boxes[i]), "box": torch.from_numpy(self.cell_boxes[i].copy()), "index": i}
        if self.context_boxes is not None:
            item["context"] = self._read(self.context_boxes[i])
            item["offset"] = torch.from_numpy(self.offsets[i].copy())
        return item


def block_shape(batch_size: int) -> tuple[int, int]:
    """Rows × columns of a block of ``batch_size`` grid tiles, as square as the size allows
    (8 → 2 × 4, 16 → 4 × 4, 32 → 4 × 8)."""
    b = max(1, int(batch_size))
    rows = max(d for d in range(1, int(b ** 0.5) + 1) if b % d == 0)
    return rows, b // rows


def block_ids(rows: np.ndarray, cols: np.ndarray, batch_size: int) -> np.ndarray:
    """The block (of :func:`block_shape` tiles for ``batch_size``) each grid tile lies in, as
    one int64 per tile: tiles with the same id are neighbours read together."""
    br, bc = block_shape(batch_size)
    return (np.asarray(rows, np.int64) // br) * (1 << 32) + np.asarray(cols, np.int64) // bc


def plan_batches(rows: np.ndarray, cols: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Group grid tiles (their row and column indices) into batches of at most
    ``batch_size`` neighbouring tiles: the grid is cut into blocks of :func:`block_shape`
    tiles, taken row by row, each block's tiles in raster order. A full block is one batch;
    blocks cut short by the tissue's edge are packed whole into batches while they fit, so
    a block is never split between two batches. Returns index arrays into the grid."""
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    if not len(rows):
        return []
    br, bc = block_shape(batch_size)
    order = np.lexsort((cols, rows, cols // bc, rows // br))
    block = block_ids(rows, cols, batch_size)[order]
    starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
    bounds = np.r_[starts, len(order)]
    batches: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    n = 0
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if n + (b - a) > batch_size and cur:
            batches.append(np.concatenate(cur))
            cur, n = [], 0
        cur.append(order[a:b])
        n += b - a
    if cur:
        batches.append(np.concatenate(cur))
    return batches


class BlockBatches(Dataset):
    """Items are whole batches ``{"cell": (n, 3, T, T) uint8, "index": (n,) int64}`` of the
    tiles ``batches[i]`` (indices into ``boxes``), read block by block: the tiles of a batch
    that lie in one block of :func:`block_shape` are cut from one region read over their
    union. Use with ``batch_size=None`` in the loader (see :func:`make_loader`)."""

    def __init__(self, slide: Slide, boxes: np.ndarray, rows: np.ndarray, cols: np.ndarray, tile_size: int, batch_size: int):
        self.slide = slide
        self.boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        self.rows, self.cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        self.tile_size = int(tile_size)
        self.batch_size = int(batch_size)
        self.batches = plan_batches(self.rows, self.cols, batch_size)

    def blocks(self, idx: np.ndarray) -> np.ndarray:
        """The block id (:func:`block_ids`) of the tiles ``idx``."""
        return block_ids(self.rows[idx], self.cols[idx], self.batch_size)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        idx = self.batches[i]
        T = self.tile_size
        out = np.empty((len(idx), T, T, 3), np.uint8)
        block_id = self.blocks(idx)
        for b in np.unique(block_id):
            sel = np.flatnonzero(block_id == b)
            out[sel] = self.slide.read_boxes(self.boxes[idx[sel]], (T, T))
        cell = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return {"cell": cell, "index": torch.from_numpy(idx.copy())}


def default_workers() -> int:
    """Tile-reading processes for this machine: the cores this process may use, less one
    for the main process, at most 16 (reading a 1024² tile costs a few core-ms, so 16
    readers feed a fast GPU; ``benchmarks/results/host.md``), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores - 1))


def _worker_init(_: int) -> None:
    # One thread per worker: the workers are many, and torch/OpenCV would otherwise
    # oversubscribe the cores.
    torch.set_num_threads(1)


def make_loader(
    dataset: Dataset,
    batch_size: int = 8,
    workers: int = 2,
    prefetch: int = 2,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader that reads tiles in ``workers`` processes (0 = in this process), in
    order, with ``prefetch`` batches per worker and optional pinned memory. A
    :class:`BlockBatches` dataset makes its own batches (``batch_size`` is ignored)."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch, persistent_workers=False, worker_init_fn=_worker_init)
    if isinstance(dataset, BlockBatches):
        batch_size = None  # type: ignore[assignment]
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, **kwargs)
