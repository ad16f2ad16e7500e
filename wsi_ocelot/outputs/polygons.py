"""Raster → polygon conversion and polygon clean-up for QuPath.

Frames: a raster map pixel ``(r, c)`` covers ``[c*scale, (c+1)*scale) × [r*scale, (r+1)*scale)``
in level-0 px, shifted by ``origin`` (the level-0 position of the map's pixel (0, 0) corner).
All geometry returned is in level-0 px (OpenSlide frame unless the caller's origin says
otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.constants import CANCER_AREA_THRESHOLD

log = logging.getLogger(__name__)

__all__ = ["clean_polygons", "polygons_from_map", "threshold_map"]


def threshold_map(
    prob_map: ArrayLike, threshold: float = CANCER_AREA_THRESHOLD
) -> NDArray[np.bool_]:
    """``prob >= threshold`` for a float map in [0, 1] or a uint8 map encoding ``prob × 255``."""
    a = np.asarray(prob_map)
    if a.ndim != 2:
        raise ValueError(f"the probability map must be 2-D (H, W), got shape {a.shape}")
    if a.dtype == np.bool_:
        return a
    if a.dtype == np.uint8:
        return a >= threshold * 255.0
    return a >= threshold


def _runs(
    edges: NDArray[np.int8],
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp], NDArray[np.int8]]:
    """Maximal runs of equal non-zero values along axis 1: ``(row, start, stop_exclusive, value)``."""
    z = np.zeros((edges.shape[0], edges.shape[1] + 2), dtype=np.int8)
    z[:, 1:-1] = edges
    mid = z[:, 1:-1]
    nz = mid != 0
    rs, cs = np.nonzero(nz & (mid != z[:, :-2]))
    _, ce = np.nonzero(nz & (mid != z[:, 2:]))
    # nonzero is row-major and every run has one start and one end in its row: they pair up
    return rs, cs, ce + 1, mid[rs, cs]


# headings in image coordinates (x right, y down): 0 east, 1 north (-y), 2 west, 3 south (+y);
# a left turn is (d + 1) % 4, a right turn (d + 3) % 4.
_E, _N, _W, _S = 0, 1, 2, 3


def _trace_rings(
    mask: NDArray[np.bool_],
) -> tuple[NDArray[np.float64], NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_]]:
    """Trace the pixel-edge boundary of ``mask`` into closed rings.

    Returns ``(xy, ring_of_vertex, component_of_ring, is_hole)``: ring vertices (corners only,
    in map px, ring by ring, each ring unclosed) with their ring index, and per ring the
    4-connected component it bounds and whether it is a hole. Boundary runs are directed with
    the inside on their left; at a saddle vertex (diagonal inside pixels) the rings are paired
    so that each ring passes the vertex once: diagonal pixels of different components are kept
    apart, diagonal pixels of one component give a shell and a hole (or two holes) touching at
    that point. Every ring is therefore simple and the polygons built from them are valid.
    """
    h, w = mask.shape
    labels, _ = ndimage.label(mask)  # 4-connectivity
    lab = np.zeros((h + 2, w + 2), dtype=labels.dtype)
    lab[1:-1, 1:-1] = labels
    p = (lab > 0).view(np.int8)
    # horizontal runs: y = i between map rows i-1 and i; +1 inside below (travel west), -1 above (east)
    hy, hx0, hx1, hv = _runs(p[1:, 1:-1] - p[:-1, 1:-1])
    # vertical runs: x = j between map columns j-1 and j; +1 inside right (travel south), -1 left (north)
    vx, vy0, vy1, vv = _runs(np.ascontiguousarray((p[1:-1, 1:] - p[1:-1, :-1]).T))
    hwest = hv > 0
    vsouth = vv > 0
    sx = np.concatenate([np.where(hwest, hx1, hx0), vx])
    sy = np.concatenate([hy, np.where(vsouth, vy0, vy1)])
    ex = np.concatenate([np.where(hwest, hx0, hx1), vx])
    ey = np.concatenate([hy, np.where(vsouth, vy1, vy0)])
    head = np.concatenate([np.where(hwest, _W, _E), np.where(vsouth, _S, _N)]).astype(np.int8)
    # the inside pixel along each run's first unit edge (row, col), for the component label
    pr = np.concatenate([np.where(hwest, hy, hy - 1), np.where(vsouth, vy0, vy1 - 1)])
    pc = np.concatenate([np.where(hwest, hx1 - 1, hx0), np.where(vsouth, vx, vx - 1)])
    n = sx.size

    # successor: the run starting where this one ends (always a turn; two candidates at saddles)
    stride = np.int64(w + 1)
    kstart = sy.astype(np.int64) * stride + sx
    order = np.argsort(kstart, kind="stable")
    skeys = kstart[order]
    kend = ey.astype(np.int64) * stride + ex
    lo = np.searchsorted(skeys, kend, side="left")
    cnt = np.searchsorted(skeys, kend, side="right") - lo
    if cnt.min(initial=1) < 1 or cnt.max(initial=1) > 2:  # pragma: no cover - internal invariant
        raise RuntimeError("boundary tracing failed: unmatched run ends")
    succ = order[lo]
    sad = np.nonzero(cnt == 2)[0]
    if sad.size:
        vxs, vys = ex[sad], ey[sad]
        nw, se = lab[vys, vxs], lab[vys + 1, vxs + 1]
        ne, sw = lab[vys, vxs + 1], lab[vys + 1, vxs]
        a, d = np.where(nw > 0, nw, ne), np.where(nw > 0, se, sw)
        want = np.where(a == d, (head[sad] + 3) % 4, (head[sad] + 1) % 4)
        c1, c2 = order[lo[sad]], order[lo[sad] + 1]
        succ[sad] = np.where(head[c1] == want, c1, c2)

    # cycles of the permutation ``succ``: label = smallest run index (pointer jumping)
    ring = np.arange(n)
    jump = succ.copy()
    steps = 1
    while steps < n:
        np.minimum(ring, ring[jump], out=ring)
        jump = jump[jump]
        steps *= 2
    # position in the ring: distance to the ring's last run (the one whose successor is the head)
    last = succ == ring[succ]
    # every run's label equals its successor's; the head is the run whose index is its label
    nxt = np.where(last, np.arange(n), succ)
    dist = (~last).astype(np.int64)
    steps = 1
    while steps < n:
        dist += dist[nxt]
        nxt = nxt[nxt]
        steps *= 2
    srt = np.lexsort((-dist, ring))
    heads = srt[np.r_[True, ring[srt][1:] != ring[srt][:-1]]]
    ring_idx = np.cumsum(np.r_[True, ring[srt][1:] != ring[srt][:-1]]) - 1
    xs, ys = sx[srt].astype(np.float64), sy[srt].astype(np.float64)
    # signed area (shoelace) per ring: shells have negative area in these y-down coordinates
    nxt_pos = np.empty(n, dtype=np.intp)
    nxt_pos[srt] = np.arange(n)
    np_ = nxt_pos[succ[srt]]
    twice_area = np.bincount(ring_idx, weights=xs * ys[np_] - xs[np_] * ys)
    comp = labels[pr[heads], pc[heads]]
    return np.column_stack([xs, ys]), ring_idx, comp, twice_area > 0


def polygons_from_map(
    prob_map: ArrayLike,
    *,
    threshold: float = CANCER_AREA_THRESHOLD,
    scale: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    min_area: float = 0.0,
    simplify: float = 0.0,
) -> shapely.MultiPolygon:
    """Polygons (with holes) of the pixels where ``prob_map >= threshold``, in level-0 px.

    ``prob_map`` (H, W): float probabilities in [0, 1], uint8 ``prob × 255`` or bool. Pixel
    ``(r, c)`` maps to the level-0 square ``origin + [c, c+1) × [r, r+1) · scale``. The
    outline follows pixel edges exactly (area = pixel count × scale²): the boundary between
    inside and outside pixels is traced into rings (vectorised, see :func:`_trace_rings`), one
    polygon per 4-connected component; pixels touching only at a corner give separate polygons
    that touch at that point. ``min_area`` (level-0 px²) drops small polygons; ``simplify``
    (level-0 px tolerance, topology-preserving) smooths the staircase. Returns a valid
    MultiPolygon (empty when nothing passes the threshold). A 4000 × 4000 map takes ~1 s.
    """
    mask = threshold_map(prob_map, threshold)
    h, w = mask.shape
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if not mask.any():
        return shapely.MultiPolygon()
    xy, ring_idx, comp, is_hole = _trace_rings(mask)
    ox, oy = float(origin[0]), float(origin[1])
    if scale != 1.0 or ox or oy:
        xy = xy * scale + np.array([ox, oy])
    rings = shapely.linearrings(xy, indices=ring_idx)
    # polygons: per component its shell first, then its holes
    srt = np.lexsort((is_hole, comp))
    _, poly_idx = np.unique(comp[srt], return_inverse=True)
    polys = shapely.polygons(rings[srt], indices=poly_idx)
    if min_area > 0:
        polys = polys[shapely.area(polys) >= min_area]
    result = shapely.MultiPolygon(list(polys)) if polys.size else shapely.MultiPolygon()
    if simplify > 0 and not result.is_empty:
        result = shapely.simplify(result, simplify, preserve_topology=True)
        if not result.is_valid:
            result = shapely.MultiPolygon(_polygonal_parts(shapely.make_valid(result)))
        if not isinstance(result, shapely.MultiPolygon):
            result = shapely.MultiPolygon(_polygonal_parts(result))
    log.debug("polygons_from_map: %d×%d map → %d polygons", h, w, len(result.geoms))
    return result


def _polygonal_parts(geom: BaseGeometry) -> list[shapely.Polygon]:
    """The non-empty Polygons inside any geometry (collections flattened, lines/points dropped)."""
    out: list[shapely.Polygon] = []
    stack = [geom]
    while stack:
        g = stack.pop()
        if g is None or g.is_empty:
            continue
        if isinstance(g, shapely.Polygon):
            out.append(g)
        elif hasattr(g, "geoms"):
            stack.extend(reversed(list(g.geoms)))
    return out


def _distinct_vertices(ring: shapely.LinearRing) -> int:
    c = shapely.get_coordinates(ring)
    return int(np.unique(c, axis=0).shape[0]) if c.size else 0


def clean_polygons(
    geoms: Iterable[BaseGeometry | None], *, grid: float = 0.01
) -> list[shapely.Polygon]:
    """Valid, non-degenerate polygons on a ``grid`` (px) lattice, in input order.

    Each input is repaired with ``shapely.make_valid`` (a bow-tie becomes two triangles),
    non-polygonal parts are dropped, coordinates are snapped to ``grid`` with
    ``shapely.set_precision`` (whose output is valid on that grid), and parts that are empty,
    have zero area or fewer than 3 distinct exterior vertices are dropped. Rings are closed
    (shapely always closes them) and oriented (exterior counter-clockwise in x-right/y-up terms).
    """
    out: list[shapely.Polygon] = []
    dropped = 0
    for geom in geoms:
        if geom is None or geom.is_empty:
            continue
        g = geom if geom.is_valid else shapely.make_valid(geom)
        for part in _polygonal_parts(g):
            snapped = shapely.set_precision(part, grid) if grid > 0 else part
            for poly in _polygonal_parts(snapped):
                if poly.area <= 0 or _distinct_vertices(poly.exterior) < 3 or not poly.is_valid:
                    dropped += 1
                    continue
                out.append(shapely.geometry.polygon.orient(poly, 1.0))
    if dropped:
        log.debug("clean_polygons: dropped %d degenerate polygon parts", dropped)
    return out
