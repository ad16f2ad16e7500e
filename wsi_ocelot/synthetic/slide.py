"""A synthetic slide: the tissue model bound to a level-0 MPP, written as TIFF + ground truth.

Files written by :func:`write_synthetic_slide` for ``OUT.tiff``:

* ``OUT.tiff`` — pyramidal tiled JPEG TIFF with the MPP in its resolution tags;
* ``OUT.cells.csv`` — header ``x,y,class``; one row per nucleus centre in level-0 px
  (2 decimals; pixel ``j`` covers ``[j, j + 1)``), class 1 = BC, 2 = TC;
* ``OUT.tissue.geojson`` — FeatureCollection of cancer-area Polygons in level-0 px
  (QuPath annotation properties, classification "Tumor").

The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.errors import DatasetError
from wsi_ocelot.slide import SYNTHETIC_DESCRIPTION
from wsi_ocelot.synthetic.layout import SyntheticParams, TissueModel, build_tissue_model
from wsi_ocelot.synthetic.render import render_um
from wsi_ocelot.synthetic.stats import SyntheticStats, compute_stats
from wsi_ocelot.synthetic.tiff import write_pyramidal_tiff

log = logging.getLogger(__name__)

_CA_PROPERTIES = {
    "objectType": "annotation",
    "classification": {"name": "Tumor", "color": [200, 0, 0]},
}
_RENDER_CHUNK = 2048  # columns rendered at once inside a TIFF band


def _to_px(geom: BaseGeometry, mpp: float) -> BaseGeometry:
    """µm geometry → level-0 px, coordinates on a 0.01-px grid (valid after rounding)."""
    if geom.is_empty:
        return Polygon()
    g = affinity.scale(geom, 1.0 / mpp, 1.0 / mpp, origin=(0.0, 0.0))
    g = shapely.set_precision(g, 0.01)
    return g if g.is_valid else shapely.make_valid(g)


@dataclass
class SyntheticSlide:
    """A synthetic slide of ``size = (W, H)`` level-0 px at ``mpp`` µm/px.

    All coordinates are level-0 px. ``cells`` is ``(N, 3)`` float64 ``[x, y, class]``
    (rounded to 0.01 px, as in the CSV); ``cancer_area`` and ``tissue`` are shapely
    geometries. ``*_path`` are set when the slide was written to disk."""

    model: TissueModel
    mpp: float
    size: tuple[int, int]
    cells: np.ndarray
    cancer_area: BaseGeometry
    tissue: BaseGeometry
    stats: SyntheticStats
    tiff_path: Path | None = None
    cells_path: Path | None = None
    tissue_path: Path | None = None

    @property
    def seed(self) -> int:
        return self.model.seed

    @property
    def empty(self) -> bool:
        return self.model.empty

    def cells_in_box(self, box: tuple[float, float, float, float]) -> np.ndarray:
        """Cells whose centre lies in the level-0 box ``(x, y, w, h)`` → (n, 3) level-0 px."""
        x, y, w, h = box
        c = self.cells
        m = (c[:, 0] >= x) & (c[:, 0] < x + w) & (c[:, 1] >= y) & (c[:, 1] < y + h)
        return c[m]

    def cancer_area_in_box(self, box: tuple[float, float, float, float]) -> BaseGeometry:
        """Cancer area clipped to the level-0 box ``(x, y, w, h)`` (level-0 px)."""
        x, y, w, h = box
        return shapely.clip_by_rect(self.cancer_area, x, y, x + w, y + h)

    def render(
        self, box: tuple[float, float, float, float], out_mpp: float | None = None
    ) -> np.ndarray:
        """Render the level-0 box ``(x, y, w, h)`` at ``out_mpp`` µm/px (default: level 0).

        Output size is ``round(w · mpp / out_mpp) × round(h · mpp / out_mpp)``; returns
        ``(out_h, out_w, 3)`` uint8. No TIFF is involved."""
        x, y, w, h = (float(v) for v in box)
        o = self.mpp if out_mpp is None else float(out_mpp)
        ow = max(1, round(w * self.mpp / o))
        oh = max(1, round(h * self.mpp / o))
        return render_um(self.model, x * self.mpp, y * self.mpp, ow, oh, o)

    def render_level0_tile(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """``render_tile`` callback for :func:`write_pyramidal_tiff` (level-0 px)."""
        parts = [
            render_um(
                self.model, (x + c) * self.mpp, y * self.mpp, min(_RENDER_CHUNK, w - c), h, self.mpp
            )
            for c in range(0, w, _RENDER_CHUNK)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def make_synthetic_slide(
    *,
    mpp: float = 0.25,
    size: tuple[int, int] = (4096, 4096),
    seed: int = 0,
    empty: bool = False,
    params: SyntheticParams | None = None,
) -> SyntheticSlide:
    """The in-memory synthetic slide (no files): tissue model, ground truth, renderer.

    ``size`` is level-0 px; the tissue spans ``size × mpp`` µm, so the same seed and µm
    extent give the same tissue at any MPP."""
    if mpp <= 0 or not math.isfinite(mpp):
        raise ValueError(f"mpp must be a positive number of µm/px, got {mpp}")
    W, H = (int(v) for v in size)
    if W < 16 or H < 16:
        raise ValueError(f"size must be at least 16×16 level-0 px, got {size}")
    model = build_tissue_model(W * mpp, H * mpp, seed, params, empty=empty)
    c = model.cells
    cells = (
        np.column_stack([np.round(c.xy / mpp, 2), c.cls.astype(np.float64)])
        if len(c)
        else np.zeros((0, 3))
    )
    ca = _to_px(model.cancer_area, mpp)
    tissue = _to_px(model.tissue, mpp)
    stats = compute_stats(cells, ca, tissue.area, unit_um=mpp)
    return SyntheticSlide(
        model=model,
        mpp=float(mpp),
        size=(W, H),
        cells=cells,
        cancer_area=ca,
        tissue=tissue,
        stats=stats,
    )


def _sidecars(tiff_path: Path) -> tuple[Path, Path]:
    stem = tiff_path.with_suffix("")
    return stem.with_name(stem.name + ".cells.csv"), stem.with_name(stem.name + ".tissue.geojson")


def _ca_geojson(ca: BaseGeometry) -> dict:
    polys = list(ca.geoms) if isinstance(ca, MultiPolygon) else ([] if ca.is_empty else [ca])
    feats = []
    for p in polys:
        geom = mapping(p)
        geom = {
            "type": geom["type"],
            "coordinates": [
                [[round(x, 2), round(y, 2)] for x, y in ring] for ring in geom["coordinates"]
            ],
        }
        feats.append({"type": "Feature", "geometry": geom, "properties": _CA_PROPERTIES})
    return {"type": "FeatureCollection", "features": feats}


def write_synthetic_slide(
    out_path: str | os.PathLike[str],
    *,
    mpp: float = 0.25,
    size: tuple[int, int] = (4096, 4096),
    seed: int = 0,
    empty: bool = False,
    params: SyntheticParams | None = None,
    quality: int = 90,
) -> SyntheticSlide:
    """Write a synthetic H&E slide and its ground truth; return the :class:`SyntheticSlide`.

    ``out_path`` is ``OUT.tiff`` (``.tiff`` is appended when it has another suffix);
    ``OUT.cells.csv`` and ``OUT.tissue.geojson`` are written beside it. ``size`` is
    level-0 px. Rendering happens band by band, so memory stays bounded."""
    p = Path(out_path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        p = p.with_name(p.name + ".tiff")
    p.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    slide = make_synthetic_slide(mpp=mpp, size=size, seed=seed, empty=empty, params=params)
    t1 = time.perf_counter()
    write_pyramidal_tiff(
        p,
        mpp=mpp,
        size=slide.size,
        render_tile=slide.render_level0_tile,
        quality=quality,
        description=f"{SYNTHETIC_DESCRIPTION} seed={seed} mpp={mpp}",
    )
    t2 = time.perf_counter()
    cells_path, tissue_path = _sidecars(p)
    lines = ["x,y,class"] + [f"{x:.2f},{y:.2f},{int(c)}" for x, y, c in slide.cells]
    cells_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tissue_path.write_text(json.dumps(_ca_geojson(slide.cancer_area)), encoding="utf-8")
    slide.tiff_path, slide.cells_path, slide.tissue_path = p, cells_path, tissue_path
    log.info(
        "synthetic slide %s: %d×%d px at %.3f µm/px, %d cells (model %.1f s, TIFF %.1f s)",
        p,
        slide.size[0],
        slide.size[1],
        mpp,
        len(slide.cells),
        t1 - t0,
        t2 - t1,
    )
    return slide


def read_ground_truth(tiff_path: str | os.PathLike[str]) -> tuple[np.ndarray, BaseGeometry]:
    """Read the sidecar ground truth of a synthetic slide ``OUT.tiff``.

    Returns ``(cells, cancer_area)``: cells ``(N, 3)`` float64 ``[x, y, class]`` and the
    union of the cancer-area polygons, both in level-0 px."""
    cells_path, tissue_path = _sidecars(Path(tiff_path))
    for f in (cells_path, tissue_path):
        if not f.is_file():
            raise DatasetError(
                f,
                "ground-truth sidecar file not found",
                "write the slide with write_synthetic_slide",
            )
    try:
        lines = cells_path.read_text(encoding="utf-8").splitlines()
        if lines[:1] != ["x,y,class"]:
            raise ValueError(f"header {lines[:1]!r}, expected 'x,y,class'")
        rows = [ln.split(",") for ln in lines[1:] if ln.strip()]
        if any(len(r) != 3 for r in rows):
            raise ValueError("every row needs 3 fields x,y,class")
        cells = np.array(rows, dtype=np.float64).reshape(-1, 3)
    except ValueError as err:
        raise DatasetError(
            cells_path, f"malformed cell CSV ({err})", "regenerate the ground truth"
        ) from err
    try:
        data = json.loads(tissue_path.read_text(encoding="utf-8"))
        geoms = [shape(f["geometry"]) for f in data.get("features", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DatasetError(
            tissue_path, f"malformed GeoJSON ({err})", "regenerate the ground truth"
        ) from err
    ca = shapely.union_all(geoms) if geoms else Polygon()
    return cells, ca
