"""An OCELOT-layout dataset from slides annotated in QuPath (``wsi-ocelot tiles --annotations``).

For each slide, its QuPath export (``wsi_ocelot.datasets.qupath``) gives the regions where every
nucleus is marked, the marked cells and the area polygons. Cell tiles (``tile_size`` px at
``cell_mpp``) are laid over each region's bounding box as a grid of non-overlapping tiles,
centred on the box and kept inside the image where it fits; a tile with less than
``min_region_fraction`` of its area in the region is skipped. Each tile's context is
``context_factor`` × its field of view, centred (the engine's convention) or at one of OCELOT's
four positions (``offsets="ocelot"``). Images and ``sample_pairs`` entries come from
:func:`~wsi_ocelot.tiling.export.export_pairs`, labels from
:func:`~wsi_ocelot.tiling.export.write_labels`:

* ``annotations/{split}/cell/NNN.csv``: the marked cells inside the slide's regions (of the
  tile's split) and inside the tile, in cell-patch px;
* ``annotations/{split}/cell_mask/NNN.png``: 1 where the tile lies in those regions, 0 unknown;
* ``annotations/{split}/tissue/NNN.png``: the area polygons over the context (1 BG, 2 CA,
  255 unknown).

**Splits are by slide.** Every region of a slide goes to the same split, so held-out pairs come
from slides the model never trained on (:class:`SplitRule`: ``split`` puts a whole call in one
split, ``val_slides``/``test_slides`` name slides, otherwise ``val_fraction`` of the slides,
picked by a hash of their names, go to val). ``by_region`` holds out regions instead (for a
single slide); it is warned about, since those val pairs are not independent of training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from wsi_ocelot import __version__
from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.datasets.qupath import (
    ClassMap,
    Region,
    SlideAnnotations,
    cells_in_box,
    rasterise,
    read_slide_annotations,
    tissue_label,
)
from wsi_ocelot.errors import ConfigError, DatasetError
from wsi_ocelot.slide import Slide, open_slide
from wsi_ocelot.tiling.export import export_pairs, pair_offsets, write_labels, write_metadata
from wsi_ocelot.tiling.grid import make_grid

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: Names QuPath gives an export of image ``STEM``: its default (``.geojson``) and the other forms it writes.
ANNOTATION_SUFFIXES = (".geojson", ".geojson.gz", ".json", ".json.gz", ".zip")
#: Descriptions of the per-pair fields this builder adds to ``sample_pairs``.
FIELDS = {
    "region": "the QuPath region the cell tile was laid over: its number among the slide's regions (file order), name and object id",
    "labelled_fraction": "fraction of the cell patch inside the slide's regions (where annotations/{split}/cell_mask is 1)",
    "organ": "organ (null: not recorded in QuPath)",
    "subset": "split (train / val / test)",
}


def _hash_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _n_held_out(n: int, fraction: float) -> int:
    """How many of ``n`` items go to val: ``round(n · fraction)``, at least 1 when there are two
    or more (and ``fraction`` > 0), never all of them."""
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * fraction)))


@dataclass(frozen=True)
class SplitRule:
    """How slides (or, with ``by_region``, regions) are assigned to train / val / test.

    * ``split``: every slide of the call goes there (build val and test in calls of their own,
      with ``append``);
    * ``test_slides`` / ``val_slides``: these slides (by stem or file name) go there; with
      ``val_slides`` the rest go to train;
    * otherwise ``val_fraction`` of the (other) slides (``round(n · f)``, at least one of two or
      more) go to val, the rest to train; which ones is fixed by a hash of their stems, so the
      same slides give the same split whatever their order;
    * ``by_region``: the same fraction, of each slide's regions instead of the slides: for a
      single slide; its val pairs come from a slide the model trains on (warned).
    """

    split: str | None = None
    val_slides: tuple[str, ...] = ()
    test_slides: tuple[str, ...] = ()
    val_fraction: float = 0.2
    by_region: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "val_slides", tuple(self.val_slides))
        object.__setattr__(self, "test_slides", tuple(self.test_slides))
        if self.split is not None and self.split not in SPLITS:
            raise ConfigError(
                None, f"unknown split {self.split!r}", f"use one of {', '.join(SPLITS)}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(
                None,
                f"--val-fraction {self.val_fraction:g} is outside [0, 1)",
                "pass e.g. 0.2 (0: no val split)",
            )
        named = bool(self.val_slides or self.test_slides)
        if self.split is not None and (named or self.by_region):
            raise ConfigError(
                None,
                "--split puts every slide of the call in one split; it does not combine with --val-slides, "
                "--test-slides or --split-by-region",
                "pass either --split or the others",
            )
        if self.by_region and self.val_slides:
            raise ConfigError(
                None,
                "--split-by-region does not combine with --val-slides",
                "name held-out slides, or split one slide's regions, not both",
            )
        both = set(self.val_slides) & set(self.test_slides)
        if both:
            raise ConfigError(
                None,
                f"slide(s) {', '.join(sorted(both))} named in both --val-slides and --test-slides",
                "name each slide once",
            )

    def describe(self) -> str:
        """The rule in words (recorded in metadata.json)."""
        if self.split is not None:
            return f"every slide of the call in {self.split}"
        test = "the --test-slides in test; " if self.test_slides else ""
        if self.val_slides:
            return f"by slide: {test}the --val-slides in val; the others train"
        if self.by_region:
            return (
                f"{test}by region: {self.val_fraction:g} of each slide's regions in val (picked by a hash of slide and region); "
                "val pairs come from slides also used for training"
            )
        return (
            f"by slide: {test}{self.val_fraction:g} of the slides in val (at least one of two or more; picked by a hash of the "
            "slide names), the rest train"
        )

    def assign(
        self, regions: dict[str, list[int]], names: dict[str, set[str]] | None = None
    ) -> dict[tuple[str, int], str]:
        """The split of each ``(slide stem, region index)``. ``regions`` maps each slide's stem to
        its region indices; ``names`` maps a stem to the names a user may call it by (file name,
        path). Names in ``val_slides``/``test_slides`` that match no slide are an error."""
        names = names or {s: {s} for s in regions}
        if self.split is not None:
            return {(s, i): self.split for s, idx in regions.items() for i in idx}
        out_of: dict[str, str] = {}
        for split, wanted in (("val", self.val_slides), ("test", self.test_slides)):
            for w in wanted:
                hits = [s for s in regions if w == s or w in names.get(s, ())]
                if not hits:
                    raise ConfigError(
                        None,
                        f"--{split}-slides names {w!r}, which is not one of this call's slides ({', '.join(regions)})",
                        "name slides by their file stem, e.g. --val-slides case-07",
                    )
                for s in hits:
                    out_of[s] = split
        if self.val_slides:
            return {(s, i): out_of.get(s, "train") for s, idx in regions.items() for i in idx}
        rest = [s for s in regions if s not in out_of]
        if self.by_region:
            out: dict[tuple[str, int], str] = {}
            for s, idx in regions.items():
                held_regions = set(
                    sorted(idx, key=lambda i: _hash_key(f"{s}#{i}"))[
                        : _n_held_out(len(idx), self.val_fraction)
                    ]
                )
                out.update({(s, i): "val" if i in held_regions else "train" for i in idx})
            return out
        held = set(sorted(rest, key=_hash_key)[: _n_held_out(len(rest), self.val_fraction)])
        return {
            (s, i): out_of.get(s, "val" if s in held else "train")
            for s, idx in regions.items()
            for i in idx
        }


@dataclass(frozen=True)
class AnnotatedTilingConfig:
    """What :func:`build_annotated_dataset` makes.

    ``geometry_from`` records where the geometry came from (a checkpoint: ``--like``);
    ``qupath_crop`` False reads coordinates in OpenSlide's uncropped frame (QuPath images added
    with ``--no-crop``)."""

    geometry: GeometryConfig = GeometryConfig()
    class_map: ClassMap = ClassMap()
    split: SplitRule = SplitRule()
    offsets: str = "centre"
    seed: int = 0
    min_region_fraction: float = 0.05
    qupath_crop: bool = True
    quality: int = 95
    geometry_from: str | None = None

    def __post_init__(self) -> None:
        if self.offsets not in ("centre", "ocelot"):
            raise ConfigError(
                None,
                f"offsets must be 'centre' or 'ocelot', got {self.offsets!r}",
                "use centre (as the engine) or ocelot",
            )
        if not 0.0 < self.min_region_fraction <= 1.0:
            raise ConfigError(
                None,
                f"min_region_fraction {self.min_region_fraction:g} is outside (0, 1]",
                "use a small fraction such as 0.05",
            )


@dataclass(frozen=True)
class AnnotatedDataset:
    """What a build wrote: ``metadata`` (the path of metadata.json), the new ``pairs`` (id →
    entry), ``splits`` (split → slide stems of this call) and ``counts`` per slide."""

    metadata: Path
    pairs: dict[str, dict[str, Any]]
    splits: dict[str, list[str]]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def n_pairs(self, split: str) -> int:
        return sum(1 for e in self.pairs.values() if e.get("subset") == split)


# --------------------------------------------------------------------------- pieces


def annotation_file_for(annotations: str | os.PathLike[str], stem: str) -> Path:
    """The QuPath export of slide ``stem``: ``annotations`` itself when it is a file, else
    ``annotations/<stem>.geojson`` (QuPath's default name; ``.geojson.gz``, ``.json`` and
    ``.zip`` too; for ``x.ome.tiff`` also ``x.geojson``, as QuPath strips ``.ome.tiff``)."""
    a = Path(annotations)
    if a.is_file():
        return a
    if not a.is_dir():
        raise DatasetError(
            a,
            "annotations not found",
            "pass the GeoJSON file QuPath exported (one slide) or a folder of <slide stem>.geojson files",
        )
    stems = [stem] + ([stem[:-4]] if stem.lower().endswith(".ome") else [])
    for s in stems:
        for suffix in ANNOTATION_SUFFIXES:
            if (a / f"{s}{suffix}").is_file():
                return a / f"{s}{suffix}"
    raise DatasetError(
        a,
        f"no {stem}.geojson for slide {stem} in the annotations folder",
        "export that slide's annotations from QuPath into this folder under QuPath's default name <slide stem>.geojson, "
        "or leave the slide out",
    )


def tile_size_l0(slide: Slide, geometry: GeometryConfig) -> int:
    """Level-0 px per side of a cell tile on ``slide`` (the slide engine's rounding)."""
    return make_grid(1, 1, slide.mpp, geometry.cell_mpp, geometry.tile_size, 0).tile_l0


def region_cell_boxes(
    region: BaseGeometry,
    tile_l0: int,
    image_box: tuple[int, int, int, int],
    min_fraction: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Cell boxes ``(k, 4)`` (``x, y, w, h``, level-0 px) covering ``region``'s bounding box and
    the fraction of each inside ``region``.

    A grid of ``ceil(extent / tile_l0)`` non-overlapping tiles per axis, centred on the bounding
    box and shifted inside ``image_box`` where it fits; tiles with less than ``min_fraction`` of
    their area in the region are left out (for a rectangle that only happens to a region smaller
    than ``min_fraction`` of one tile, which keeps its one tile: the edge tiles of a centred grid
    hold more than half a tile of it along each axis)."""
    if region.is_empty:
        return np.zeros((0, 4), np.int64), np.zeros(0)
    x0, y0, x1, y1 = region.bounds
    ix, iy, iw, ih = image_box

    def starts(a0: float, a1: float, lo: int, size: int) -> np.ndarray:
        n = max(1, math.ceil((a1 - a0) / tile_l0 - 1e-9))
        span = n * tile_l0
        start = math.floor((a0 + a1) / 2 - span / 2)
        if span <= size:
            start = min(max(start, lo), lo + size - span)
        return start + tile_l0 * np.arange(n, dtype=np.int64)

    yy, xx = np.meshgrid(starts(y0, y1, iy, ih), starts(x0, x1, ix, iw), indexing="ij")
    xs, ys = xx.ravel(), yy.ravel()
    tiles = shapely.box(xs, ys, xs + tile_l0, ys + tile_l0)
    frac = shapely.area(shapely.intersection(region, tiles)) / float(tile_l0 * tile_l0)
    keep = frac >= min_fraction
    if (
        not keep.any() and frac.max() > 0
    ):  # a region smaller than min_fraction of a tile still gives its one tile
        keep[int(np.argmax(frac))] = True
    boxes = np.stack([xs, ys, np.full_like(xs, tile_l0), np.full_like(ys, tile_l0)], axis=1)[keep]
    return boxes.astype(np.int64), frac[keep]


def _image_box(slide: Slide, qupath_crop: bool) -> tuple[int, int, int, int]:
    w, h = slide.dimensions
    return slide.bounds if qupath_crop else (0, 0, w, h)


def _existing(out: Path, append: bool) -> dict[str, Any] | None:
    """The dataset already in ``out`` (its metadata.json) when appending; errors when ``out``
    holds one and ``append`` is off, or holds files of a dataset without its metadata.json."""
    meta_path = out / "metadata.json"
    if meta_path.is_file():
        if not append:
            raise DatasetError(
                out,
                "already holds a dataset (metadata.json)",
                "pass --append to add these slides to it (e.g. a val split), or choose an empty --out",
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(
                meta_path, f"not valid JSON ({err})", "choose an empty --out"
            ) from err
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("sample_pairs"), dict)
            or "class_map" not in meta.get("general_info", {})
        ):
            raise DatasetError(
                meta_path,
                "is not a dataset built from QuPath annotations",
                "choose an empty --out, or the --out of an earlier `tiles --annotations`",
            )
        return meta
    if (out / "images").exists() or (out / "annotations").exists():
        raise DatasetError(
            out,
            "holds images/ or annotations/ but no metadata.json (an interrupted build?)",
            "remove the folder or choose an empty --out",
        )
    return None


def _check_compatible(
    old: dict[str, Any], geometry: GeometryConfig, class_map: ClassMap, out: Path
) -> None:
    """Appending: the dataset in ``out`` must have this call's geometry and class map."""
    gi = old.get("general_info", {})
    if gi.get("geometry") != asdict(geometry):
        raise DatasetError(
            out / "metadata.json",
            f"the dataset was built with geometry {gi.get('geometry')}, this call uses {asdict(geometry)}",
            "pass the same --like / --geometry / --tile-size as the first call, or choose another --out",
        )
    if gi.get("class_map") != class_map.to_json():
        raise DatasetError(
            out / "metadata.json",
            "the dataset was built with another class map",
            "pass the same --class-map as the first call, or choose another --out",
        )


def _merge_general(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if old is None:
        return new
    gi = old.get("general_info", {})
    merged = {**new}
    merged["annotations"] = {**gi.get("annotations", {}), **new["annotations"]}
    merged["splits"] = {
        s: list(gi.get("splits", {}).get(s, []))
        + [x for x in new["splits"].get(s, []) if x not in gi.get("splits", {}).get(s, [])]
        for s in SPLITS
    }
    rules = gi.get("split_rule")
    merged["split_rule"] = [
        *(rules if isinstance(rules, list) else [rules] if rules else []),
        new["split_rule"],
    ]
    return merged


# --------------------------------------------------------------------------- the build


def build_annotated_dataset(
    slides: Sequence[str | os.PathLike[str] | Slide],
    annotations: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: AnnotatedTilingConfig = AnnotatedTilingConfig(),
    *,
    mpp: float | None = None,
    append: bool = False,
) -> AnnotatedDataset:
    """Write one OCELOT-layout dataset from annotated slides; see the module docstring.

    ``slides`` are paths (opened with ``mpp`` as override) or open :class:`Slide` objects;
    ``annotations`` is one GeoJSON file (a single slide) or a folder of ``<slide stem>.geojson``.
    Every slide's annotations are read and checked before anything is written. ``append`` adds
    to the dataset already in ``out_dir`` (same geometry and class map; its slides may not
    come again): ids continue after its last."""
    out = Path(out_dir)
    cfg = config
    ann_root = Path(annotations)
    if ann_root.is_file() and len(slides) > 1:
        raise DatasetError(
            ann_root,
            f"one GeoJSON file for {len(slides)} slides",
            "pass a folder holding <slide stem>.geojson per slide (QuPath's default export names)",
        )
    old = _existing(out, append)
    if old is not None:
        _check_compatible(old, cfg.geometry, cfg.class_map, out)
    old_pairs: dict[str, dict[str, Any]] = old["sample_pairs"] if old else {}
    done = {str(e.get("slide_name")) for e in old_pairs.values()}

    with contextlib.ExitStack() as stack:
        opened: list[Slide] = []
        for s in slides:
            opened.append(
                s if isinstance(s, Slide) else stack.enter_context(open_slide(s, mpp=mpp))
            )
        stems = [s.stem for s in opened]
        dup = sorted({x for x in stems if stems.count(x) > 1})
        if dup:
            raise DatasetError(
                opened[stems.index(dup[0])].path,
                f"several slides share the name {dup[0]!r}",
                "pass each slide once; slides are told apart (and matched to <stem>.geojson) by their file stem",
            )
        again = [s for s in opened if s.stem in done]
        if again:
            raise DatasetError(
                again[0].path,
                f"slide {again[0].stem!r} is already in the dataset in {out}",
                "leave it out of this call (a slide belongs to one split), or rebuild the dataset in an empty --out",
            )

        # 1. read and check every slide's annotations before anything is written
        anns: dict[str, SlideAnnotations] = {}
        files: dict[str, Path] = {}
        for slide in opened:
            f = annotation_file_for(ann_root, slide.stem)
            box = _image_box(slide, cfg.qupath_crop)
            anns[slide.stem] = read_slide_annotations(
                f,
                cfg.class_map,
                origin=(box[0], box[1]) if cfg.qupath_crop else (0, 0),
                image_box=box,
                slide_name=slide.path.name,
            )
            files[slide.stem] = f
            a = anns[slide.stem]
            if len(a.cells):
                outside = int(
                    (~shapely.intersects_xy(a.labelled_area(), a.cells[:, 0], a.cells[:, 1])).sum()
                )
                a.counts["points_outside_regions"] = outside
                if outside:
                    log.info(
                        "%s: %d marked cell(s) outside every region ignored (only regions count as completely labelled)",
                        f,
                        outside,
                    )

        # 2. splits
        assignment = cfg.split.assign(
            {s.stem: [r.index for r in anns[s.stem].regions] for s in opened},
            {s.stem: {s.path.name, str(s.path)} for s in opened},
        )
        splits = {
            sp: [
                s.stem
                for s in opened
                if any(assignment[(s.stem, r.index)] == sp for r in anns[s.stem].regions)
            ]
            for sp in SPLITS
        }
        if cfg.split.by_region:
            log.warning(
                "splitting by region: the val pairs come from slides whose other regions are trained on, so val scores "
                "overestimate how the model does on new slides; annotate another slide and hold it out when you can"
            )
        if cfg.split.split is None and not splits["val"]:
            log.warning(
                "no val split: %s; training has nothing to choose its best epoch on. Annotate another slide (held out by "
                "default), or pass --split-by-region to hold out some of this slide's regions",
                "one slide" if len(opened) == 1 else "--val-fraction 0",
            )

        # 3. tiles, images and labels, split by split (ids grouped by split, as in the release)
        rng = np.random.default_rng(cfg.seed)
        next_id = max((int(k) for k in old_pairs if str(k).isdigit()), default=0) + 1
        pairs: dict[str, dict[str, Any]] = {}
        counts: dict[str, dict[str, int]] = {s.stem: dict(anns[s.stem].counts) for s in opened}
        T = cfg.geometry.tile_size
        for split in SPLITS:
            for slide in opened:
                ann = anns[slide.stem]
                mine = [r for r in ann.regions if assignment[(slide.stem, r.index)] == split]
                if not mine:
                    continue
                labelled = ann.labelled_area({r.index for r in mine})
                shapely.prepare(labelled)
                boxes, extras = _tiles_of(
                    mine,
                    labelled,
                    tile_size_l0(slide, cfg.geometry),
                    _image_box(slide, cfg.qupath_crop),
                    cfg.min_region_fraction,
                )
                written = export_pairs(
                    slide,
                    out,
                    cfg.geometry,
                    cell_boxes=boxes,
                    split=split,
                    offsets=pair_offsets(len(boxes), cfg.offsets, rng),
                    start_id=next_id,
                    quality=cfg.quality,
                    extra={"organ": None},
                    per_pair=extras,
                )
                c = counts[slide.stem]
                n_cells = 0
                for pid, entry in written.items():
                    cb, tb = entry["cell"], entry["tissue"]
                    cell_box = (
                        cb["x_start"],
                        cb["y_start"],
                        cb["x_end"] - cb["x_start"],
                        cb["y_end"] - cb["y_start"],
                    )
                    tissue_box = (
                        tb["x_start"],
                        tb["y_start"],
                        tb["x_end"] - tb["x_start"],
                        tb["y_end"] - tb["y_start"],
                    )
                    rows = cells_in_box(ann.cells, labelled, cell_box, T)
                    write_labels(
                        out,
                        split,
                        pid,
                        rows,
                        tissue_label(ann, tissue_box, T),
                        rasterise(labelled, cell_box, T),
                    )
                    n_cells += len(rows)
                c["cells_written"] = c.get("cells_written", 0) + n_cells
                c["pairs"] = c.get("pairs", 0) + len(written)
                _note_left_out(slide, ann, labelled, boxes, c)
                pairs.update(written)
                next_id += len(written)
                log.info(
                    "%s: %d region(s) -> %d %s pairs holding %d marked cells",
                    slide.path.name,
                    len(mine),
                    len(written),
                    split,
                    n_cells,
                )

        general = {
            "source": "QuPath annotations (wsi-ocelot tiles --annotations)",
            "software": {"wsi_ocelot": __version__},
            "geometry_from": cfg.geometry_from,
            "class_map": cfg.class_map.to_json(),
            "annotations": {
                s.stem: {
                    "slide": str(s.path),
                    "file": str(files[s.stem]),
                    "regions": len(anns[s.stem].regions),
                    "splits": sorted(
                        {assignment[(s.stem, r.index)] for r in anns[s.stem].regions},
                        key=SPLITS.index,
                    ),
                    "counts": counts[s.stem],
                }
                for s in opened
            },
            "split_rule": cfg.split.describe(),
            "splits": splits,
            "offsets": cfg.offsets,
            "seed": cfg.seed,
            "min_region_fraction": cfg.min_region_fraction,
            "qupath_crop": cfg.qupath_crop,
        }
        general = _merge_general(old, general)
        path = write_metadata(
            out, {**old_pairs, **pairs}, cfg.geometry, cell_mask=True, fields=FIELDS, **general
        )
    return AnnotatedDataset(metadata=path, pairs=pairs, splits=splits, counts=counts)


def _tiles_of(
    regions: list[Region],
    labelled: BaseGeometry,
    tile_l0: int,
    image_box: tuple[int, int, int, int],
    min_fraction: float,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The cell boxes of ``regions`` (a box laid for two regions is kept once, for the first)
    and each pair's extra fields."""
    boxes: list[np.ndarray] = []
    extras: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()
    for r in regions:
        b, _ = region_cell_boxes(r.geometry, tile_l0, image_box, min_fraction)
        for box in b:
            key = tuple(int(v) for v in box)
            if key in seen:
                continue
            seen.add(key)
            tile = shapely.box(box[0], box[1], box[0] + box[2], box[1] + box[3])
            boxes.append(box)
            extras.append(
                {
                    "region": r.to_json(),
                    "labelled_fraction": round(
                        float(shapely.intersection(labelled, tile).area) / float(box[2] * box[3]), 4
                    ),
                }
            )
    return (np.asarray(boxes, np.int64).reshape(-1, 4), extras)


def _note_left_out(
    slide: Slide,
    ann: SlideAnnotations,
    labelled: BaseGeometry,
    boxes: np.ndarray,
    counts: dict[str, int],
) -> None:
    """Count (and log) the marked cells inside the regions that no tile holds (thin slivers of a
    region, below ``min_region_fraction`` of a tile)."""
    if not len(ann.cells):
        return
    inside = shapely.intersects_xy(labelled, ann.cells[:, 0], ann.cells[:, 1])
    held = np.zeros(len(ann.cells), bool)
    for x, y, w, h in boxes:
        held |= (
            (ann.cells[:, 0] >= x)
            & (ann.cells[:, 0] < x + w)
            & (ann.cells[:, 1] >= y)
            & (ann.cells[:, 1] < y + h)
        )
    lost = int((inside & ~held).sum())
    counts["cells_in_regions"] = counts.get("cells_in_regions", 0) + int(inside.sum())
    if lost:
        counts["cells_left_out"] = counts.get("cells_left_out", 0) + lost
        log.info(
            "%s: %d marked cell(s) lie in slivers of regions too thin for a tile and are left out",
            slide.path.name,
            lost,
        )
