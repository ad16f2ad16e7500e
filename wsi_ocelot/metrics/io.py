"""Read and write the OCELOT 2023 challenge point files, and the release's CSV annotations.

Challenge JSON (predictions ``cell_classification.json`` and ground truth ``cell_gt_*.json``)::

    {"type": "Multiple points", "num_images": N,
     "points": [{"name": "image_<i>", "point": [x, y, cls], "probability": p}, ...],
     "version": {"major": 1, "minor": 0}}

``x``, ``y`` are integer cell-patch pixels (column, row) in 0..1023, ``cls`` is 1 (BC) or 2 (TC),
``p`` a float in [0, 1]. Ground truth carries ``num_images`` and ``p = 1.0``; predictions may
omit ``num_images``. Records are checked as strictly as the official ``_check_validity``
(exactly the three keys, JSON integers for x, y, cls, a JSON float for p) and every problem is
reported as a :class:`~wsi_ocelot.errors.PredictionFileError` naming the record.

In memory a file is ``dict[image_index, ndarray]``: one ``(N, 4)`` float64 array of rows
``(x, y, cls, prob)`` per image, in file order (the order breaks ties in the metric).

Release CSV (``annotations/<split>/cell/NNN.csv``): ``x,y,class`` lines, no header, possibly an
empty file; read into the same ``(N, 4)`` arrays with ``prob = 1.0``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from wsi_ocelot.atomic import write_text
from wsi_ocelot.datasets.ocelot import read_cell_csv
from wsi_ocelot.errors import DatasetError, PredictionFileError

log = logging.getLogger(__name__)

PointsKind = Literal["pred", "gt"]

FILE_TYPE = "Multiple points"
VERSION = {"major": 1, "minor": 0}
MAX_XY = 1023
"""Largest x or y the challenge accepts (1024 × 1024 cell patches)."""

_NAME_RE = re.compile(r"image_[0-9]+")
_RECORD_KEYS = ("name", "point", "probability")
_RECORD_FIX = (
    'write each record as {"name": "image_<i>", "point": [x, y, cls], "probability": p} '
    "with JSON integers x, y in 0..1023 and cls 1 (BC) or 2 (TC), and a JSON float p in [0, 1]"
)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool and float rejected, as the official check does


def empty_points() -> NDArray[np.float64]:
    """An empty ``(0, 4)`` points array."""
    return np.empty((0, 4), dtype=np.float64)


def _check_record(
    path: Path, i: int, rec: Any, max_xy: int | None, num_images: int | None
) -> tuple[int, float, float, float, float]:
    """Validate ``points[i]``; return ``(image_index, x, y, cls, prob)``."""

    def bad(problem: str, fix: str = _RECORD_FIX) -> PredictionFileError:
        return PredictionFileError(path, f"points[{i}]: {problem}", fix)

    if not isinstance(rec, dict):
        raise bad(f"each record must be a JSON object, got {_short(rec)}")
    missing = [k for k in _RECORD_KEYS if k not in rec]
    if missing:
        raise bad(f"missing key(s) {missing} (a record has exactly {list(_RECORD_KEYS)})")
    extra = sorted(k for k in rec if k not in _RECORD_KEYS)
    if extra:
        raise bad(
            f"unexpected key(s) {extra} (a record has exactly {list(_RECORD_KEYS)}; "
            "the official evaluator rejects others)",
            "remove the extra keys from every record",
        )
    name = rec["name"]
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise bad(
            f"'name' must be 'image_<i>' with a decimal index, got {_short(name)}",
            'name each record "image_<i>", i = 0-based index of the image in the input stack',
        )
    img = int(name[len("image_") :])
    if num_images is not None and img >= num_images:
        raise bad(
            f"'name' {name} is outside num_images = {num_images} (images are "
            f"image_0..image_{num_images - 1})",
            "fix the image index or the file's num_images",
        )
    point = rec["point"]
    if not isinstance(point, list) or len(point) != 3:
        raise bad(f"'point' must be a list [x, y, cls], got {_short(point)}")
    x, y, c = point
    for axis, v in (("x", x), ("y", y)):
        if not _is_int(v):
            raise bad(f"'point' must be [x, y, cls] with integer {axis}, got {_short(point)}")
        if v < 0 or (max_xy is not None and v > max_xy):
            upper = "" if max_xy is None else f"..{max_xy}"
            raise bad(f"'point' {axis} = {v} is outside 0{upper}, got {_short(point)}")
    if not _is_int(c) or c not in (1, 2):
        raise bad(f"'point' must be [x, y, cls] with integer cls in {{1, 2}}, got {_short(point)}")
    p = rec["probability"]
    if type(p) is not float:
        raise bad(
            f"'probability' must be a JSON float, got {_short(p)}",
            "write probabilities as floats (1.0, not 1): the official evaluator rejects integers",
        )
    if not math.isfinite(p):
        raise bad(f"'probability' must be a finite number, got {p!r}")
    if not 0.0 <= p <= 1.0:
        raise bad(f"'probability' must be in [0, 1], got {p!r}")
    return img, float(x), float(y), float(c), p


def read_points_json(
    path: str | os.PathLike[str],
    *,
    kind: PointsKind | None = None,
    max_xy: int | None = MAX_XY,
) -> dict[int, NDArray[np.float64]]:
    """Read and validate a challenge points file.

    Parameters
    ----------
    path:
        The JSON file.
    kind:
        ``"gt"`` requires ``num_images``; ``"pred"`` or ``None`` make it optional.
    max_xy:
        Largest allowed x and y (1023 for the challenge); ``None`` lifts the upper bound.

    Returns
    -------
    ``{image_index: (N, 4) float64 array of (x, y, cls, prob)}``, keys ascending. When the file
    has ``num_images`` every image ``0..num_images-1`` is present (possibly empty); otherwise
    only images with points.

    Raises
    ------
    PredictionFileError
        The file is missing, not JSON, not a ``"Multiple points"`` object, or a record is
        malformed (the message names ``points[i]``).
    """
    return read_points_json_ex(path, kind=kind, max_xy=max_xy)[0]


def read_points_json_ex(
    path: str | os.PathLike[str],
    *,
    kind: PointsKind | None = None,
    max_xy: int | None = MAX_XY,
) -> tuple[dict[int, NDArray[np.float64]], int | None]:
    """:func:`read_points_json` plus the file's ``num_images`` (``None`` when absent)."""
    p = Path(path)
    if kind not in (None, "pred", "gt"):
        raise ValueError(f"kind must be 'pred', 'gt' or None, got {kind!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise PredictionFileError(p, "file not found", "check the path") from err
    except (OSError, UnicodeDecodeError) as err:
        raise PredictionFileError(p, f"cannot read the file ({err})", "check the path") from err
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PredictionFileError(
            p,
            f"not valid JSON ({err.msg} at line {err.lineno} column {err.colno})",
            "write the file with json.dump (see wsi_ocelot.metrics.write_points_json)",
        ) from err
    if not isinstance(doc, dict):
        raise PredictionFileError(
            p,
            f"top level must be a JSON object, got {type(doc).__name__}",
            f'write {{"type": "{FILE_TYPE}", "points": [...]}}',
        )
    if doc.get("type") != FILE_TYPE:
        raise PredictionFileError(
            p,
            f"'type' must be \"{FILE_TYPE}\", got {_short(doc.get('type'))}",
            f'set "type": "{FILE_TYPE}" at the top level',
        )
    if "points" not in doc or not isinstance(doc["points"], list):
        raise PredictionFileError(
            p,
            "missing 'points' list" if "points" not in doc else "'points' must be a list",
            'put the cells in "points": [{"name": ..., "point": ..., "probability": ...}, ...]',
        )
    num_images: int | None = None
    if "num_images" in doc:
        n = doc["num_images"]
        if not _is_int(n) or n < 0:
            raise PredictionFileError(
                p,
                f"'num_images' must be an integer >= 0, got {_short(n)}",
                "set num_images to the number of images in the input stack",
            )
        num_images = n
    elif kind == "gt":
        raise PredictionFileError(
            p,
            "ground-truth file has no 'num_images'",
            'add "num_images": N (images without cells still count)',
        )
    rows: dict[int, list[tuple[float, float, float, float]]] = {}
    for i, rec in enumerate(doc["points"]):
        img, x, y, c, prob = _check_record(p, i, rec, max_xy, num_images)
        rows.setdefault(img, []).append((x, y, c, prob))
    keys = range(num_images) if num_images is not None else sorted(rows)
    out = {k: np.asarray(rows[k], dtype=np.float64) if k in rows else empty_points() for k in keys}
    log.debug("read %d points in %d images from %s", len(doc["points"]), len(out), p)
    return out, num_images


def _per_image_items(
    per_image: Mapping[int, ArrayLike] | Sequence[ArrayLike],
) -> list[tuple[int, NDArray[np.float64]]]:
    items = per_image.items() if isinstance(per_image, Mapping) else enumerate(per_image)
    out: list[tuple[int, NDArray[np.float64]]] = []
    for k, arr in items:
        if not _is_int(k) and not isinstance(k, np.integer):
            raise ValueError(f"image keys must be integers, got {k!r}")
        if int(k) < 0:
            raise ValueError(f"image index must be >= 0, got {k}")
        a = np.asarray(arr, dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, 4)
        if a.ndim != 2 or a.shape[1] not in (3, 4):
            raise ValueError(f"image {k}: points must have shape (N, 3) or (N, 4), got {a.shape}")
        out.append((int(k), a))
    return sorted(out, key=lambda t: t[0])


def write_points_json(
    path: str | os.PathLike[str],
    per_image: Mapping[int, ArrayLike] | Sequence[ArrayLike],
    kind: PointsKind = "pred",
    *,
    num_images: int | None = None,
) -> Path:
    """Write points in the challenge format; return the path.

    ``per_image`` maps image index → ``(N, 4)`` rows ``(x, y, cls, prob)`` (``(N, 3)`` allowed
    for ``kind="gt"``), or is a sequence indexed by image. Coordinates are rounded to the
    nearest integer pixel; ``cls`` must be 1 or 2; ``prob`` must be in [0, 1] (ground truth is
    written with probability 1.0). Ground truth always carries ``num_images`` (default: one
    more than the largest index, or the sequence length); predictions carry it only when given.
    Records keep the given order within an image. The file is written atomically.
    """
    if kind not in ("pred", "gt"):
        raise ValueError(f"kind must be 'pred' or 'gt', got {kind!r}")
    items = _per_image_items(per_image)
    if num_images is None and kind == "gt":
        num_images = len(per_image) if not isinstance(per_image, Mapping) else 0
        if items:
            num_images = max(num_images, items[-1][0] + 1)
    points: list[dict[str, Any]] = []
    for img, a in items:
        if num_images is not None and img >= num_images:
            raise ValueError(f"image index {img} is outside num_images = {num_images}")
        if kind == "pred" and a.shape[1] != 4:
            raise ValueError(f"image {img}: predictions need (N, 4) rows (x, y, cls, prob)")
        if not np.isfinite(a).all():
            raise ValueError(f"image {img}: points hold NaN or inf")
        xy = np.rint(a[:, :2]).astype(np.int64)
        cls = a[:, 2]
        if not np.isin(cls, (1, 2)).all():
            raise ValueError(f"image {img}: cls must be 1 (BC) or 2 (TC), got {np.unique(cls)}")
        if kind == "pred":
            prob = a[:, 3]
            if ((prob < 0) | (prob > 1)).any():
                raise ValueError(f"image {img}: probabilities must be in [0, 1]")
        else:
            prob = np.ones(a.shape[0])
        name = f"image_{img}"
        for (x, y), c, pr in zip(
            xy.tolist(), cls.astype(np.int64).tolist(), prob.tolist(), strict=True
        ):
            points.append({"name": name, "point": [x, y, c], "probability": float(pr)})
    doc: dict[str, Any] = {"type": FILE_TYPE}
    if num_images is not None:
        doc["num_images"] = int(num_images)
    doc["points"] = points
    doc["version"] = dict(VERSION)
    out = Path(path)
    write_text(out, json.dumps(doc))
    log.debug("wrote %d %s points to %s", len(points), kind, out)
    return out


def read_points_csv(path: str | os.PathLike[str]) -> NDArray[np.float64]:
    """Read one OCELOT release cell annotation: ``x,y,class`` lines, no header.

    Returns an ``(N, 4)`` float64 array ``(x, y, cls, 1.0)`` in file order; an empty file gives
    ``(0, 4)``. The parsing (and its one-line errors) is
    :func:`wsi_ocelot.datasets.read_cell_csv`, shared with the dataset loaders.
    """
    xyc = read_cell_csv(path).astype(np.float64)
    if not len(xyc):
        return empty_points()
    return np.concatenate([xyc, np.ones((len(xyc), 1))], axis=1)


def read_points_csv_dir(directory: str | os.PathLike[str]) -> dict[int, NDArray[np.float64]]:
    """Read every ``*.csv`` in ``directory`` (e.g. ``annotations/val/cell``).

    Keys are ``0..n-1`` in sorted file-name order, the order the challenge's ground truth
    (``convert_gt_csvs_to_json.py``) assigns ``image_<i>``; so ``val/401.csv`` is image 0.
    """
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(d, "not a directory", "pass the folder holding the NNN.csv files")
    files = sorted(d.glob("*.csv"))
    if not files:
        raise DatasetError(d, "no .csv files", "pass annotations/<split>/cell of the release")
    log.debug("image_i -> file: %s", {i: f.name for i, f in enumerate(files)})
    return {i: read_points_csv(f) for i, f in enumerate(files)}
