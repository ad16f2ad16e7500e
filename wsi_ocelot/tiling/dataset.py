"""A torch ``Dataset`` of aligned tiles read from one slide.

Each item reads its boxes in the worker process that asks for it (the :class:`Slide`
re-opens its handle once per process), so tile reading and decoding run beside the
model, never in front of it.
"""

from __future__ import annotations

import logging
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
    order, with ``prefetch`` batches per worker and optional pinned memory."""
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(prefetch_factor=prefetch, persistent_workers=False, worker_init_fn=_worker_init)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory, **kwargs)
