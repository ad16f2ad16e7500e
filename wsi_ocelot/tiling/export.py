"""Write aligned cell/context pairs from a slide in the OCELOT release layout.

``images[/split]/cell/NNN.jpg`` (the cell tile at the cell MPP), ``images[/split]/tissue/NNN.jpg``
(its context, ``context_factor`` × the field of view, at the tissue MPP) and
``metadata.json`` whose ``sample_pairs`` use OCELOT's field names. Users inspect what
the model sees with it, and make training data from their own slides: with labels
(:func:`write_labels`: ``annotations[/split]/{cell,tissue,cell_mask}/``) from QuPath annotations
in ``tiling/annotated.py`` (``wsi-ocelot tiles --annotations``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_ocelot import __version__
from wsi_ocelot.atomic import write_text
from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.slide import Slide, TissueMask, tissue_mask
from wsi_ocelot.tiling.grid import context_boxes, filter_by_mask, make_grid

log = logging.getLogger(__name__)

#: The cell patch centre's relative position in the tissue patch in the OCELOT release.
OCELOT_OFFSETS = (0.125, 0.625)

FIELD_DESCRIPTION = {
    "slide_name": "slide file stem",
    "cell": "cell patch box in level-0 slide px (start inclusive, end exclusive) and its resized MPP",
    "tissue": "tissue patch box in level-0 slide px (start inclusive, end exclusive) and its resized MPP",
    "patch_x_offset": "relative x of the cell patch centre inside the tissue patch",
    "patch_y_offset": "relative y of the cell patch centre inside the tissue patch",
    "mpp_x": "level-0 µm/px of the slide (x)",
    "mpp_y": "level-0 µm/px of the slide (y)",
}
LABEL_INFO = {
    "cell": {"background_cell": 1, "tumor_cell": 2},
    "tissue": {"background": 1, "cancer_area": 2, "unknown": 255},
}
CELL_MASK_INFO = {"unknown": 0, "labelled": 1}


def _box_dict(box: np.ndarray, mpp_x: float, mpp_y: float, size: int) -> dict[str, Any]:
    x, y, w, h = (int(v) for v in box)
    return {
        "x_start": x,
        "y_start": y,
        "x_end": x + w,
        "y_end": y + h,
        "resized_mpp_x": w * mpp_x / size,
        "resized_mpp_y": h * mpp_y / size,
    }


def pick_cell_boxes(
    slide: Slide,
    geometry: GeometryConfig,
    mask: TissueMask,
    limit: int | None = None,
    min_tissue: float = 0.5,
) -> np.ndarray:
    """Non-overlapping cell boxes (N, 4) at the cell MPP with at least ``min_tissue``
    tissue, evenly spread over the slide when ``limit`` keeps fewer than all."""
    w, h = slide.dimensions
    grid = make_grid(w, h, slide.mpp, geometry.cell_mpp, geometry.tile_size, 0)
    on = filter_by_mask(grid, mask, min_tissue, use_core=False)
    boxes = on.boxes
    if limit is not None and 0 <= limit < len(boxes):
        idx = (
            np.unique(np.round(np.linspace(0, len(boxes) - 1, limit)).astype(int))
            if limit
            else np.zeros(0, int)
        )
        boxes = boxes[idx]
    return boxes


def pair_offsets(
    n: int, offsets: str | np.ndarray = "centre", seed: int | np.random.Generator = 0
) -> np.ndarray:
    """``(n, 2)`` relative positions of each cell patch centre in its context: ``"centre"``
    (0.5, 0.5, as the slide engine sees tiles), ``"ocelot"`` (each pair at one of OCELOT's four
    positions, drawn with ``seed``, a seed or a generator) or an (n, 2) array."""
    if isinstance(offsets, str):
        if offsets == "centre":
            return np.full((n, 2), 0.5)
        if offsets == "ocelot":
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            return rng.choice(np.asarray(OCELOT_OFFSETS), size=(n, 2))
        raise ValueError(f"offsets must be 'centre', 'ocelot' or an array, got {offsets!r}")
    return np.asarray(offsets, dtype=np.float64).reshape(n, 2)


def export_pairs(
    slide: Slide,
    out_dir: str | os.PathLike[str],
    geometry: GeometryConfig,
    *,
    cell_boxes: np.ndarray | None = None,
    limit: int | None = None,
    split: str | None = None,
    offsets: str | np.ndarray = "centre",
    seed: int = 0,
    start_id: int = 1,
    quality: int = 95,
    mask: TissueMask | None = None,
    extra: dict[str, Any] | None = None,
    per_pair: Sequence[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write pairs for ``cell_boxes`` (default: :func:`pick_cell_boxes`) under
    ``out_dir/images[/split]/{cell,tissue}/`` and return their ``sample_pairs`` entries
    keyed by id. ``offsets``: see :func:`pair_offsets`. ``extra`` fields (e.g. ``organ``,
    ``subset``) are added to each entry, then ``per_pair[k]`` to the k-th."""
    out = Path(out_dir)
    if cell_boxes is None:
        cell_boxes = pick_cell_boxes(
            slide, geometry, mask if mask is not None else tissue_mask(slide), limit
        )
    n = len(cell_boxes)
    off = pair_offsets(n, offsets, seed)
    ctx = context_boxes(cell_boxes, geometry.context_factor, off)
    sub = Path("images") / split if split else Path("images")
    (out / sub / "cell").mkdir(parents=True, exist_ok=True)
    (out / sub / "tissue").mkdir(parents=True, exist_ok=True)
    T = geometry.tile_size
    pairs: dict[str, dict[str, Any]] = {}
    for k in range(n):
        pid = f"{start_id + k:03d}"
        cell = slide.read_box(tuple(cell_boxes[k]), (T, T))
        tissue = slide.read_box(tuple(ctx[k]), (T, T))
        Image.fromarray(cell).save(out / sub / "cell" / f"{pid}.jpg", quality=quality)
        Image.fromarray(tissue).save(out / sub / "tissue" / f"{pid}.jpg", quality=quality)
        entry = {
            "slide_name": slide.stem,
            "cell": _box_dict(cell_boxes[k], slide.mpp_info.x, slide.mpp_info.y, T),
            "tissue": _box_dict(ctx[k], slide.mpp_info.x, slide.mpp_info.y, T),
            "patch_x_offset": float(off[k, 0]),
            "patch_y_offset": float(off[k, 1]),
            "mpp_x": slide.mpp_info.x,
            "mpp_y": slide.mpp_info.y,
        }
        if split:
            entry["subset"] = split
        if extra:
            entry.update(extra)
        if per_pair is not None:
            entry.update(per_pair[k])
        pairs[pid] = entry
    log.info("%s: wrote %d cell/tissue pairs to %s", slide.path.name, n, out / sub)
    return pairs


def write_labels(
    out_dir: str | os.PathLike[str],
    split: str | None,
    pid: str,
    cells: np.ndarray,
    tissue: np.ndarray,
    cell_mask: np.ndarray | None = None,
) -> None:
    """Write one pair's labels in the OCELOT layout under ``out_dir/annotations[/split]/``:
    ``cell/PID.csv`` (``x,y,class`` per line, cell-patch px, no header; empty when no cell),
    ``tissue/PID.png`` (1 BG, 2 CA, 255 unknown) and, when given, ``cell_mask/PID.png``
    (uint8, 1 where every cell is marked, 0 unknown)."""
    root = Path(out_dir) / "annotations" / (split or "")
    kinds = ("cell", "tissue") + (("cell_mask",) if cell_mask is not None else ())
    for kind in kinds:
        (root / kind).mkdir(parents=True, exist_ok=True)
    rows = [f"{int(x)},{int(y)},{int(c)}" for x, y, c in np.asarray(cells).reshape(-1, 3)]
    (root / "cell" / f"{pid}.csv").write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    Image.fromarray(np.asarray(tissue, dtype=np.uint8)).save(root / "tissue" / f"{pid}.png")
    if cell_mask is not None:
        Image.fromarray(np.asarray(cell_mask, dtype=np.uint8)).save(
            root / "cell_mask" / f"{pid}.png"
        )


def write_metadata(
    out_dir: str | os.PathLike[str],
    pairs: dict[str, dict[str, Any]],
    geometry: GeometryConfig,
    *,
    cell_mask: bool = False,
    fields: dict[str, str] | None = None,
    **general: Any,
) -> Path:
    """Write ``metadata.json`` (OCELOT's top-level keys) into ``out_dir``. ``cell_mask``: the
    pairs have ``annotations/{split}/cell_mask/`` PNGs (described in ``label_info``);
    ``fields`` adds descriptions of extra per-pair fields."""
    path = Path(out_dir) / "metadata.json"
    label_info: dict[str, Any] = dict(LABEL_INFO)
    if cell_mask:
        label_info["cell_mask"] = CELL_MASK_INFO
    meta = {
        "general_info": {
            "generator": f"wsi-ocelot {__version__}",
            "geometry": asdict(geometry),
            **general,
        },
        "label_info": label_info,
        "field_description": {**FIELD_DESCRIPTION, **(fields or {})},
        "sample_pairs": pairs,
    }
    return write_text(path, json.dumps(meta, indent=2))
