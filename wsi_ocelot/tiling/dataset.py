"""Torch datasets of aligned tiles read from one slide.

Each item reads its boxes in the worker process that asks for it (the :class:`Slide`
re-opens its handle once per process), so tile reading and decoding run beside the
model, never in front of it.

:class:`TileDataset` reads every tile (and its context) on its own: the paper's per-tile
path. :class:`BlockBatches` serves whole batches of neighbouring tiles, each batch cut
from one region read over the tiles' union (:meth:`Slide.read_boxes`), so the overlap
between tiles is decoded once: the engine's two-pass path.

A tile the slide will not give (a corrupt stored tile: OpenSlide raises) is read once more,
then delivered white and flagged: items carry ``unreadable`` (bool per tile) and ``errors``
(the reason, "" for good tiles), and the engine drops its detections. A reader process that
dies (a codec that crashes) is replaced by :func:`read_batches`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torch.utils.data._utils import signal_handling as _torch_signals

from wsi_ocelot.errors import SlideFormatError
from wsi_ocelot.slide import Slide

log = logging.getLogger(__name__)

#: Reader processes that may die during one pass before the slide fails.
MAX_READER_DEATHS = 8

# A reader process that dies must surface where the engine asks for the next batch (where
# read_batches replaces it), not as an exception raised from torch's SIGCHLD handler at any
# point of the main thread. Marking the handler as installed keeps torch from installing it;
# the DataLoader then reports a dead reader from its next() (it polls its readers' health).
_torch_signals._SIGCHLD_handler_set = True


def read_tile(slide: Slide, box: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """The level-0 ``box`` read at ``size`` (``(h, w, 3)`` uint8) and "" or, when the slide
    fails to give it twice in a row, a white tile and the reason."""
    b = tuple(int(v) for v in box)
    for attempt in (1, 2):
        try:
            return slide.read_box(b, size), ""
        except SlideFormatError as err:
            if attempt == 2:
                return np.full((int(size[1]), int(size[0]), 3), 255, np.uint8), err.problem
            log.debug("%s: reading box %s failed (%s); retrying once", slide.path, b, err.problem)
    raise AssertionError("unreachable")  # pragma: no cover


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
        self.context_boxes = (
            None
            if context_boxes is None
            else np.asarray(context_boxes, dtype=np.int64).reshape(-1, 4)
        )
        if self.context_boxes is not None and len(self.context_boxes) != len(self.cell_boxes):
            raise ValueError("cell_boxes and context_boxes differ in length")
        n = len(self.cell_boxes)
        self.offsets = (
            np.full((n, 2), 0.5, np.float32)
            if offsets is None
            else np.asarray(offsets, np.float32).reshape(n, 2)
        )

    def __len__(self) -> int:
        return len(self.cell_boxes)

    def _read(self, box: np.ndarray) -> tuple[torch.Tensor, str]:
        img, err = read_tile(self.slide, box, (self.tile_size, self.tile_size))
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), err

    def __getitem__(self, i: int) -> dict[str, Any]:
        cell, err = self._read(self.cell_boxes[i])
        item: dict[str, Any] = {
            "cell": cell,
            "box": torch.from_numpy(self.cell_boxes[i].copy()),
            "index": i,
        }
        if self.context_boxes is not None:
            item["context"], ctx_err = self._read(self.context_boxes[i])
            item["offset"] = torch.from_numpy(self.offsets[i].copy())
            err = err or (f"its context: {ctx_err}" if ctx_err else "")
        item["unreadable"], item["errors"] = bool(err), err
        return item

    def lost_batch(self, items: range, reason: str) -> dict[str, Any]:
        """A batch of the tiles ``items``, white and flagged unreadable with ``reason`` (their
        reader died on them)."""
        T = self.tile_size
        white = torch.full((3, T, T), 255, dtype=torch.uint8)
        lost = []
        for i in items:
            item: dict[str, Any] = {
                "cell": white,
                "box": torch.from_numpy(self.cell_boxes[i].copy()),
                "index": i,
                "unreadable": True,
                "errors": reason,
            }
            if self.context_boxes is not None:
                item["context"], item["offset"] = white, torch.from_numpy(self.offsets[i].copy())
            lost.append(item)
        return default_collate(lost)


def block_shape(batch_size: int) -> tuple[int, int]:
    """Rows × columns of a block of ``batch_size`` grid tiles, as square as the size allows
    (8 → 2 × 4, 16 → 4 × 4, 32 → 4 × 8)."""
    b = max(1, int(batch_size))
    rows = max(d for d in range(1, int(b**0.5) + 1) if b % d == 0)
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
    """Items are whole batches ``{"cell": (n, 3, T, T) uint8, "index": (n,) int64,
    "unreadable": (n,) bool, "errors": n strings}`` of the tiles ``batches[i]`` (indices into
    ``boxes``), read block by block: the tiles of a batch that lie in one block of
    :func:`block_shape` are cut from one region read over their union. A block that fails is
    read again tile by tile (:func:`read_tile`), so a corrupt stored tile costs only the tiles
    over it. Use with ``batch_size=None`` in the loader (see :func:`make_loader`)."""

    def __init__(
        self,
        slide: Slide,
        boxes: np.ndarray,
        rows: np.ndarray,
        cols: np.ndarray,
        tile_size: int,
        batch_size: int,
    ):
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
        errors = [""] * len(idx)
        block_id = self.blocks(idx)
        for b in np.unique(block_id):
            sel = np.flatnonzero(block_id == b)
            try:
                out[sel] = self.slide.read_boxes(self.boxes[idx[sel]], (T, T))
            except (
                SlideFormatError
            ):  # a bad stored tile somewhere in the block: find which tiles it costs
                for k in sel:
                    out[k], errors[k] = read_tile(self.slide, self.boxes[idx[k]], (T, T))
        cell = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
        return {
            "cell": cell,
            "index": torch.from_numpy(idx.copy()),
            "unreadable": torch.tensor([bool(e) for e in errors], dtype=torch.bool),
            "errors": errors,
        }

    def lost_batch(self, items: range, reason: str) -> dict[str, Any]:
        """The batch ``items[0]``, white and flagged unreadable with ``reason`` (its reader died on it)."""
        idx = self.batches[items[0]]
        T = self.tile_size
        return {
            "cell": torch.full((len(idx), 3, T, T), 255, dtype=torch.uint8),
            "index": torch.from_numpy(idx.copy()),
            "unreadable": torch.ones(len(idx), dtype=torch.bool),
            "errors": [reason] * len(idx),
        }


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
        kwargs.update(
            prefetch_factor=prefetch, persistent_workers=False, worker_init_fn=_worker_init
        )
    if isinstance(dataset.dataset if isinstance(dataset, Subset) else dataset, BlockBatches):
        batch_size = None  # type: ignore[assignment]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        **kwargs,
    )


def _reader_died(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and "DataLoader worker" in str(err)


def read_batches(
    dataset: TileDataset | BlockBatches,
    loader: Callable[[Dataset, int | None], DataLoader],
    *,
    batch_items: int = 1,
    max_deaths: int = MAX_READER_DEATHS,
) -> Iterator[dict[str, Any]]:
    """The batches of ``loader(dataset, None)`` in order, surviving reader processes that die.

    When a reader dies (a codec crash), a fresh loader (``loader(view, workers)``; ``workers``
    None = as configured) takes over from the first batch not yet delivered. If readers die
    twice with no batch delivered in between, that batch (``batch_items`` dataset items; 1 for
    :class:`BlockBatches`) is read alone in one new process; if its reader dies too, its tiles
    are delivered white and flagged unreadable (``lost_batch``) and reading goes on after it.
    After ``max_deaths`` deaths in one pass the slide fails (:class:`SlideFormatError`)."""
    n = len(dataset)
    start = deaths = stuck = 0
    while start < n:
        isolate = stuck >= 2
        stop = min(n, start + max(1, batch_items)) if isolate else n
        view: Dataset = dataset if (start, stop) == (0, n) else Subset(dataset, range(start, stop))
        it = iter(loader(view, 1 if isolate else None))
        died: RuntimeError | None = None
        while True:
            try:
                batch = next(it)
            except StopIteration:
                break
            except RuntimeError as err:
                if not _reader_died(err):
                    raise
                died = err
                break
            start += 1 if isinstance(dataset, BlockBatches) else len(batch["index"])
            stuck = 0
            yield batch
        del it  # shuts down what is left of that loader's processes
        if died is None:
            if not isolate and start < n:  # pragma: no cover - a loader always delivers its view
                raise RuntimeError(f"the tile loader ended after {start} of {n} items")
            continue
        deaths += 1
        first = str(died).splitlines()[0]
        if deaths > max_deaths:
            raise SlideFormatError(
                dataset.slide.path,
                f"tile-reading processes died {deaths} times while reading it ({first})",
                "check that the slide opens in a viewer; re-export or re-scan it",
            ) from died
        if isolate:  # this batch kills every reader that touches it
            log.warning(
                "%s: items %d-%d of this pass killed their reader process twice (%s); their tiles count as unreadable",
                dataset.slide.path,
                start,
                stop - 1,
                first,
            )
            yield dataset.lost_batch(range(start, stop), f"its reader process died ({first})")
            start, stuck = stop, 0
        else:
            log.warning(
                "%s: a tile-reading process died (%s); a new one goes on from item %d of this pass",
                dataset.slide.path,
                first,
                start,
            )
            stuck += 1
