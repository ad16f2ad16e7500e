"""A synthetic dataset in the OCELOT release layout, cut from synthetic slides.

For each split, fresh synthetic slides (one seed per slide, so no slide is shared
between splits) each give 1–3 cell/tissue pairs, as OCELOT's 1–3 ROIs per WSI:

* ``images/{split}/cell/NNN.jpg`` — the cell patch (``tile_size`` px at ``cell_mpp``);
* ``images/{split}/tissue/NNN.jpg`` — its context (``context_factor`` × the field of
  view at ``tissue_mpp``), with the cell patch centre at one of OCELOT's four positions
  (0.125 or 0.625 in x and y);
* ``annotations/{split}/cell/NNN.csv`` — ``x,y,class`` in cell-patch px, no header;
* ``annotations/{split}/tissue/NNN.png`` — 1 = BG, 2 = CA, 255 = unknown (a thin band
  on the CA border, where even a pathologist hesitates);
* ``metadata.json`` — OCELOT's keys; ``sample_pairs`` with level-0 boxes on the slide
  that ``wsi-ocelot synth-slide --seed S --size W H --mpp 0.25`` regenerates.

Pixels are rendered straight from the slide's tissue model at the target MPP (the same
tissue a TIFF of the slide holds) and saved as JPEG like the release.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import shapely
from PIL import Image
from scipy import ndimage as ndi

from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.errors import ConfigError
from wsi_ocelot.synthetic.layout import SyntheticParams
from wsi_ocelot.synthetic.slide import SyntheticSlide, make_synthetic_slide
from wsi_ocelot.tiling.export import OCELOT_OFFSETS, write_metadata
from wsi_ocelot.tiling.grid import context_boxes

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

#: Organ presets: OCELOT's six organs, each a variation of the tissue model.
ORGANS: dict[str, dict[str, Any]] = {
    "kidney": {"ca_fraction": 0.42, "small_tc_zone_fraction": 0.22, "stain_jitter": 0.07},
    "endometrium": {"ca_fraction": 0.45, "nest_fraction": 0.70},
    "bladder": {
        "ca_fraction": 0.38,
        "small_tc_zone_fraction": 0.25,
        "lymph_aggregate_fraction": 0.14,
    },
    "prostate": {"ca_fraction": 0.36, "nest_scale_um": 34.0},
    "stomach": {"ca_fraction": 0.40, "lymph_aggregate_fraction": 0.16},
    "head-and-neck": {"ca_fraction": 0.44, "tumour_spacing_um": 15.5, "stain_jitter": 0.08},
}

#: At ``ambiguity`` 1: the share of CA held by small round dark TC and of stroma held by
#: lymphocyte aggregates, and the factor on the radii of those regions and of the CA blobs.
AMBIGUOUS_ZONE_FRACTION = 0.45
AMBIGUOUS_AGGREGATE_FRACTION = 0.25
AMBIGUOUS_RADIUS_FACTOR = 2.0
AMBIGUOUS_SPARSITY = 1.5


def ambiguous_params(params: SyntheticParams, ambiguity: float) -> SyntheticParams:
    """``params`` with more of the paper's §6.5 ambiguity: ``ambiguity`` in [0, 1].

    Small round dark tumour cells (TC, inside CA) share the lymphocyte morphology and the
    pale cellular background of lymphocyte aggregates (BC, in the stroma); at 0 their zones
    are small (75–125 µm radius) and sit among tumour nests that the cell patch also sees,
    so morphology plus the patch's own surroundings nearly decide the class. Raising
    ``ambiguity`` makes those zones and the aggregates larger (radii up to
    ``AMBIGUOUS_RADIUS_FACTOR`` ×, CA blobs with them) and more common, and the aggregates
    purer (up to lymphocytes only, as the zones hold small TC only), so that a cell patch
    (~200 µm at 0.2 µm/px) often lies wholly inside one: the cells look the same on both
    sides and only the tissue region (CA or not) decides the label, as in the paper.
    Table 3's ratios (93 % TC in CA, 85 % BC outside, 35 % TC) are kept; 0 returns
    ``params`` unchanged.
    """
    a = float(ambiguity)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"ambiguity must be in [0, 1], got {ambiguity}")
    if a == 0.0:
        return params
    k = 1.0 + a * (AMBIGUOUS_RADIUS_FACTOR - 1.0)

    def grow(r: tuple[float, float]) -> tuple[float, float]:
        return (r[0] * k, r[1] * k)

    zf, af = params.small_tc_zone_fraction, params.lymph_aggregate_fraction
    return dataclasses.replace(
        params,
        ca_radius_um=grow(params.ca_radius_um),
        small_tc_zone_radius_um=grow(params.small_tc_zone_radius_um),
        small_tc_zone_fraction=zf + a * max(0.0, AMBIGUOUS_ZONE_FRACTION - zf),
        lymph_aggregate_radius_um=grow(params.lymph_aggregate_radius_um),
        lymph_aggregate_fraction=af + a * max(0.0, AMBIGUOUS_AGGREGATE_FRACTION - af),
        small_tc_zone_sparsity=params.small_tc_zone_sparsity
        + a * (AMBIGUOUS_SPARSITY - params.small_tc_zone_sparsity),
        lymph_aggregate_sparsity=params.lymph_aggregate_sparsity
        + a * (AMBIGUOUS_SPARSITY - params.lymph_aggregate_sparsity),
        lymph_aggregate_purity=params.lymph_aggregate_purity
        + a * (1.0 - params.lymph_aggregate_purity),
    )


@dataclass(frozen=True)
class SyntheticDatasetConfig:
    """What :func:`write_synthetic_dataset` makes. Pair counts per split; the slide is
    ``slide_size_um`` square at ``slide_mpp`` µm/px."""

    seed: int = 0
    train: int = 40
    val: int = 12
    test: int = 12
    geometry: GeometryConfig = GeometryConfig()
    slide_mpp: float = 0.25
    slide_size_um: float = 1700.0
    max_pairs_per_slide: int = 3
    unknown_band_px: int = 2
    quality: int = 95
    ambiguity: float = 0.0  # see ambiguous_params; 0 = the default tissue (the demo weights' data)

    def __post_init__(self) -> None:
        if not 0.0 <= self.ambiguity <= 1.0:
            raise ConfigError(
                None,
                f"ambiguity {self.ambiguity:g} is outside [0, 1]",
                "pass a value from 0 (default tissue) to 1",
            )


def _slide_seed(seed: int, split: str, index: int) -> int:
    # Disjoint per split and per dataset seed; stable across runs.
    return int(
        np.random.SeedSequence([seed, SPLITS.index(split), index]).generate_state(1)[0]
        % (2**31 - 1)
    )


def _tissue_label(slide: SyntheticSlide, box: np.ndarray, size: int, band: int) -> np.ndarray:
    """1 = BG, 2 = CA, 255 = unknown band on the CA border, for the level-0 ``box``
    rendered at ``size`` px (pixel centres tested against the CA polygons)."""
    x, y, w, h = (float(v) for v in box)
    c = (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(x + c * w, y + c * h)
    ca = slide.cancer_area_in_box((x - 1, y - 1, w + 2, h + 2))
    inside = shapely.contains_xy(ca, xx, yy) if not ca.is_empty else np.zeros((size, size), bool)
    label = np.where(inside, 2, 1).astype(np.uint8)
    if band > 0 and inside.any() and not inside.all():
        st = ndi.generate_binary_structure(2, 1)
        edge = ndi.binary_dilation(inside, st, band) & ~ndi.binary_erosion(inside, st, band)
        label[edge] = 255
    return label


def _pick_pairs(
    slide: SyntheticSlide, rng: np.random.Generator, n: int, tile_l0: int, factor: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` non-overlapping cell boxes on tissue whose context (at a random OCELOT
    offset) lies inside the slide. Returns (boxes (k, 4), offsets (k, 2))."""
    W, H = slide.size
    ctx = tile_l0 * factor
    boxes: list[list[int]] = []
    offs: list[list[float]] = []
    tries = 0
    while len(boxes) < n and tries < 400:
        tries += 1
        ox, oy = rng.choice(np.asarray(OCELOT_OFFSETS), size=2)
        # context top-left = cell centre − offset × context size, must stay in the slide
        cx_lo, cx_hi = ox * ctx, W - (1 - ox) * ctx
        cy_lo, cy_hi = oy * ctx, H - (1 - oy) * ctx
        if cx_hi <= cx_lo or cy_hi <= cy_lo:
            raise ValueError(f"slide {W}x{H} px is too small for a {ctx} px context")
        cx, cy = rng.uniform(cx_lo, cx_hi), rng.uniform(cy_lo, cy_hi)
        box = [int(round(cx - tile_l0 / 2)), int(round(cy - tile_l0 / 2)), tile_l0, tile_l0]
        if any(abs(box[0] - b[0]) < tile_l0 and abs(box[1] - b[1]) < tile_l0 for b in boxes):
            continue
        cell_region = shapely.box(box[0], box[1], box[0] + tile_l0, box[1] + tile_l0)
        if slide.tissue.intersection(cell_region).area < 0.6 * cell_region.area:
            continue
        boxes.append(box)
        offs.append([float(ox), float(oy)])
    return np.asarray(boxes, np.int64).reshape(-1, 4), np.asarray(offs, np.float64).reshape(-1, 2)


def _render_slide(
    job: tuple[str, int, int, int, SyntheticDatasetConfig],
) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Render the pairs of one synthetic slide: [(metadata entry, {relative path: bytes})]."""
    split, slide_index, sseed, want, config = job
    geo = config.geometry
    T, f = geo.tile_size, geo.context_factor
    tile_l0 = 2 * round(T * geo.cell_mpp / config.slide_mpp / 2)
    size_px = int(round(config.slide_size_um / config.slide_mpp))
    organs = list(ORGANS)
    organ = organs[(sseed + slide_index) % len(organs)]
    params = ambiguous_params(
        dataclasses.replace(SyntheticParams(), **ORGANS[organ]), config.ambiguity
    )
    slide = make_synthetic_slide(
        mpp=config.slide_mpp, size=(size_px, size_px), seed=sseed, params=params
    )
    rng = np.random.default_rng(sseed)
    k = int(rng.integers(1, config.max_pairs_per_slide + 1))
    boxes, offs = _pick_pairs(slide, rng, min(k, want), tile_l0, f)
    ctx = context_boxes(boxes, f, offs)
    name = f"synthetic_{split}_{slide_index:03d}_seed{sseed}"
    out: list[tuple[dict[str, Any], dict[str, bytes]]] = []

    def jpeg(img: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=config.quality)
        return buf.getvalue()

    for box, cbox, off in zip(boxes, ctx, offs, strict=True):
        cell_img = slide.render(tuple(box), box[2] * config.slide_mpp / T)
        tissue_img = slide.render(tuple(cbox), cbox[2] * config.slide_mpp / T)
        cells = slide.cells_in_box(tuple(box))
        px = (cells[:, :2] - box[:2]) * (T / box[2])
        xy = np.clip(np.floor(px), 0, T - 1).astype(int)
        lines = [f"{x},{y},{int(c)}" for (x, y), c in zip(xy, cells[:, 2], strict=True)]
        label = _tissue_label(slide, cbox, T, config.unknown_band_px)
        png = io.BytesIO()
        Image.fromarray(label).save(png, format="PNG")
        mx = my = config.slide_mpp
        entry = {
            "slide_name": name,
            "cell": {
                "x_start": int(box[0]),
                "y_start": int(box[1]),
                "x_end": int(box[0] + box[2]),
                "y_end": int(box[1] + box[3]),
                "resized_mpp_x": box[2] * mx / T,
                "resized_mpp_y": box[3] * my / T,
            },
            "tissue": {
                "x_start": int(cbox[0]),
                "y_start": int(cbox[1]),
                "x_end": int(cbox[0] + cbox[2]),
                "y_end": int(cbox[1] + cbox[3]),
                "resized_mpp_x": cbox[2] * mx / T,
                "resized_mpp_y": cbox[3] * my / T,
            },
            "patch_x_offset": float(off[0]),
            "patch_y_offset": float(off[1]),
            "mpp_x": mx,
            "mpp_y": my,
            "organ": organ,
            "subset": split,
            "slide_seed": sseed,
            "slide_size": [size_px, size_px],
        }
        files = {
            "images/cell": jpeg(cell_img),
            "images/tissue": jpeg(tissue_img),
            "annotations/cell": ("\n".join(lines) + ("\n" if lines else "")).encode(),
            "annotations/tissue": png.getvalue(),
        }
        out.append((entry, files))
    return out


class _ExtraMetadata(TypedDict, total=False):
    """Top-level metadata.json keys written only where they apply."""

    ambiguity: float


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    config: SyntheticDatasetConfig = SyntheticDatasetConfig(),
    *,
    workers: int = 0,
) -> Path:
    """Write the dataset and return the path of its ``metadata.json``.

    ``workers`` > 0 renders that many slides at once in worker processes; the files are
    the same bytes either way (ids follow split, slide and pair order)."""
    out = Path(out_dir)
    ext = {
        "images/cell": "jpg",
        "images/tissue": "jpg",
        "annotations/cell": "csv",
        "annotations/tissue": "png",
    }
    pairs: dict[str, dict[str, Any]] = {}
    next_id = 1
    pool = None
    if workers > 0:
        pool = mp.get_context("spawn").Pool(workers)
    try:
        for split in SPLITS:
            want = int(getattr(config, split))
            for sub in ("images", "annotations"):
                for kind in ("cell", "tissue"):
                    (out / sub / split / kind).mkdir(parents=True, exist_ok=True)
            made, slide_index = 0, 0
            while made < want:
                # a batch of slides; each yields at most max_pairs_per_slide pairs
                n_jobs = max(1, min(workers or 1, want - made))
                jobs = [
                    (
                        split,
                        slide_index + j,
                        _slide_seed(config.seed, split, slide_index + j),
                        want,
                        config,
                    )
                    for j in range(n_jobs)
                ]
                results = (
                    pool.map(_render_slide, jobs) if pool is not None else [_render_slide(jobs[0])]
                )
                for pairs_of_slide in results:
                    slide_index += 1
                    for entry, files in pairs_of_slide:
                        if made >= want:
                            break
                        pid = f"{next_id:03d}"
                        for key, data in files.items():
                            sub, kind = key.split("/")
                            (out / sub / split / kind / f"{pid}.{ext[key]}").write_bytes(data)
                        pairs[pid] = entry
                        next_id += 1
                        made += 1
                    if made >= want:
                        break
            log.info("%s: %d pairs from %d synthetic slides", split, made, slide_index)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    extra: _ExtraMetadata = {"ambiguity": config.ambiguity} if config.ambiguity else {}
    return write_metadata(
        out,
        pairs,
        config.geometry,
        dataset="wsi-ocelot synthetic",
        seed=config.seed,
        splits={s: int(getattr(config, s)) for s in SPLITS},
        slide_mpp=config.slide_mpp,
        **extra,
    )
