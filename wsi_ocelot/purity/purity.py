"""Tumour purity: the one place it is computed (docs/architecture.md).

Purity is the tumour-cell fraction ``TC / (TC + BC)``, over the whole slide and over the cells
inside the predicted cancer area (CA). :class:`PurityCounter` counts it streaming, batch by
batch, with the per-square counts of the heat map (the slide engine feeds it as cells are
found; nothing per cell is kept); :func:`compute_purity` and :func:`purity_grid` run it over a
whole cell table. Cell tables are 1-D columns ``x, y`` (OpenSlide level-0 px, float), ``cls``
(1 = BC background cell, 2 = TC tumour cell). No I/O.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.cells import CellBatch, check_cell_classes
from wsi_ocelot.constants import CANCER_AREA_THRESHOLD, CELL_CLASS_IDS, TC

log = logging.getLogger(__name__)

__all__ = [
    "PurityCounter",
    "PurityResult",
    "compute_purity",
    "inside_geometry",
    "inside_map",
    "purity_grid",
]

UM2_PER_MM2 = 1e6


@dataclass(frozen=True)
class PurityResult:
    """Counts and purity of one slide (``to_dict()`` is the body of ``purity.json``).

    ``purity`` / ``purity_in_cancer_area`` are ``None`` when undefined, with the reason in
    ``purity_reason`` / ``purity_in_cancer_area_reason``. Areas are in mm²; ``mpp`` is the
    slide's level-0 µm per pixel the areas were computed with.
    """

    n_cells: int
    n_tc: int
    n_bc: int
    purity: float | None
    purity_reason: str | None
    n_cells_in_cancer_area: int | None
    n_tc_in_cancer_area: int | None
    n_bc_in_cancer_area: int | None
    purity_in_cancer_area: float | None
    purity_in_cancer_area_reason: str | None
    tissue_area_mm2: float | None
    cancer_area_mm2: float | None
    mpp: float | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict, fields in declaration order."""
        return asdict(self)


def _xy(x: ArrayLike, y: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    xa = np.asarray(x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y, dtype=np.float64).reshape(-1)
    if xa.size != ya.size:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    return xa, ya


def inside_map(
    x: ArrayLike,
    y: ArrayLike,
    prob_map: ArrayLike,
    scale: float,
    threshold: float = CANCER_AREA_THRESHOLD,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
) -> NDArray[np.bool_]:
    """Whether each point lies in a map pixel with ``probability >= threshold``.

    ``x, y``: level-0 px. Map pixel ``(r, c)`` covers level-0 ``origin + [c, c+1) × [r, r+1) ·
    scale`` (``scale`` = level-0 px per map pixel). ``prob_map`` (H, W): float in [0, 1],
    uint8 ``prob × 255`` (e.g. a ``predictions.zarr`` tissue level read into memory) or bool.
    Points outside the map are outside. Same rule as ``polygons_from_map``.
    """
    xa, ya = _xy(x, y)
    m = np.asarray(prob_map)
    if m.ndim != 2:
        raise ValueError(f"the map must be 2-D (H, W), got shape {m.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    c = np.floor((xa - origin[0]) / scale)
    r = np.floor((ya - origin[1]) / scale)
    ok = (r >= 0) & (c >= 0) & (r < m.shape[0]) & (c < m.shape[1])
    out = np.zeros(xa.size, dtype=bool)
    if ok.any():
        v = m[r[ok].astype(np.intp), c[ok].astype(np.intp)]
        if v.dtype == np.bool_:
            out[ok] = v
        elif v.dtype == np.uint8:
            out[ok] = v >= threshold * 255.0
        else:
            out[ok] = v >= threshold
    return out


def inside_geometry(x: ArrayLike, y: ArrayLike, geometry: BaseGeometry | None) -> NDArray[np.bool_]:
    """Whether each point (level-0 px) is inside ``geometry`` (level-0 px); boundary = outside."""
    xa, ya = _xy(x, y)
    if geometry is None or geometry.is_empty or xa.size == 0:
        return np.zeros(xa.size, dtype=bool)
    shapely.prepare(geometry)
    return np.asarray(shapely.contains_xy(geometry, xa, ya), dtype=bool)


def _ratio(tc: int, bc: int) -> float | None:
    return tc / (tc + bc) if tc + bc else None


def _mm2(v: float | None) -> float | None:
    return None if v is None else float(v) / UM2_PER_MM2


class PurityCounter:
    """Streaming purity of one slide: fed cells batch by batch, it keeps the class counts
    (over all cells and inside the cancer area) and the per-square counts of a heat map.

    The heat map cuts the ``width × height`` level-0 slide into squares of ``grid_px`` px
    (square ``(i, j)`` covers ``[j·s, (j+1)·s) × [i·s, (i+1)·s)``); cells outside the slide
    count in the purity but not in the map. Without a grid (``grid_px=None``) only the
    counts are kept."""

    def __init__(
        self, width: float | None = None, height: float | None = None, grid_px: float | None = None
    ):
        self.n_tc = self.n_bc = self.n_tc_ca = self.n_bc_ca = 0
        self.grid_px = grid_px
        if grid_px is not None:
            if not grid_px > 0:
                raise ValueError(f"grid_px must be > 0, got {grid_px}")
            if not (width and height and width > 0 and height > 0):
                raise ValueError(f"width and height must be > 0, got {width} × {height}")
            self.width, self.height = float(width), float(height)
            shape = (math.ceil(height / grid_px), math.ceil(width / grid_px))
            self.tc_grid = np.zeros(shape, np.int64)
            self.bc_grid = np.zeros(shape, np.int64)

    @property
    def n_cells(self) -> int:
        return self.n_tc + self.n_bc

    def add(
        self, x: ArrayLike, y: ArrayLike, cls: ArrayLike, inside: ArrayLike | None = None
    ) -> None:
        """Count a batch of cells; ``inside`` (a bool per cell) marks those in the cancer area."""
        xa, ya = _xy(x, y)
        c = np.asarray(cls).reshape(-1)
        if c.size != xa.size:
            raise ValueError(f"cls must have one entry per cell, got {c.size} for {xa.size} cells")
        if not c.size:
            return
        check_cell_classes(c)
        ins = None
        if inside is not None:
            ins = np.asarray(inside, dtype=bool).reshape(-1)
            if ins.size != c.size:
                raise ValueError(
                    f"inside must have one entry per cell, got {ins.size} for {c.size} cells"
                )
        self._count(xa, ya, c == TC, ins)

    def add_cells(self, cells: CellBatch) -> None:
        """Count a :class:`~wsi_ocelot.cells.CellBatch` (its classes were checked when it was
        built; its ``in_cancer_area`` flags, when known, mark those in the cancer area)."""
        if len(cells):
            self._count(cells.x, cells.y, cells.cls == TC, cells.in_cancer_area)

    def _count(
        self,
        xa: NDArray[np.float64],
        ya: NDArray[np.float64],
        tc: NDArray[np.bool_],
        ins: NDArray[np.bool_] | None,
    ) -> None:
        self.n_tc += int(tc.sum())
        self.n_bc += int((~tc).sum())
        if ins is not None:
            self.n_tc_ca += int((tc & ins).sum())
            self.n_bc_ca += int((~tc & ins).sum())
        if self.grid_px is not None:
            ok = (xa >= 0) & (ya >= 0) & (xa < self.width) & (ya < self.height)
            gh, gw = self.tc_grid.shape
            gi = np.minimum((ya[ok] // self.grid_px).astype(np.int64), gh - 1)
            gj = np.minimum((xa[ok] // self.grid_px).astype(np.int64), gw - 1)
            t = tc[ok]
            self.tc_grid += np.bincount(gi[t] * gw + gj[t], minlength=gh * gw).reshape(gh, gw)
            self.bc_grid += np.bincount(gi[~t] * gw + gj[~t], minlength=gh * gw).reshape(gh, gw)

    def grid(self) -> NDArray[np.float64]:
        """The heat map: purity per square, NaN where a square holds no cell."""
        total = self.tc_grid + self.bc_grid
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, self.tc_grid / np.maximum(total, 1), np.nan)

    def result(
        self,
        *,
        tissue_area_mm2: float | None = None,
        cancer_area_mm2: float | None = None,
        mpp: float | None = None,
        cancer_area_known: bool = True,
        no_cancer_area_reason: str = "no cancer-area prediction given",
        no_tissue: bool = False,
    ) -> PurityResult:
        """The slide's :class:`PurityResult`.

        ``cancer_area_known=False`` (no cancer-area prediction, e.g. a model without a tissue
        branch) leaves the in-CA fields None with ``no_cancer_area_reason``; a known cancer
        area of 0 mm² gives "no cancer area found". ``no_tissue`` names the reason for a
        slide without cells: "no tissue found on the slide" instead of "no cells detected".
        """
        purity = _ratio(self.n_tc, self.n_bc)
        reason = (
            None
            if purity is not None
            else ("no tissue found on the slide" if no_tissue else "no cells detected")
        )
        n_in = tc_in = bc_in = None
        p_in: float | None = None
        if not cancer_area_known:
            reason_in: str | None = no_cancer_area_reason
        else:
            tc_in, bc_in = self.n_tc_ca, self.n_bc_ca
            n_in = tc_in + bc_in
            p_in = _ratio(tc_in, bc_in)
            if p_in is not None:
                reason_in = None
            elif cancer_area_mm2 is not None and cancer_area_mm2 <= 0:
                reason_in = "no cancer area found"
            elif self.n_cells == 0:
                reason_in = "no cells detected"
            else:
                reason_in = "no cells inside the cancer area"
        return PurityResult(
            n_cells=self.n_cells,
            n_tc=self.n_tc,
            n_bc=self.n_bc,
            purity=purity,
            purity_reason=reason,
            n_cells_in_cancer_area=n_in,
            n_tc_in_cancer_area=tc_in,
            n_bc_in_cancer_area=bc_in,
            purity_in_cancer_area=p_in,
            purity_in_cancer_area_reason=reason_in,
            tissue_area_mm2=tissue_area_mm2,
            cancer_area_mm2=cancer_area_mm2,
            mpp=None if mpp is None else float(mpp),
        )


def compute_purity(
    x: ArrayLike,
    y: ArrayLike,
    cls: ArrayLike,
    *,
    ca_geometry: BaseGeometry | None = None,
    ca_inside: ArrayLike | None = None,
    tissue_area_um2: float | None = None,
    ca_area_um2: float | None = None,
    mpp: float | None = None,
) -> PurityResult:
    """Purity over all cells and inside the cancer area.

    The CA membership of each cell comes from ``ca_inside`` (a bool per cell, e.g. from
    :func:`inside_map`) or from ``ca_geometry`` (shapely, level-0 px); give at most one.
    Without either, the in-CA fields are None with the reason "no cancer-area prediction
    given". ``ca_area_um2`` defaults to ``ca_geometry.area × mpp²`` when both are known.
    """
    xa, ya = _xy(x, y)
    c = np.asarray(cls).reshape(-1)
    if c.size != xa.size:
        raise ValueError(f"cls must have one entry per cell, got {c.size} for {xa.size} cells")
    check_cell_classes(c)
    if ca_geometry is not None and ca_inside is not None:
        raise ValueError("give the cancer area either as ca_geometry or as ca_inside, not both")
    if mpp is not None and not (mpp > 0 and math.isfinite(mpp)):
        raise ValueError(f"mpp must be a positive number, got {mpp}")
    if ca_inside is not None:
        inside = np.asarray(ca_inside, dtype=bool).reshape(-1)
        if inside.size != c.size:
            raise ValueError(
                f"ca_inside must have one entry per cell, got {inside.size} for {c.size} cells"
            )
    elif ca_geometry is not None:
        inside = inside_geometry(xa, ya, ca_geometry)
        if ca_area_um2 is None and mpp is not None:
            ca_area_um2 = float(ca_geometry.area) * mpp * mpp
        if ca_geometry.is_empty and ca_area_um2 is None:
            ca_area_um2 = 0.0
    else:
        inside = None
    counter = PurityCounter()
    counter.add(xa, ya, c, inside)
    result = counter.result(
        tissue_area_mm2=_mm2(tissue_area_um2),
        cancer_area_mm2=_mm2(ca_area_um2),
        mpp=mpp,
        cancer_area_known=inside is not None,
    )
    log.debug("purity: %s", result)
    return result


def purity_grid(
    x: ArrayLike,
    y: ArrayLike,
    cls: ArrayLike,
    width: float,
    height: float,
    cell_size_px: float,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Per-square counts and purity for a coarse heat map.

    The slide (``width × height`` level-0 px) is cut into squares of ``cell_size_px`` level-0
    px; square ``(i, j)`` covers ``[j·s, (j+1)·s) × [i·s, (i+1)·s)``. Returns ``(tc, bc,
    purity)``, each of shape ``(ceil(height/s), ceil(width/s))``; purity is NaN where a square
    holds no cell. Cells outside the slide are ignored.
    """
    if not cell_size_px > 0:
        raise ValueError(f"cell_size_px must be > 0, got {cell_size_px}")
    if not (width > 0 and height > 0):
        raise ValueError(f"width and height must be > 0, got {width} × {height}")
    xa, ya = _xy(x, y)
    c = np.asarray(cls).reshape(-1)
    if c.size != xa.size:
        raise ValueError(f"cls must have one entry per cell, got {c.size} for {xa.size} cells")
    known = np.isin(c, CELL_CLASS_IDS)
    counter = PurityCounter(width, height, cell_size_px)
    counter.add(xa[known], ya[known], c[known])
    return counter.tc_grid, counter.bc_grid, counter.grid()
