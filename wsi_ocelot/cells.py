"""The cells the engine finds, as one typed batch: :class:`CellBatch` (docs/architecture.md).

Every producer and consumer of detections (the engine's sinks, the output writers, purity)
speaks of the same four named columns: ``x, y`` (OpenSlide level-0 px), ``cls`` (1 = BC
background cell, 2 = TC tumour cell) and ``prob`` (the class probability at the peak), with
an optional ``in_cancer_area`` flag per cell. The class rule is checked once, when a batch is
built. The anonymous ``(N, 4)`` layout ``x, y, cls, prob`` that peak finding and the border
buffer work in converts both ways (:meth:`CellBatch.from_array`, :meth:`CellBatch.to_array`).
Light: numpy only, importable from every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsi_ocelot.constants import CANCER_AREA_THRESHOLD, CANCER_AREA_UINT8, CELL_CLASS_IDS
from wsi_ocelot.errors import CellClassError

__all__ = ["CellBatch", "cancer_area", "check_cell_classes"]


def check_cell_classes(cls: ArrayLike) -> NDArray[np.uint8]:
    """``cls`` (any numeric dtype) as uint8, after checking every value is exactly 1 (BC) or 2
    (TC); :class:`~wsi_ocelot.errors.CellClassError` (a ``ValueError``) otherwise."""
    c = np.asarray(cls).reshape(-1)
    if c.size and not np.isin(c, CELL_CLASS_IDS).all():
        raise CellClassError(
            None,
            f"cell classes must be 1 (BC) or 2 (TC), got {np.unique(c)[:10].tolist()}",
            "give each cell class 1 (background cell) or 2 (tumour cell)",
        )
    return c.astype(np.uint8)


def cancer_area(values: ArrayLike) -> NDArray[np.bool_]:
    """Whether tissue-map values are cancer area: uint8 maps (``round(probability × 255)``)
    from 128 on, probabilities from 0.5 on (the one rule; polygons and purity follow it)."""
    v = np.asarray(values)
    return v >= (CANCER_AREA_UINT8 if v.dtype == np.uint8 else CANCER_AREA_THRESHOLD)


@dataclass(frozen=True)
class CellBatch:
    """A batch of cells as 1-D columns of one length (N,) (any array-like when built; stored
    with these dtypes).

    ``x, y``: float64 level-0 px; ``cls``: uint8, 1 or 2 (checked when built); ``prob``:
    float64; ``in_cancer_area``: a bool per cell, or None where no cancer area is known."""

    x: NDArray[Any]
    y: NDArray[Any]
    cls: NDArray[Any]
    prob: NDArray[Any]
    in_cancer_area: NDArray[Any] | None = None

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64).reshape(-1)
        y = np.asarray(self.y, dtype=np.float64).reshape(-1)
        prob = np.asarray(self.prob, dtype=np.float64).reshape(-1)
        cls = check_cell_classes(self.cls)
        inside = (
            None
            if self.in_cancer_area is None
            else np.asarray(self.in_cancer_area, dtype=bool).reshape(-1)
        )
        sizes = [a.size for a in (x, y, cls, prob, *(() if inside is None else (inside,)))]
        if len(set(sizes)) > 1:
            raise ValueError(
                f"x, y, cls, prob (and in_cancer_area) must have one length, got {sizes}"
            )
        for name, value in (("x", x), ("y", y), ("cls", cls), ("prob", prob)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "in_cancer_area", inside)

    def __len__(self) -> int:
        return int(self.x.size)

    @classmethod
    def from_array(cls, points: ArrayLike, in_cancer_area: ArrayLike | None = None) -> CellBatch:
        """From the ``(N, 4)`` layout ``x, y, class, prob`` (level-0 px)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 4)
        inside = None if in_cancer_area is None else np.asarray(in_cancer_area, dtype=bool)
        return cls(p[:, 0], p[:, 1], p[:, 2], p[:, 3], inside)

    def to_array(self) -> NDArray[np.float64]:
        """The ``(N, 4)`` float64 layout ``x, y, class, prob``."""
        return np.stack([self.x, self.y, self.cls.astype(np.float64), self.prob], axis=1)
