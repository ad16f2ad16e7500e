"""Render a :class:`~wsi_ocelot.synthetic.layout.TissueModel` region at any MPP.

The image is built in stain space (Beer–Lambert): per pixel a haematoxylin and an eosin
concentration, turned into RGB with the slide's stain vectors. Layers, all defined in µm
so that the picture does not depend on the MPP:

* glass (near-white, faint smooth variation) and the tissue mask (polygon raster, blurred,
  frayed at the border by fine noise);
* stroma: two wavy collagen-fibre systems (pink, with pale clefts); tumour nests: purple
  cytoplasm sheets; lymphocyte aggregates and small-TC zones: a pale cellular background;
* cytoplasm disks around tumour (and plasma) cells;
* nuclei: anti-aliased irregular ellipses with chromatin texture, a darker rim for
  vesicular nuclei and nucleoli, drawn so that the ground-truth point is their centre.

Nuclei and cytoplasm are splatted per cell with vectorised patches grouped by size and
accumulated with ``np.bincount``; smooth fields use separable sparse B-spline evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import shapely
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.synthetic.layout import CellTable, TissueModel
from wsi_ocelot.synthetic.noise import hash_uniform, smoothstep

log = logging.getLogger(__name__)

_SPLAT_CHUNK = 1_500_000  # patch pixels per vectorised chunk


def _raster(
    geom: BaseGeometry, x0: float, y0: float, w: int, h: int, mpp: float, sigma_um: float
) -> np.ndarray:
    """Polygon coverage on the pixel grid (pixel ``j`` centre at ``x0 + (j + .5) mpp`` µm),
    blurred by ``sigma_um`` → ``(h, w)`` float32 in [0, 1]."""
    sig = sigma_um / mpp
    m = int(math.ceil(3 * sig)) + 2
    if geom.is_empty:
        return np.zeros((h, w), np.float32)
    # Clip far outside the crop: PIL rounds vertices, and the vertices clipping adds must
    # not tilt edges near the visible region (bands must join seamlessly).
    cm = (m + 64) * mpp
    clip = shapely.clip_by_rect(geom, x0 - cm, y0 - cm, x0 + w * mpp + cm, y0 + h * mpp + cm)
    if clip.is_empty:
        return np.zeros((h, w), np.float32)
    img = Image.new("L", (w + 2 * m, h + 2 * m), 0)
    draw = ImageDraw.Draw(img)

    def tr(coords: np.ndarray) -> list[tuple[float, float]]:
        c = np.asarray(coords)[:, :2]
        px = (c[:, 0] - x0) / mpp - 0.5 + m
        py = (c[:, 1] - y0) / mpp - 0.5 + m
        return list(zip(px.tolist(), py.tolist(), strict=True))

    for poly in shapely.get_parts(clip):
        if not isinstance(poly, Polygon) or poly.is_empty:
            continue
        draw.polygon(tr(poly.exterior.coords), fill=255)
        for ring in poly.interiors:
            draw.polygon(tr(ring.coords), fill=0)
    a = np.asarray(img, np.float32) / 255.0
    if sig > 0.3:
        a = ndi.gaussian_filter(a, sig, mode="nearest", truncate=3.0)
    return a[m : m + h, m : m + w]


def _splat(
    cells: CellTable,
    radius_um: np.ndarray,
    x0: float,
    y0: float,
    w: int,
    h: int,
    mpp: float,
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Evaluate ``fn(dx, dy, rows, flat)`` on a square pixel patch around each cell.

    ``dx, dy``: (n, s, s) µm offsets of pixel centres from the cell centre; ``rows``: (n,)
    row indices into ``cells``; ``flat``: (n, s, s) flat pixel indices (−1 outside the
    region). Returns the flat indices of in-region pixels and ``fn``'s outputs at them."""
    flats: list[np.ndarray] = []
    outs: list[list[np.ndarray]] = []
    if len(cells) == 0:
        return np.zeros(0, np.int64), []
    side = 2 * np.ceil(radius_um / mpp).astype(np.int64) + 2
    side = ((side + 3) // 4) * 4
    cx = (cells.xy[:, 0] - x0) / mpp - 0.5  # in pixel-index units
    cy = (cells.xy[:, 1] - y0) / mpp - 0.5
    for s in np.unique(side):
        rows_all = np.flatnonzero(side == s)
        step = max(1, _SPLAT_CHUNK // int(s * s))
        ar = np.arange(s)
        for k in range(0, rows_all.size, step):
            rows = rows_all[k : k + step]
            j0 = np.round(cx[rows]).astype(np.int64) - s // 2
            i0 = np.round(cy[rows]).astype(np.int64) - s // 2
            jj = j0[:, None] + ar[None, :]  # (n, s)
            ii = i0[:, None] + ar[None, :]
            dx = ((x0 + (jj + 0.5) * mpp) - cells.xy[rows, 0][:, None])[:, None, :]  # (n, 1, s)
            dy = ((y0 + (ii + 0.5) * mpp) - cells.xy[rows, 1][:, None])[:, :, None]  # (n, s, 1)
            dx = np.broadcast_to(dx, (rows.size, s, s))
            dy = np.broadcast_to(dy, (rows.size, s, s))
            valid = ((jj >= 0) & (jj < w))[:, None, :] & ((ii >= 0) & (ii < h))[:, :, None]
            flat = np.where(valid, ii[:, :, None] * w + jj[:, None, :], -1)
            vals = fn(dx, dy, rows, flat)
            flats.append(flat[valid])
            outs.append([np.asarray(v)[valid] for v in vals])
    if not flats:
        return np.zeros(0, np.int64), []
    flat_all = np.concatenate(flats)
    n_out = len(outs[0])
    return flat_all, [np.concatenate([o[i] for o in outs]) for i in range(n_out)]


def render_um(
    model: TissueModel, x0_um: float, y0_um: float, width_px: int, height_px: int, mpp: float
) -> np.ndarray:
    """Render the region whose top-left corner is ``(x0_um, y0_um)`` µm at ``mpp`` µm/px.

    Pixel ``(i, j)`` covers µm ``[x0 + j·mpp, x0 + (j+1)·mpp) × [y0 + i·mpp, …)``.
    Returns ``(height_px, width_px, 3)`` uint8 RGB. Areas outside the slide are glass."""
    w, h = int(width_px), int(height_px)
    if w <= 0 or h <= 0 or mpp <= 0:
        raise ValueError(f"need a positive size and mpp, got {w}×{h} px at {mpp} µm/px")
    x0, y0 = float(x0_um), float(y0_um)
    xs = x0 + (np.arange(w) + 0.5) * mpp
    ys = y0 + (np.arange(h) + 0.5) * mpp
    st = model.stain
    texture = model.texture.grid(xs, ys, mpp)
    glass_od = np.float32(st.glass_od) * (1.0 + 0.12 * texture)

    box_geom = shapely.box(x0, y0, x0 + w * mpp, y0 + h * mpp).buffer(20.0)
    has_tissue = not model.tissue.is_empty and model.tissue.intersects(box_geom)
    H = np.zeros((h, w), np.float32)
    E = np.zeros((h, w), np.float32)
    if has_tissue:
        fine = model.fine.grid(xs, ys, mpp)
        tissue_soft = _raster(model.tissue, x0, y0, w, h, mpp, 1.5)
        fray = model.fray.grid(xs, ys, mpp)
        tmask = smoothstep(0.3, 0.7, tissue_soft + 0.28 * fray * (tissue_soft > 0.02))
        ca_soft = _raster(model.cancer_area, x0, y0, w, h, mpp, 4.0)
        zone_soft = _raster(model.small_tc_zones, x0, y0, w, h, mpp, 7.0)
        agg_soft = _raster(model.lymph_aggregates, x0, y0, w, h, mpp, 7.0)
        nest = model.nest_field.grid(xs, ys, mpp)
        t = model.nest_threshold
        nest_m = smoothstep(t - 0.12, t + 0.10, nest) * ca_soft * (1.0 - zone_soft)
        cellular = np.maximum(zone_soft, agg_soft)
        # Stroma: two wavy fibre systems, pale clefts where both are weak.
        fibres: np.ndarray = np.zeros((h, w), np.float32)
        for which, (wgt, sharp, mean) in enumerate(((0.6, 3.0, 0.3125), (0.5, 2.0, 0.375))):
            warp = model.fibre_warps[which].grid(xs, ys)
            ph = model.fibre_phase_grid(xs, ys, warp, which)
            lam = model.fibre_wavelength(which)
            damp = 1.0 / (1.0 + (2.0 * mpp / lam) ** 2)  # fibres blur out at coarse MPP
            f = (0.5 + 0.5 * np.cos(2 * np.pi * ph)) ** sharp
            fibres += wgt * (damp * f + (1 - damp) * mean)
        # Bundles: fibres come and go in patches; pale clefts between bundles.
        bundles = smoothstep(-0.9, 0.6, model.bundles.grid(xs, ys, mpp))
        fibres = fibres * (0.35 + 0.65 * bundles)
        e_st = (0.36 + 0.50 * fibres) * (0.8 + 0.2 * bundles) + 0.04 * fine + 0.03 * texture
        h_st = 0.03 + 0.015 * texture
        # Cellular background (aggregates, small-TC zones): pale, little fibre.
        e_ag = 0.30 + 0.08 * fibres + 0.04 * fine + 0.03 * texture
        h_ag = 0.12 + 0.02 * texture
        # Nest cytoplasm: purple, finely granular.
        e_ne = 0.42 + 0.06 * texture + 0.06 * fine
        h_ne = 0.30 + 0.04 * texture + 0.05 * fine
        hb = h_st + (h_ag - h_st) * cellular
        eb = e_st + (e_ag - e_st) * cellular
        hb = hb + (h_ne - hb) * nest_m
        eb = eb + (e_ne - eb) * nest_m
        H = tmask * hb
        E = tmask * eb

    cells = model.cells
    if len(cells):
        bound = cells.bound_um
        idx = model.cell_indices_in_box(
            (x0, y0, w * mpp, h * mpp), margin_um=float(bound.max()) if len(bound) else 0.0
        )
        sub = cells.take(idx)
        bsub = bound[idx]
        if len(sub):
            H, E = _draw_cells(
                sub,
                bsub,
                x0,
                y0,
                w,
                h,
                mpp,
                H,
                E,
                fine if has_tissue else np.zeros((h, w), np.float32),
            )

    od = (
        (H * np.float32(st.h_gain))[..., None] * st.h_vec.astype(np.float32)
        + (E * np.float32(st.e_gain))[..., None] * st.e_vec.astype(np.float32)
        + glass_od[..., None]
    )
    rgb = 255.0 * np.exp(-od)
    # Sensor noise keyed on the global pixel index at this MPP (band-split independent).
    ix = np.floor(xs / mpp).astype(np.int64)
    iy = np.floor(ys / mpp).astype(np.int64)
    noise = hash_uniform(ix[None, :], iy[:, None], model.seed + int(round(mpp * 1000)) * 7919) - 0.5
    rgb += (3.0 * noise)[..., None]
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _draw_cells(
    cells: CellTable,
    bound: np.ndarray,
    x0: float,
    y0: float,
    w: int,
    h: int,
    mpp: float,
    H: np.ndarray,
    E: np.ndarray,
    fine: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    n_px = w * h
    fine_flat = fine.ravel()

    # Cytoplasm (tumour and plasma cells).
    has_c = np.flatnonzero(cells.cyto_r > 0)
    if has_c.size:
        cc = cells.take(has_c)

        def cyto(
            dx: np.ndarray, dy: np.ndarray, rows: np.ndarray, flat: np.ndarray
        ) -> tuple[np.ndarray, ...]:
            r = np.hypot(dx, dy) / cc.cyto_r[rows][:, None, None]
            return (cc.cyto_s[rows][:, None, None] * (1.0 - smoothstep(0.7, 1.0, r)),)

        flat, (cov,) = _splat(cc, cc.cyto_r + 1.0, x0, y0, w, h, mpp, cyto)
        c = np.minimum(np.bincount(flat, cov, minlength=n_px), 1.0).astype(np.float32).reshape(h, w)
        h_c = 0.30 + 0.05 * fine
        e_c = 0.42 + 0.05 * fine
        H = H + (h_c - H) * c * 0.85
        E = E + (e_c - E) * c * 0.85

    # Nuclei.
    ks = np.array([2.0, 3.0, 5.0])
    sq = np.sqrt(cells.a * cells.b)
    cos_t, sin_t = np.cos(cells.theta), np.sin(cells.theta)

    def nucleus(
        dx: np.ndarray, dy: np.ndarray, rows: np.ndarray, flat: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        c = cos_t[rows][:, None, None]
        s = sin_t[rows][:, None, None]
        u = dx * c + dy * s
        v = -dx * s + dy * c
        a = cells.a[rows][:, None, None]
        b = cells.b[rows][:, None, None]
        ua, vb = u / a, v / b
        rho = np.hypot(ua, vb) + 1e-9
        phi = np.arctan2(vb, ua)
        R = np.ones_like(rho)
        for k in range(3):
            R += cells.amp[rows, k][:, None, None] * np.cos(
                ks[k] * phi + cells.phase[rows, k][:, None, None]
            )
        sn = rho / R
        alpha = np.clip((1.0 - sn) * sq[rows][:, None, None] / mpp + 0.5, 0.0, 1.0)
        rim = smoothstep(0.5, 0.92, sn)
        ves = cells.vesic[rows][:, None, None]
        tex = fine_flat[np.maximum(flat, 0)]
        hn = (
            cells.dark[rows][:, None, None]
            * (1.0 - 0.5 * ves * (1.0 - rim))
            * (1.0 + (0.10 + 0.30 * ves) * tex)
        )
        nu = cells.nucleolus[rows][:, None, None]
        g = np.exp(
            -(
                (u - cells.nuc_off[rows, 0][:, None, None]) ** 2
                + (v - cells.nuc_off[rows, 1][:, None, None]) ** 2
            )
            / (2 * 0.75**2)
        )
        hn = hn + 0.6 * nu * g
        en = 0.10 + 0.45 * nu * g
        return alpha, alpha * hn, alpha * en

    flat, (al, ah, ae) = _splat(
        cells, cells.a * (1 + np.abs(cells.amp).sum(axis=1)) + 1.0, x0, y0, w, h, mpp, nucleus
    )
    A = np.minimum(np.bincount(flat, al, minlength=n_px), 1.0).astype(np.float32).reshape(h, w)
    HA = np.bincount(flat, ah, minlength=n_px).astype(np.float32).reshape(h, w)
    EA = np.bincount(flat, ae, minlength=n_px).astype(np.float32).reshape(h, w)
    H = H * (1.0 - A) + HA
    E = E * (1.0 - 0.8 * A) + EA
    return H, E
