"""Read data in the OCELOT release layout (no torch): pair records, cell CSVs, tissue
label PNGs and ``metadata.json``.

::

    ROOT/metadata.json                              sample_pairs: {id: {patch_x_offset, ...}}
    ROOT/images/{split}/cell/NNN.jpg                cell patch (x_s), cell-MPP px
    ROOT/images/{split}/tissue/NNN.jpg              tissue patch (x_l), tissue-MPP px
    ROOT/annotations/{split}/cell/NNN.csv           "x,y,class" lines, no header, may be empty
    ROOT/annotations/{split}/tissue/NNN.png         1 = BG, 2 = CA, 255 = unknown
    ROOT/annotations/{split}/cell_mask/NNN.png      optional (not in the release): 1 where every cell is
                                                    marked (inside an annotated region), 0 unknown

A pair without a ``cell_mask`` PNG is labelled everywhere (the OCELOT release). A dataset built
from partial annotations (QuPath regions, ``wsi-ocelot tiles --annotations``) has one per pair:
the cell loss and the metric ignore what lies outside it (it is not "no cell" there, it is unknown).

Every problem with the files raises :class:`~wsi_ocelot.errors.DatasetError` naming the
file, the problem and the fix. Shared by ``wsi-ocelot evaluate --data`` and ``training/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from wsi_ocelot.errors import DatasetError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TILE_MODES = ("crop", "resize")
CELL_CLASSES = (1, 2)
TISSUE_VALUES = (1, 2, 255)
_LAYOUT_FIX = (
    "use the OCELOT release layout: images/{split}/{cell,tissue}/NNN.jpg, annotations/{split}/cell/NNN.csv, "
    "annotations/{split}/tissue/NNN.png (and optionally annotations/{split}/cell_mask/NNN.png), metadata.json"
)


@dataclass(frozen=True)
class PairRecord:
    """The files and metadata of one pair. ``offset`` = (patch_x_offset, patch_y_offset)."""

    id: str
    cell_image: Path
    tissue_image: Path
    cell_csv: Path
    tissue_png: Path
    offset: tuple[float, float]
    organ: str | None
    cell_mpp: float | None
    tissue_mpp: float | None
    cell_mask: Path | None = None  # where the cell labels are complete (None: everywhere)


# --------------------------------------------------------------------------- readers


def read_cell_csv(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an OCELOT cell CSV (``x,y,class`` per line, no header; may be empty).

    Returns float32 ``(N, 3)`` = (x, y, class) in cell-patch px. Blank lines are skipped;
    anything else that is not three integers-or-numbers with class 1 or 2 is an error.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DatasetError(p, "cell annotation file not found", _LAYOUT_FIX) from err
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(
            p,
            f"cannot read cell annotations ({err})",
            "re-extract the file from the dataset archive",
        ) from err
    rows: list[tuple[float, float, float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = [v.strip() for v in line.split(",")]
        if len(parts) != 3:
            raise DatasetError(
                p,
                f"line {lineno}: expected 'x,y,class', got {line!r}",
                "write one 'x,y,class' line per cell, no header",
            )
        try:
            x, y, c = (float(v) for v in parts)
        except ValueError as err:
            raise DatasetError(
                p,
                f"line {lineno}: non-numeric value in {line!r}",
                "write one 'x,y,class' line per cell, no header",
            ) from err
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DatasetError(
                p, f"line {lineno}: coordinates must be finite, got {line!r}", "fix the coordinates"
            )
        if c not in CELL_CLASSES:
            raise DatasetError(
                p,
                f"line {lineno}: class {parts[2]!r} is not 1 (BC) or 2 (TC)",
                "use OCELOT class ids 1 = BC, 2 = TC",
            )
        rows.append((x, y, c))
    return np.asarray(rows, dtype=np.float32).reshape(-1, 3)


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as ``uint8 (H, W, 3)`` RGB."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as err:
        raise DatasetError(p, "image not found", _LAYOUT_FIX) from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(
            p, f"not a readable image ({err})", "re-extract the file from the dataset archive"
        ) from err


def read_tissue_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a tissue annotation PNG as ``uint8 (H, W)``; values must be 1, 2 or 255."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(
                    p,
                    f"tissue annotation has image mode {im.mode!r}, expected a single-channel label image",
                    "write a grayscale PNG with values 1 = BG, 2 = CA, 255 = unknown",
                )
            arr = np.asarray(im)
    except FileNotFoundError as err:
        raise DatasetError(p, "tissue annotation not found", _LAYOUT_FIX) from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(
            p, f"not a readable PNG ({err})", "re-extract the file from the dataset archive"
        ) from err
    bad = np.setdiff1d(np.unique(arr), TISSUE_VALUES)
    if bad.size:
        raise DatasetError(
            p,
            f"tissue annotation holds value(s) {bad[:5].tolist()}, allowed 1 (BG), 2 (CA), 255 (unknown)",
            "write the label map with OCELOT values only",
        )
    return arr.astype(np.uint8)


def read_cell_mask(
    path: str | os.PathLike[str], shape: tuple[int, int] | None = None
) -> np.ndarray:
    """Read a cell-label mask PNG as ``bool (H, W)`` in cell-patch px: True where every cell is
    marked, False where the labels are unknown; values must be 0 or 1 (255 reads as 1). With
    ``shape`` (the cell image's ``(H, W)``), a mask of another size is a :class:`DatasetError`."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            if im.mode not in ("L", "P", "1"):
                raise DatasetError(
                    p,
                    f"cell mask has image mode {im.mode!r}, expected a single-channel PNG",
                    "write a grayscale PNG with 1 where the cells are completely marked, 0 elsewhere",
                )
            arr = np.asarray(im.convert("L"))
    except FileNotFoundError as err:
        raise DatasetError(p, "cell mask not found", _LAYOUT_FIX) from err
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DatasetError(
            p, f"not a readable PNG ({err})", "re-extract the file from the dataset archive"
        ) from err
    bad = np.setdiff1d(np.unique(arr), (0, 1, 255))
    if bad.size:
        raise DatasetError(
            p,
            f"cell mask holds value(s) {bad[:5].tolist()}, allowed 0 (unknown) and 1 (labelled)",
            "write the mask with 0 and 1 only",
        )
    if shape is not None and arr.shape != tuple(shape):
        raise DatasetError(
            p,
            f"cell mask is {arr.shape[1]}×{arr.shape[0]} px, the cell image {shape[1]}×{shape[0]}",
            "use the mask that belongs to this cell image (same size, cell-patch px)",
        )
    return arr > 0


def dataset_name(root: str | os.PathLike[str]) -> str | None:
    """The name a dataset gives itself in ``ROOT/metadata.json`` (``general_info.dataset`` or
    ``general_info.name``, else a top-level ``dataset`` or ``name``); None when the file is
    missing, unreadable or names nothing."""
    try:
        meta = json.loads((Path(root) / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    info = meta.get("general_info")
    general: dict[str, Any] = info if isinstance(info, dict) else {}
    names = (general.get("dataset"), general.get("name"), meta.get("dataset"), meta.get("name"))
    for v in names:
        if isinstance(v, str) and v.strip():
            return v.strip()
    return None


def read_metadata(root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``ROOT/metadata.json``'s ``sample_pairs`` (a dict keyed by three-digit id)."""
    p = Path(root) / "metadata.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DatasetError(
            p, "metadata.json not found", "put the release's metadata.json in the dataset root"
        ) from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(
            p, f"not valid JSON ({err})", "restore metadata.json from the dataset archive"
        ) from err
    pairs = data.get("sample_pairs") if isinstance(data, dict) else None
    if not isinstance(pairs, dict):
        raise DatasetError(
            p,
            "no 'sample_pairs' mapping (id → pair metadata)",
            "use the OCELOT release's metadata.json (the challenge's list format is not a dataset root)",
        )
    return {str(k): v for k, v in pairs.items()}


def _resized_mpp(meta: dict[str, Any], which: str) -> float | None:
    part = meta.get(which)
    if not isinstance(part, dict):
        return None
    vals = [part.get("resized_mpp_x"), part.get("resized_mpp_y")]
    try:
        nums = [float(v) for v in vals if v is not None]
    except (TypeError, ValueError):
        return None
    nums = [v for v in nums if math.isfinite(v) and v > 0]
    return sum(nums) / len(nums) if nums else None


def list_pairs(root: str | os.PathLike[str], split: str) -> list[PairRecord]:
    """All pairs of ``split``, sorted by id; checks that every file and metadata entry exists."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            root,
            "dataset root not found",
            "pass the folder that holds metadata.json, images/ and annotations/",
        )
    if split not in SPLITS:
        raise DatasetError(root, f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    folders = {
        "cell images": root / "images" / split / "cell",
        "tissue images": root / "images" / split / "tissue",
        "cell annotations": root / "annotations" / split / "cell",
        "tissue annotations": root / "annotations" / split / "tissue",
    }
    for what, folder in folders.items():
        if not folder.is_dir():
            raise DatasetError(
                folder, f"folder of {what} for split {split!r} not found", _LAYOUT_FIX
            )
    meta = read_metadata(root)
    ids = sorted(p.stem for p in folders["cell images"].glob("*.jpg"))
    if not ids:
        raise DatasetError(
            folders["cell images"], f"no .jpg cell images for split {split!r}", _LAYOUT_FIX
        )
    records = []
    for id_ in ids:
        files = {
            "tissue image": folders["tissue images"] / f"{id_}.jpg",
            "cell annotation": folders["cell annotations"] / f"{id_}.csv",
            "tissue annotation": folders["tissue annotations"] / f"{id_}.png",
        }
        for what, f in files.items():
            if not f.is_file():
                raise DatasetError(f, f"{what} of pair {id_} not found", _LAYOUT_FIX)
        m = meta.get(id_)
        if m is None:
            raise DatasetError(
                root / "metadata.json",
                f"no sample_pairs entry for pair {id_!r}",
                "use the metadata.json that belongs to these images",
            )
        try:
            offset = (float(m["patch_x_offset"]), float(m["patch_y_offset"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(
                root / "metadata.json",
                f"pair {id_!r} lacks a numeric patch_x_offset/patch_y_offset",
                "use the release's metadata.json",
            ) from err
        if not all(0.0 <= v <= 1.0 for v in offset):
            raise DatasetError(
                root / "metadata.json",
                f"pair {id_!r} has offset {offset} outside [0, 1]",
                "offsets are the relative centre of the cell patch in the tissue patch",
            )
        organ = m.get("organ")
        mask = root / "annotations" / split / "cell_mask" / f"{id_}.png"
        records.append(
            PairRecord(
                id=id_,
                cell_image=folders["cell images"] / f"{id_}.jpg",
                tissue_image=files["tissue image"],
                cell_csv=files["cell annotation"],
                tissue_png=files["tissue annotation"],
                offset=offset,
                organ=str(organ) if organ is not None else None,
                cell_mpp=_resized_mpp(m, "cell"),
                tissue_mpp=_resized_mpp(m, "tissue"),
                cell_mask=mask if mask.is_file() else None,
            )
        )
    return records


# --------------------------------------------------------------------------- geometry
