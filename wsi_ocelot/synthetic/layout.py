"""The synthetic tissue model, in physical units (µm), independent of any MPP.

Everything here is deterministic from ``(width_um, height_um, seed, params)``: the tissue
pieces on the glass, the cancer areas (CA), the sub-regions of CA that hold small round
dark tumour cells (the paper's §6.5 case), lymphocyte aggregates in the stroma, the
tumour-nest and stroma-fibre fields, the per-slide stain vectors and every nucleus with
its class and morphology. Coordinates are µm from the slide's top-left corner
(x = column direction, y = row direction); a slide at ``mpp`` µm/px has its level-0
pixel coordinate ``x_px = x_um / mpp`` (continuous; pixel ``j`` covers ``[j, j + 1)``).

Cell–tissue relationship (paper Table 3) is built in: ~93 % of tumour cells (TC) inside
CA, ~85 % of background cells (BC) outside CA, ~35 % TC overall. Cells are placed by
population (classic nests, small-TC zones, CA septa, budding TC, lymphocyte aggregates,
scattered stroma cells) on jittered hexagonal lattices, then thinned so nuclei do not
overlap.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import LineString, MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.errors import ConfigError
from wsi_ocelot.synthetic.noise import Fbm

log = logging.getLogger(__name__)

# Cell classes (OCELOT ids).
BC = 1
TC = 2

# Cell kinds (morphology families).
LYMPHOCYTE = 0
FIBROBLAST = 1
ENDOTHELIAL = 2
PLASMA = 3
TUMOUR = 4
TUMOUR_SMALL = 5
KIND_NAMES = ("lymphocyte", "fibroblast", "endothelial", "plasma", "tumour", "tumour_small")


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the synthetic tissue (lengths in µm, fractions in [0, 1]).

    The defaults reproduce OCELOT's statistics (paper Tables 3–4): CA ≈ 40 % of tissue,
    93 % of TC in CA, 85 % of BC outside CA, 35 % TC overall.
    """

    tissue_extent: float = 0.80  # main tissue piece spans this fraction of the slide
    ca_fraction: float = 0.40  # cancer area / tissue area
    ca_radius_um: tuple[float, float] = (120.0, 280.0)
    nest_fraction: float = 0.62  # share of CA (outside small-TC zones) covered by tumour nests
    nest_scale_um: float = 42.0
    small_tc_zone_radius_um: tuple[float, float] = (75.0, 125.0)
    small_tc_zone_fraction: float = 0.18  # share of CA that holds small round dark TC
    small_tc_zone_sparsity: float = 5.0  # at most one zone per this many zone areas of a CA polygon
    lymph_aggregate_radius_um: tuple[float, float] = (70.0, 120.0)
    lymph_aggregate_fraction: float = 0.10  # share of stroma covered by lymphocyte aggregates
    lymph_aggregate_sparsity: float = (
        4.0  # at most one aggregate per this many aggregate areas of stroma
    )
    lymph_aggregate_purity: float = (
        0.93  # share of lymphocytes in aggregates (rest: plasma and endothelial cells)
    )
    tc_in_ca: float = 0.93
    bc_outside_ca: float = 0.85
    tc_fraction: float = 0.35
    tumour_spacing_um: float = 14.5
    lymph_spacing_um: float = 9.5
    stroma_spacing_um: float = 11.0
    budding_distance_um: float = 60.0  # TC outside CA cluster within ~this distance of CA
    stain_jitter: float = 0.06
    # the stain protocol: haematoxylin and eosin optical-density vectors (RGB, normalised) before
    # the per-slide jitter, and the stains' mean strengths (STAIN_DOMAINS: other labs' stains)
    stain_h: tuple[float, float, float] = (0.5626, 0.7201, 0.4062)
    stain_e: tuple[float, float, float] = (0.2159, 0.8012, 0.5581)
    stain_gain: tuple[float, float] = (1.0, 1.0)
    fissure_probability: float = 0.6
    hole_probability: float = 0.6

    def __post_init__(self) -> None:
        for name in (
            "tissue_extent",
            "ca_fraction",
            "nest_fraction",
            "small_tc_zone_fraction",
            "lymph_aggregate_fraction",
            "lymph_aggregate_purity",
            "tc_in_ca",
            "bc_outside_ca",
            "tc_fraction",
            "fissure_probability",
            "hole_probability",
        ):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(
                    None, f"SyntheticParams.{name} must be in [0, 1], got {v}", "give a fraction"
                )
        for name in ("tc_in_ca", "bc_outside_ca", "tc_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(
                    None,
                    f"SyntheticParams.{name} must be in (0, 1), got {getattr(self, name)}",
                    "give a fraction strictly between 0 and 1",
                )
        for name in ("small_tc_zone_sparsity", "lymph_aggregate_sparsity"):
            if getattr(self, name) < 1.0:
                raise ConfigError(
                    None,
                    f"SyntheticParams.{name} must be ≥ 1, got {getattr(self, name)}",
                    "give a ratio of areas, e.g. 5",
                )
        for name in ("tumour_spacing_um", "lymph_spacing_um", "stroma_spacing_um", "nest_scale_um"):
            if getattr(self, name) <= 1.0:
                raise ConfigError(
                    None,
                    f"SyntheticParams.{name} must be > 1 µm, got {getattr(self, name)}",
                    "give a length in µm",
                )


@dataclass(frozen=True)
class Stain:
    """Per-slide stain model: unit optical-density vectors (RGB) and strengths."""

    h_vec: np.ndarray  # (3,)
    e_vec: np.ndarray  # (3,)
    h_gain: float
    e_gain: float
    glass_od: float


@dataclass
class CellTable:
    """All nuclei of a tissue model (µm). Arrays of length N, ``amp``/``phase`` (N, 3)."""

    xy: np.ndarray  # (N, 2) centre, µm
    cls: np.ndarray  # (N,) int8, 1 = BC, 2 = TC
    kind: np.ndarray  # (N,) int8, see KIND_NAMES
    a: np.ndarray  # semi-major axis, µm
    b: np.ndarray  # semi-minor axis, µm
    theta: np.ndarray  # orientation of the major axis, rad
    amp: np.ndarray  # (N, 3) boundary harmonics 2, 3, 5 (relative amplitude)
    phase: np.ndarray  # (N, 3)
    dark: np.ndarray  # haematoxylin density of the chromatin
    vesic: np.ndarray  # 0 = solid dark, 1 = pale vesicular with dark rim
    nucleolus: np.ndarray  # nucleolus strength (0 = none)
    nuc_off: np.ndarray  # (N, 2) nucleolus offset in the nucleus frame, µm
    cyto_r: np.ndarray  # cytoplasm radius, µm (0 = none)
    cyto_s: np.ndarray  # cytoplasm strength

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    def take(self, idx: np.ndarray) -> CellTable:
        """A new table with the rows ``idx``."""
        return CellTable(**{k: v[idx] for k, v in self.__dict__.items()})

    @property
    def bound_um(self) -> np.ndarray:
        """Radius (µm) around the centre that holds everything drawn for a cell."""
        nuc = self.a * (1.0 + np.abs(self.amp).sum(axis=1)) + 1.0
        return np.maximum(nuc, self.cyto_r + 2.5)

    @staticmethod
    def empty() -> CellTable:
        z = np.zeros(0)
        return CellTable(
            np.zeros((0, 2)),
            np.zeros(0, np.int8),
            np.zeros(0, np.int8),
            z,
            z,
            z,
            np.zeros((0, 3)),
            np.zeros((0, 3)),
            z,
            z,
            z,
            np.zeros((0, 2)),
            z,
            z,
        )


@dataclass
class TissueModel:
    """A synthetic slide's content in µm. Build with :func:`build_tissue_model`."""

    width_um: float
    height_um: float
    seed: int
    params: SyntheticParams
    tissue: BaseGeometry  # tissue on the glass
    cancer_area: BaseGeometry  # CA ⊂ tissue
    small_tc_zones: BaseGeometry  # ⊂ CA: small round dark tumour cells
    lymph_aggregates: BaseGeometry  # ⊂ stroma
    cells: CellTable
    stain: Stain
    nest_field: Fbm
    nest_threshold: float
    fibre_theta: float
    fibre_warps: tuple[Fbm, Fbm]
    texture: Fbm  # mid-scale stain variation
    fine: Fbm  # chromatin / cytoplasm granularity
    fray: Fbm  # tissue-border raggedness
    bundles: Fbm  # where collagen bundles are dense
    _grid: _CellGrid | None = field(default=None, repr=False)

    @property
    def empty(self) -> bool:
        return self.tissue.is_empty

    @staticmethod
    def fibre_wavelength(which: int) -> float:
        """Spacing (µm) of the collagen fibres of fibre system ``which`` (0 or 1)."""
        return 6.5 if which == 0 else 12.0

    def _fibre_dir(self, which: int) -> tuple[float, float]:
        th = self.fibre_theta + (0.0 if which == 0 else 0.4)
        return -math.sin(th), math.cos(th)

    def fibre_phase(self, x_um: np.ndarray, y_um: np.ndarray, which: int = 0) -> np.ndarray:
        """Phase (in wavelengths) of the stroma fibre pattern ``which`` at points (µm)."""
        cx, cy = self._fibre_dir(which)
        v = np.asarray(x_um) * cx + np.asarray(y_um) * cy
        return (v + 38.0 * self.fibre_warps[which].at(x_um, y_um)) / self.fibre_wavelength(which)

    def fibre_phase_grid(
        self, xs_um: np.ndarray, ys_um: np.ndarray, warp: np.ndarray, which: int = 0
    ) -> np.ndarray:
        """:meth:`fibre_phase` on the grid ``ys × xs`` given the warp field there."""
        cx, cy = self._fibre_dir(which)
        v = (xs_um[None, :] * cx + ys_um[:, None] * cy).astype(np.float32)
        return (v + 38.0 * warp) / self.fibre_wavelength(which)

    def fibre_angle(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Local fibre direction (rad) at points: perpendicular to the phase gradient."""
        e = 0.5
        gx = self.fibre_phase(x_um + e, y_um) - self.fibre_phase(x_um - e, y_um)
        gy = self.fibre_phase(x_um, y_um + e) - self.fibre_phase(x_um, y_um - e)
        return np.arctan2(gy, gx) + np.pi / 2

    def cell_indices_in_box(
        self, box_um: tuple[float, float, float, float], margin_um: float = 0.0
    ) -> np.ndarray:
        """Indices of cells whose centre lies in ``(x, y, w, h)`` µm grown by ``margin_um``."""
        if self._grid is None:
            self._grid = _CellGrid(self.cells.xy)
        return self._grid.query(box_um, margin_um)


class _CellGrid:
    """Bucket index of cell centres (µm) for box queries."""

    def __init__(self, xy: np.ndarray, bucket_um: float = 100.0) -> None:
        self.bucket = bucket_um
        self.xy = xy
        if len(xy) == 0:
            self.order = np.zeros(0, np.int64)
            self.keys = np.zeros(0, np.int64)
            self.nx = 1
            return
        bx = np.floor(xy[:, 0] / bucket_um).astype(np.int64)
        by = np.floor(xy[:, 1] / bucket_um).astype(np.int64)
        self.nx = int(bx.max()) + 2
        keys = np.clip(by, 0, None) * self.nx + np.clip(bx, 0, None)
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]

    def query(self, box_um: tuple[float, float, float, float], margin_um: float) -> np.ndarray:
        if len(self.keys) == 0:
            return np.zeros(0, np.int64)
        x, y, w, h = box_um
        x0, y0, x1, y1 = x - margin_um, y - margin_um, x + w + margin_um, y + h + margin_um
        bx0 = max(0, int(math.floor(x0 / self.bucket)))
        bx1 = min(self.nx - 1, int(math.floor(x1 / self.bucket)))
        by0 = max(0, int(math.floor(y0 / self.bucket)))
        by1 = int(math.floor(y1 / self.bucket))
        parts = []
        for by in range(by0, by1 + 1):
            lo = np.searchsorted(self.keys, by * self.nx + bx0, "left")
            hi = np.searchsorted(self.keys, by * self.nx + bx1, "right")
            parts.append(self.order[lo:hi])
        idx = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        p = self.xy[idx]
        keep = (p[:, 0] >= x0) & (p[:, 0] < x1) & (p[:, 1] >= y0) & (p[:, 1] < y1)
        return idx[keep]


# ---------------------------------------------------------------------------- shapes


def _blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float | None = None,
    *,
    roughness: float = 0.22,
    harmonics: int = 14,
    ragged: float = 0.0,
    n: int = 180,
) -> Polygon:
    """A star-shaped irregular blob (µm) with radial harmonics; ``ragged`` adds fine teeth."""
    ry = rx if ry is None else ry
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, harmonics + 1)
    amps = rng.normal(size=k.size) * roughness / k**1.1
    ph = rng.uniform(0, 2 * np.pi, k.size)
    r = 1.0 + (amps[:, None] * np.cos(k[:, None] * t[None, :] + ph[:, None])).sum(axis=0)
    if ragged > 0:
        k2 = np.arange(harmonics + 1, 4 * harmonics + 1)
        a2 = rng.normal(size=k2.size) * ragged / np.sqrt(k2 / harmonics)
        p2 = rng.uniform(0, 2 * np.pi, k2.size)
        r = r + (a2[:, None] * np.cos(k2[:, None] * t[None, :] + p2[:, None])).sum(axis=0)
    r = np.clip(r, 0.35, None)
    rot = rng.uniform(0, np.pi)
    x, y = r * rx * np.cos(t), r * ry * np.sin(t)
    xr = cx + x * math.cos(rot) - y * math.sin(rot)
    yr = cy + x * math.sin(rot) + y * math.cos(rot)
    return shapely.make_valid(Polygon(np.column_stack([xr, yr])))


def _random_point_in(
    rng: np.random.Generator, geom: BaseGeometry, tries: int = 200
) -> tuple[float, float] | None:
    if geom.is_empty:
        return None
    minx, miny, maxx, maxy = geom.bounds
    for _ in range(tries // 20):
        xs = rng.uniform(minx, maxx, 20)
        ys = rng.uniform(miny, maxy, 20)
        inside = shapely.contains_xy(geom, xs, ys)
        if inside.any():
            i = int(np.argmax(inside))
            return float(xs[i]), float(ys[i])
    return None


def _flat_polygons(geom: BaseGeometry) -> list[Polygon]:
    out: list[Polygon] = []
    for g in shapely.get_parts(geom):
        if isinstance(g, Polygon):
            if not g.is_empty:
                out.append(g)
        elif hasattr(g, "geoms"):
            out.extend(_flat_polygons(g))
    return out


def _clean(geom: BaseGeometry, min_area: float = 1.0) -> BaseGeometry:
    """Valid (Multi)Polygon without slivers smaller than ``min_area`` µm²."""
    polys = [g for g in _flat_polygons(shapely.make_valid(geom)) if g.area >= min_area]
    if not polys:
        return Polygon()
    out = polys[0] if len(polys) == 1 else MultiPolygon(polys)
    return out if out.is_valid else shapely.make_valid(out)


def _make_tissue(rng: np.random.Generator, W: float, H: float, p: SyntheticParams) -> BaseGeometry:
    frame = box(0.015 * W, 0.015 * H, 0.985 * W, 0.985 * H)
    main = _blob(
        rng,
        W * rng.uniform(0.47, 0.53),
        H * rng.uniform(0.47, 0.53),
        0.5 * p.tissue_extent * W,
        0.5 * p.tissue_extent * H,
        roughness=0.16,
        harmonics=10,
        ragged=0.012,
        n=400,
    )
    tissue = main
    if rng.random() < 0.5:  # a satellite fragment
        ang = rng.uniform(0, 2 * np.pi)
        r = 0.11 * min(W, H)
        cx = W / 2 + 0.42 * W * math.cos(ang)
        cy = H / 2 + 0.42 * H * math.sin(ang)
        tissue = tissue.union(
            _blob(rng, cx, cy, r, r * rng.uniform(0.6, 1.0), roughness=0.2, ragged=0.015, n=200)
        )
    if rng.random() < p.fissure_probability:  # a thin wavy tear
        minx, miny, maxx, maxy = main.bounds
        ang = rng.uniform(0, np.pi)
        L = 0.6 * max(maxx - minx, maxy - miny)
        s = np.linspace(-0.5, 0.5, 60)
        c = np.array(main.centroid.coords[0]) + rng.uniform(-0.1, 0.1, 2) * (maxx - minx)
        wob = 0.05 * L * np.sin(2 * np.pi * (1.5 * s + rng.random())) + 0.02 * L * np.sin(
            2 * np.pi * (4 * s + rng.random())
        )
        pts = np.column_stack(
            [
                c[0] + s * L * math.cos(ang) - wob * math.sin(ang),
                c[1] + s * L * math.sin(ang) + wob * math.cos(ang),
            ]
        )
        width = min(W, H) * rng.uniform(0.006, 0.012)
        tissue = tissue.difference(LineString(pts).buffer(width, quad_segs=4))
    if rng.random() < p.hole_probability:  # a hole (vessel lumen / fat)
        pt = _random_point_in(rng, main.buffer(-0.1 * min(W, H)))
        if pt is not None:
            r = 0.04 * min(W, H)
            tissue = tissue.difference(
                _blob(rng, pt[0], pt[1], r, r * rng.uniform(0.6, 1.0), roughness=0.25)
            )
    return _clean(tissue.intersection(frame), min_area=0.001 * W * H)


def _make_cancer_area(
    rng: np.random.Generator, tissue: BaseGeometry, p: SyntheticParams
) -> BaseGeometry:
    target = p.ca_fraction * tissue.area
    if target <= 0:
        return Polygon()
    r_cap = 0.28 * math.sqrt(tissue.area)
    inner = tissue.buffer(-0.02 * math.sqrt(tissue.area))
    ca: BaseGeometry = Polygon()
    for _ in range(80):
        if ca.area >= target - 0.015 * tissue.area:
            break
        r = min(rng.uniform(*p.ca_radius_um), r_cap)
        pt = _random_point_in(rng, inner.difference(ca) if not ca.is_empty else inner)
        if pt is None:
            break
        b = _blob(
            rng,
            pt[0],
            pt[1],
            r,
            r * rng.uniform(0.55, 1.0),
            roughness=0.3,
            harmonics=12,
            ragged=0.01,
            n=220,
        )
        new = ca.union(b.intersection(tissue))
        if new.area > target + 0.035 * tissue.area:
            continue
        ca = new
    ca = ca.simplify(0.25).intersection(tissue)
    return _clean(ca, min_area=50.0)


def _place_zones(
    rng: np.random.Generator,
    host: BaseGeometry,
    frac: float,
    radius: tuple[float, float],
    erode: float,
    min_r: float,
    per_area: float,
) -> BaseGeometry:
    """Blobs of ``radius`` µm inside the polygons of ``host`` until ``frac`` of its area.

    Each host polygon gets at most ``area / (per_area · π r²)`` (≥ 1) blobs, and blobs stay
    ``erode`` µm inside it, so zones always have host tissue around them."""
    target = frac * host.area
    zones: BaseGeometry = Polygon()
    if target <= 0:
        return zones
    polys = sorted(_flat_polygons(host), key=lambda g: -g.area)
    for g in polys:
        if zones.area >= target:
            break
        req = math.sqrt(g.area / math.pi)
        r_max = 0.45 * req
        for _ in range(max(1, int(g.area / (per_area * math.pi * radius[0] ** 2)))):
            if zones.area >= target:
                break
            r = min(rng.uniform(*radius), r_max)
            if r < min_r:
                break
            room = g.buffer(-max(erode, 0.5 * r))
            if not zones.is_empty:
                room = room.difference(zones.buffer(r))
            pt = _random_point_in(rng, room)
            if pt is None:
                break
            z = _blob(
                rng, pt[0], pt[1], r, r * rng.uniform(0.7, 1.0), roughness=0.25, harmonics=10, n=120
            )
            zones = zones.union(z.intersection(g.buffer(-erode)))
    return _clean(zones.simplify(0.25), min_area=20.0)


# ---------------------------------------------------------------------------- cells


def _hex_points(
    rng: np.random.Generator, geom: BaseGeometry, spacing: float, jitter: float = 0.3
) -> np.ndarray:
    """Jittered hexagonal lattice points (µm) inside ``geom`` → (N, 2)."""
    if geom.is_empty:
        return np.zeros((0, 2))
    minx, miny, maxx, maxy = geom.bounds
    dy = spacing * math.sqrt(3) / 2
    xs = np.arange(minx - spacing + rng.uniform(0, spacing), maxx + spacing, spacing)
    ys = np.arange(miny - dy + rng.uniform(0, dy), maxy + dy, dy)
    X, Y = np.meshgrid(xs, ys)
    X = X + (np.arange(len(ys)) % 2)[:, None] * spacing / 2
    pts = np.column_stack([X.ravel(), Y.ravel()])
    pts = pts + rng.uniform(-jitter * spacing, jitter * spacing, pts.shape)
    shapely.prepare(geom)
    return pts[shapely.contains_xy(geom, pts[:, 0], pts[:, 1])]


def _thin(xy: np.ndarray, min_dist: float) -> np.ndarray:
    """Boolean keep-mask that drops later points closer than ``min_dist`` to a kept one."""
    keep = np.ones(len(xy), bool)
    if len(xy) < 2:
        return keep
    pairs = cKDTree(xy).query_pairs(min_dist, output_type="ndarray")
    for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]:
        if keep[i] and keep[j]:
            keep[j] = False
    return keep


def _far_from(xy: np.ndarray, other: np.ndarray, dist: float) -> np.ndarray:
    if len(other) == 0 or len(xy) == 0:
        return np.ones(len(xy), bool)
    d, _ = cKDTree(other).query(xy, k=1)
    return d >= dist


def _choose(
    rng: np.random.Generator, n_have: int, n_want: int, p: np.ndarray | None = None
) -> np.ndarray:
    if n_want >= n_have:
        return np.arange(n_have)
    if n_want <= 0:
        return np.zeros(0, np.int64)
    return np.sort(rng.choice(n_have, size=n_want, replace=False, p=p))


def _morphology(
    rng: np.random.Generator, kind: np.ndarray, angle: np.ndarray
) -> dict[str, np.ndarray]:
    """Nucleus/cytoplasm parameters per cell kind (µm). Small TC share the lymphocyte law."""
    n = kind.size
    a = np.zeros(n)
    b = np.zeros(n)
    theta = rng.uniform(0, np.pi, n)
    amp = rng.normal(0, 0.025, (n, 3))
    phase = rng.uniform(0, 2 * np.pi, (n, 3))
    dark = np.zeros(n)
    vesic = np.zeros(n)
    nucl = np.zeros(n)
    off = np.zeros((n, 2))
    cyto_r = np.zeros(n)
    cyto_s = np.zeros(n)

    m = (kind == LYMPHOCYTE) | (kind == TUMOUR_SMALL)  # identical law: the §6.5 ambiguity
    k = int(m.sum())
    r = np.clip(rng.normal(3.45, 0.3, k), 2.8, 4.2)
    a[m] = r
    b[m] = r * rng.uniform(0.86, 1.0, k)
    dark[m] = np.clip(rng.normal(1.55, 0.13, k), 1.2, 1.9)
    vesic[m] = rng.uniform(0.0, 0.12, k)

    m = kind == FIBROBLAST
    k = int(m.sum())
    a[m] = rng.uniform(5.5, 9.0, k)
    b[m] = rng.uniform(1.3, 2.1, k)
    theta[m] = angle[m] + rng.normal(0, 0.15, k)
    dark[m] = np.clip(rng.normal(1.2, 0.12, k), 0.9, 1.5)
    vesic[m] = rng.uniform(0.05, 0.2, k)

    m = kind == ENDOTHELIAL
    k = int(m.sum())
    a[m] = rng.uniform(4.0, 6.5, k)
    b[m] = rng.uniform(1.8, 2.8, k)
    theta[m] = angle[m] + rng.normal(0, 0.5, k)
    dark[m] = np.clip(rng.normal(1.05, 0.1, k), 0.8, 1.3)
    vesic[m] = rng.uniform(0.1, 0.3, k)

    m = kind == PLASMA
    k = int(m.sum())
    r = rng.uniform(3.8, 5.0, k)
    a[m] = r
    b[m] = r * rng.uniform(0.82, 1.0, k)
    dark[m] = np.clip(rng.normal(1.15, 0.1, k), 0.9, 1.4)
    vesic[m] = rng.uniform(0.2, 0.4, k)
    cyto_r[m] = r * rng.uniform(1.5, 1.8, k)
    cyto_s[m] = rng.uniform(0.25, 0.45, k)

    m = kind == TUMOUR
    k = int(m.sum())
    a[m] = rng.uniform(5.0, 8.0, k)
    b[m] = a[m] * rng.uniform(0.68, 0.95, k)
    amp[m] = rng.normal(0, 1.0, (k, 3)) * np.array([0.08, 0.05, 0.022])
    dark[m] = np.clip(rng.normal(0.85, 0.13, k), 0.55, 1.25)
    vesic[m] = rng.uniform(0.55, 0.95, k)
    has = rng.random(k) < 0.75
    nucl[m] = np.where(has, rng.uniform(0.6, 1.0, k), 0.0)
    off[m] = rng.uniform(-0.22, 0.22, (k, 2)) * b[m][:, None]
    cyto_r[m] = a[m] * rng.uniform(1.7, 2.1, k)
    cyto_s[m] = rng.uniform(0.6, 1.0, k)
    amp = np.clip(amp, -0.2, 0.2)
    return dict(
        a=a,
        b=b,
        theta=theta,
        amp=amp,
        phase=phase,
        dark=dark,
        vesic=vesic,
        nucleolus=nucl,
        nuc_off=off,
        cyto_r=cyto_r,
        cyto_s=cyto_s,
    )


def _dir_radius(a: np.ndarray, b: np.ndarray, theta: np.ndarray, ang: np.ndarray) -> np.ndarray:
    """Radius of an ellipse (semi-axes a, b, orientation theta) in direction ``ang``."""
    phi = ang - theta
    return a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)


def _resolve_overlaps(cells: CellTable) -> CellTable:
    """Shrink crowded classic tumour nuclei (down to 65 %), then drop the lower-priority
    cell of each pair that still overlaps. Earlier rows have higher priority."""
    n = len(cells)
    if n < 2:
        return cells
    for rnd in range(2):
        bound = cells.a * (1 + np.abs(cells.amp).sum(axis=1))
        pairs = cKDTree(cells.xy).query_pairs(2 * float(bound.max()), output_type="ndarray")
        if len(pairs) == 0:
            return cells
        i, j = pairs[:, 0], pairs[:, 1]
        d = cells.xy[j] - cells.xy[i]
        dist = np.hypot(d[:, 0], d[:, 1])
        ang = np.arctan2(d[:, 1], d[:, 0])
        gi = 1 + np.abs(cells.amp[i]).sum(axis=1)
        gj = 1 + np.abs(cells.amp[j]).sum(axis=1)
        need = (
            _dir_radius(cells.a[i], cells.b[i], cells.theta[i], ang) * gi
            + _dir_radius(cells.a[j], cells.b[j], cells.theta[j], ang) * gj
            + 0.6
        )
        bad = dist < need
        if rnd == 0:
            both = bad & (cells.kind[i] == TUMOUR) & (cells.kind[j] == TUMOUR)
            scale = np.ones(n)
            f = np.clip(dist[both] / need[both], 0.65, 1.0)
            np.minimum.at(scale, i[both], f)
            np.minimum.at(scale, j[both], f)
            cells.a = cells.a * scale
            cells.b = cells.b * scale
            cells.nuc_off = cells.nuc_off * scale[:, None]
            continue
        keep = np.ones(n, bool)
        for pi, pj in zip(i[bad], j[bad], strict=True):
            if keep[pi] and keep[pj]:
                keep[pj] = False
        if not keep.all():
            log.debug("dropped %d overlapping nuclei of %d", int((~keep).sum()), n)
        return cells.take(np.flatnonzero(keep))
    return cells


#: Stain protocols the demo weights never saw (``SyntheticParams`` overrides): ``blue-grey``, a
#: haematoxylin that reads blue-grey and a pale orange eosin (a progressive haematoxylin, an older
#: scanner's colour profile); ``dark-pink``, a strong, purplish haematoxylin under a saturated pink
#: eosin (a regressive protocol, over-staining). Slides of a domain differ from each other by the
#: usual per-slide jitter around it.
STAIN_DOMAINS: dict[str, dict[str, object]] = {
    "default": {},
    "blue-grey": {
        "stain_h": (0.72, 0.62, 0.31),
        "stain_e": (0.06, 0.55, 0.83),
        "stain_gain": (1.25, 0.7),
    },
    "dark-pink": {
        "stain_h": (0.45, 0.80, 0.40),
        "stain_e": (0.12, 0.92, 0.37),
        "stain_gain": (1.35, 1.4),
    },
}


def _make_stain(rng: np.random.Generator, p: SyntheticParams) -> Stain:
    h = np.asarray(p.stain_h, dtype=np.float64) + rng.normal(0, p.stain_jitter, 3)
    e = np.asarray(p.stain_e, dtype=np.float64) + rng.normal(0, p.stain_jitter, 3)
    h = np.clip(h, 0.05, None)
    e = np.clip(e, 0.05, None)
    return Stain(
        h_vec=h / np.linalg.norm(h),
        e_vec=e / np.linalg.norm(e),
        h_gain=float(rng.uniform(0.88, 1.12)) * p.stain_gain[0],
        e_gain=float(rng.uniform(0.85, 1.15)) * p.stain_gain[1],
        glass_od=float(rng.uniform(0.02, 0.04)),
    )


def build_tissue_model(
    width_um: float,
    height_um: float,
    seed: int = 0,
    params: SyntheticParams | None = None,
    *,
    empty: bool = False,
) -> TissueModel:
    """Build the tissue model of a ``width_um × height_um`` µm slide from ``seed``.

    ``empty=True`` gives glass only (no tissue, no cells). The result is independent of
    any MPP; render it with :func:`wsi_ocelot.synthetic.render.render_um`."""
    p = params or SyntheticParams()
    if width_um <= 0 or height_um <= 0:
        raise ValueError(f"slide extent must be positive, got {width_um} × {height_um} µm")
    W, H = float(width_um), float(height_um)
    ss = np.random.SeedSequence([int(seed), 0x0CE107])
    r_geo, r_field, r_cell, r_morph, r_stain = (np.random.default_rng(s) for s in ss.spawn(5))
    ext = (W, H)
    stain = _make_stain(r_stain, p)
    nest = Fbm(
        r_field,
        [(p.nest_scale_um, 1.0), (p.nest_scale_um / 2, 0.45), (p.nest_scale_um / 4, 0.15)],
        ext,
    )
    warps = (
        Fbm(r_field, [(130.0, 1.0), (45.0, 0.35), (12.0, 0.07)], ext),
        Fbm(r_field, [(90.0, 1.0), (30.0, 0.4), (10.0, 0.08)], ext),
    )
    fibre_theta = float(r_field.uniform(0, np.pi))
    texture = Fbm(r_field, [(60.0, 1.0), (18.0, 0.6), (6.0, 0.35)], ext)
    fine = Fbm(r_field, [(2.2, 1.0), (0.9, 0.8)], ext, max_nodes=384)
    fray = Fbm(r_field, [(9.0, 1.0), (3.0, 0.6)], ext, max_nodes=384)
    bundles = Fbm(r_field, [(25.0, 1.0), (10.0, 0.5)], ext)

    if empty:
        e = Polygon()
        return TissueModel(
            W,
            H,
            int(seed),
            p,
            e,
            e,
            e,
            e,
            CellTable.empty(),
            stain,
            nest,
            0.0,
            fibre_theta,
            warps,
            texture,
            fine,
            fray,
            bundles,
        )

    tissue = _make_tissue(r_geo, W, H, p)
    ca = _make_cancer_area(r_geo, tissue, p)
    zones = _place_zones(
        r_geo,
        ca,
        p.small_tc_zone_fraction,
        p.small_tc_zone_radius_um,
        erode=10.0,
        min_r=30.0,
        per_area=p.small_tc_zone_sparsity,
    )
    stroma_room = (
        tissue.difference(ca.buffer(35.0)).buffer(-15.0)
        if not ca.is_empty
        else tissue.buffer(-15.0)
    )
    aggs = _place_zones(
        r_geo,
        _clean(stroma_room, 100.0),
        p.lymph_aggregate_fraction,
        p.lymph_aggregate_radius_um,
        erode=5.0,
        min_r=30.0,
        per_area=p.lymph_aggregate_sparsity,
    )
    for g in (tissue, ca, zones, aggs):
        shapely.prepare(g)

    # Nest threshold: the (1 - nest_fraction) quantile of the nest field over CA \ zones.
    nest_room = ca.difference(zones) if not zones.is_empty else ca
    sample = _hex_points(r_field, nest_room, max(4.0, math.sqrt(max(nest_room.area, 1.0) / 4000)))
    t_nest = (
        float(np.quantile(nest.at(sample[:, 0], sample[:, 1]), 1 - p.nest_fraction))
        if len(sample)
        else 0.0
    )

    model = TissueModel(
        W,
        H,
        int(seed),
        p,
        tissue,
        ca,
        zones,
        aggs,
        CellTable.empty(),
        stain,
        nest,
        t_nest,
        fibre_theta,
        warps,
        texture,
        fine,
        fray,
        bundles,
    )
    model.cells = _make_cells(r_cell, r_morph, model)
    log.debug(
        "tissue model seed %d: %.0f×%.0f µm, tissue %.3f mm², CA %.1f %%, %d cells",
        seed,
        W,
        H,
        tissue.area / 1e6,
        100 * ca.area / max(tissue.area, 1e-9),
        len(model.cells),
    )
    return model


def _make_cells(
    rng: np.random.Generator, r_morph: np.random.Generator, m: TissueModel
) -> CellTable:
    p = m.params
    inner = m.tissue.buffer(-4.0)
    shapely.prepare(inner)
    ca, zones, aggs = m.cancer_area, m.small_tc_zones, m.lymph_aggregates

    def inside(g: BaseGeometry, xy: np.ndarray) -> np.ndarray:
        if g.is_empty or len(xy) == 0:
            return np.zeros(len(xy), bool)
        return shapely.contains_xy(g, xy[:, 0], xy[:, 1])

    # 1. Classic tumour cells in nests (CA, outside small-TC zones, nest field high).
    cand = _hex_points(rng, ca.intersection(inner), p.tumour_spacing_um, 0.25)
    cand = cand[~inside(zones, cand)]
    nf = m.nest_field.at(cand[:, 0], cand[:, 1]) if len(cand) else np.zeros(0)
    tc_classic = cand[(nf > m.nest_threshold + 0.05) & (rng.random(len(cand)) < 0.94)]
    tc_classic = tc_classic[_thin(tc_classic, 0.66 * p.tumour_spacing_um)]
    # 2. Small round dark tumour cells in the small-TC zones (lymphocyte-like packing).
    cand = _hex_points(rng, zones.intersection(inner), p.lymph_spacing_um, 0.3)
    tc_small = cand[rng.random(len(cand)) < 0.88]
    tc_small = tc_small[_thin(tc_small, 0.75 * p.lymph_spacing_um)]
    tc_in = np.concatenate([tc_classic, tc_small])
    # 3. Background cells in the CA septa, as many as Table 3 asks for.
    ratio_bc_in = (1 - p.bc_outside_ca) * (1 - p.tc_fraction) / (p.tc_in_ca * p.tc_fraction)
    n_bc_in = int(round(len(tc_in) * ratio_bc_in))
    cand = _hex_points(rng, ca.intersection(inner), p.stroma_spacing_um, 0.3)
    cand = cand[~inside(zones, cand)]
    if len(cand):
        nf = m.nest_field.at(cand[:, 0], cand[:, 1])
        cand = cand[
            (nf < m.nest_threshold - 0.05) & _far_from(cand, tc_in, 0.6 * p.tumour_spacing_um)
        ]
    if len(cand) < n_bc_in:
        log.debug("CA septa hold %d background-cell sites, %d wanted", len(cand), n_bc_in)
    bc_in = cand[_choose(rng, len(cand), n_bc_in)]
    # 4. Tumour cells outside CA: budding near the CA border.
    n_tc_out = int(round(len(tc_in) * (1 - p.tc_in_ca) / p.tc_in_ca))
    stroma = inner.difference(ca) if not ca.is_empty else inner
    cand = _hex_points(rng, stroma, p.stroma_spacing_um, 0.3)
    cand = cand[~inside(aggs, cand)]
    if len(cand) and not ca.is_empty:
        dist = shapely.distance(ca, shapely.points(cand))
        w = np.exp(-dist / p.budding_distance_um) + 1e-4
        pick = _choose(rng, len(cand), n_tc_out, w / w.sum())
    else:
        pick = _choose(rng, len(cand), n_tc_out)
    tc_out = cand[pick]
    rest = np.delete(cand, pick, axis=0)
    rest = rest[_far_from(rest, tc_out, 0.9 * p.stroma_spacing_um)]
    # 5. Background cells outside CA: lymphocyte aggregates, then scattered stroma cells.
    n_bc_out = int(round(len(bc_in) * p.bc_outside_ca / (1 - p.bc_outside_ca)))
    cand = _hex_points(rng, aggs.intersection(inner), p.lymph_spacing_um, 0.3)
    agg = cand[rng.random(len(cand)) < 0.88]
    agg = agg[_thin(agg, 0.75 * p.lymph_spacing_um)]
    if len(agg) > 0.6 * n_bc_out:
        agg = agg[_choose(rng, len(agg), int(0.6 * n_bc_out))]
    rest = rest[_far_from(rest, agg, 0.8 * p.stroma_spacing_um)]
    n_scatter = max(0, n_bc_out - len(agg))
    if len(rest) < n_scatter:
        log.debug("stroma holds %d background-cell sites, %d wanted", len(rest), n_scatter)
    bc_out = rest[_choose(rng, len(rest), n_scatter)]

    # (points, class, kind probabilities over KIND ids 0..5), in priority order
    groups: list[tuple[np.ndarray, int, list[float]]] = [
        (tc_classic, TC, [0, 0, 0, 0, 1, 0]),
        (tc_small, TC, [0, 0, 0, 0, 0, 1]),
        (tc_out, TC, [0, 0, 0, 0, 0.8, 0.2]),
        (agg, BC, _aggregate_kinds(p.lymph_aggregate_purity)),
        (bc_in, BC, [0.42, 0.38, 0.12, 0.08, 0, 0]),
        (bc_out, BC, [0.22, 0.56, 0.12, 0.10, 0, 0]),
    ]
    xy = (
        np.concatenate([g[0] for g in groups])
        if any(len(g[0]) for g in groups)
        else np.zeros((0, 2))
    )
    if len(xy) == 0:
        return CellTable.empty()
    cls = np.concatenate([np.full(len(g[0]), g[1], np.int8) for g in groups])
    kind = np.concatenate(
        [
            r_morph.choice(6, size=len(g[0]), p=np.asarray(g[2], float) / sum(g[2])).astype(np.int8)
            for g in groups
        ]
    )
    angle = m.fibre_angle(xy[:, 0], xy[:, 1])
    morph = _morphology(r_morph, kind, angle)
    cells = CellTable(xy=xy, cls=cls, kind=kind, **morph)
    cells = _resolve_overlaps(cells)
    cells = _rebalance(rng, cells, ca, p)
    order = np.lexsort((cells.xy[:, 0], cells.xy[:, 1]))  # row-major, stable output order
    return cells.take(order)


def _aggregate_kinds(purity: float) -> list[float]:
    """Kind probabilities of aggregate cells: ``purity`` lymphocytes, the rest plasma (5/7)
    and endothelial (2/7) cells; 0.93 gives exactly the original [0.93, 0, 0.02, 0.05]."""
    if purity == 0.93:
        return [0.93, 0, 0.02, 0.05, 0, 0]
    rest = 1.0 - purity
    return [purity, 0, rest * 2 / 7, rest * 5 / 7, 0, 0]


def _rebalance(
    rng: np.random.Generator, cells: CellTable, ca: BaseGeometry, p: SyntheticParams
) -> CellTable:
    """Drop surplus cells so that the Table-3 ratios hold after overlap removal."""
    if len(cells) == 0:
        return cells
    inca = (
        shapely.contains_xy(ca, cells.xy[:, 0], cells.xy[:, 1])
        if not ca.is_empty
        else np.zeros(len(cells), bool)
    )
    tc = cells.cls == TC
    drop: list[np.ndarray] = []

    def surplus(mask: np.ndarray, want: int) -> None:
        idx = np.flatnonzero(mask)
        if idx.size > want:
            drop.append(rng.choice(idx, size=idx.size - want, replace=False))

    n_tc_in = int((tc & inca).sum())
    surplus(tc & ~inca, int(round(n_tc_in * (1 - p.tc_in_ca) / p.tc_in_ca)))
    n_bc_in, n_bc_out = int((~tc & inca).sum()), int((~tc & ~inca).sum())
    if n_bc_out < n_bc_in * p.bc_outside_ca / (1 - p.bc_outside_ca):
        surplus(~tc & inca, int(round(n_bc_out * (1 - p.bc_outside_ca) / p.bc_outside_ca)))
    else:
        surplus(~tc & ~inca, int(round(n_bc_in * p.bc_outside_ca / (1 - p.bc_outside_ca))))
    if not drop:
        return cells
    keep = np.ones(len(cells), bool)
    keep[np.concatenate(drop)] = False
    return cells.take(np.flatnonzero(keep))
