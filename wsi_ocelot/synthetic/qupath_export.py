"""A synthetic slide's ground truth written as a pathologist's QuPath export.

:func:`write_qupath_annotations` writes what *File → Export objects as GeoJSON* writes for a
slide annotated the way ``wsi-ocelot tiles --annotations`` expects (docs: README, *Teach it your
slides*): ``Region*`` rectangles where every nucleus is marked, one point set per class (QuPath's
Points tool: a ``MultiPoint`` annotation, a ``Point`` when it holds one) holding the nuclei inside
the regions, ``Tumor`` polygons over the cancer area and a ``Stroma`` polygon (with the cancer
area cut out as holes) over the rest of the annotated area.

The bytes follow QuPath 0.4–0.7's writer (``PathObjectTypeAdapters``, ``ROITypeAdapters``): a
FeatureCollection; per feature ``type``, a UUID ``id``, ``geometry``, ``properties`` with
``objectType``, ``classification`` ``{"name", "color"}`` (QuPath's built-in colours) and
``isLocked`` only when locked; coordinates with at most two decimals and no trailing zeros
(``[1024, 37.5]``); compact JSON unless ``pretty`` (two-space indent), gzip for ``.gz``; a
rectangle as a closed 5-point Polygon starting at its top-left corner and going through
``(x1, y0)`` as JTS builds it. Coordinates are in QuPath's frame: OpenSlide level-0 px minus
``origin`` (``openslide.bounds-x/y`` for slides QuPath crops, ``Slide.bounds[:2]``).
"""

from __future__ import annotations

import gzip as _gzip
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.synthetic.layout import KIND_NAMES, TC
from wsi_ocelot.synthetic.slide import SyntheticSlide

#: QuPath's built-in classes and their colours (``PathClass.StandardPathClasses``).
QUPATH_CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
}
#: Background-cell kinds a pathologist would mark as immune cells; the other BC kinds as stroma.
IMMUNE_KINDS = ("lymphocyte", "plasma")

Box = tuple[float, float, float, float]


class _Raw(str):
    """A JSON fragment written as is (QuPath writes coordinates and colours pre-formatted)."""


def _num(v: float) -> str:
    """A number as QuPath writes a coordinate: at most two decimals, no trailing zeros."""
    text = f"{float(v):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _coord(x: float, y: float) -> _Raw:
    return _Raw(f"[{_num(x)}, {_num(y)}]")


def _ring(coords: np.ndarray, dx: float, dy: float) -> list[_Raw]:
    return [_coord(x - dx, y - dy) for x, y in np.asarray(coords)[:, :2]]


def geometry_json(geom: BaseGeometry, origin: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """A shapely Point, MultiPoint, Polygon or MultiPolygon (OpenSlide level-0 px) as QuPath's
    GeoJSON geometry, in QuPath's frame (minus ``origin``)."""
    dx, dy = origin
    t = geom.geom_type
    if t == "Point":
        return {"type": "Point", "coordinates": _coord(geom.x - dx, geom.y - dy)}
    if t == "MultiPoint":
        return {"type": "MultiPoint", "coordinates": _ring(shapely.get_coordinates(geom), dx, dy)}
    if t == "Polygon":
        return {
            "type": "Polygon",
            "coordinates": [
                _ring(np.asarray(r.coords), dx, dy) for r in (geom.exterior, *geom.interiors)
            ],
        }
    if t == "MultiPolygon":
        return {
            "type": "MultiPolygon",
            "coordinates": [geometry_json(p, origin)["coordinates"] for p in geom.geoms],
        }
    raise ValueError(f"QuPath annotations here are points or polygons, got {t}")


def rectangle_json(box: Box, origin: tuple[float, float] = (0.0, 0.0)) -> dict[str, Any]:
    """A QuPath rectangle ROI ``(x, y, w, h)`` (OpenSlide level-0 px) as QuPath exports it: a
    Polygon ``(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)``."""
    x, y, w, h = (float(v) for v in box)
    ring = np.array([(x, y), (x + w, y), (x + w, y + h), (x, y + h), (x, y)])
    return {"type": "Polygon", "coordinates": [_ring(ring, *origin)]}


def qupath_feature(
    geometry: dict[str, Any],
    class_name: str | None,
    rng: np.random.Generator,
    *,
    locked: bool = False,
    name: str | None = None,
    object_type: str = "annotation",
    color: tuple[int, int, int] | None = None,
) -> dict[str, Any]:
    """One feature as QuPath writes it (key order ``type, id, geometry, properties``; in
    ``properties``: ``objectType``, ``name``, ``classification``, ``isLocked``).
    ``class_name`` None: unclassified (no ``classification``); ``color``: the class colour
    (default QuPath's for its built-in classes, grey otherwise)."""
    props: dict[str, Any] = {"objectType": object_type}
    if name is not None:
        props["name"] = name
    if class_name is not None:
        r, g, b = color or QUPATH_CLASS_COLORS.get(class_name, (64, 64, 64))
        props["classification"] = {"name": class_name, "color": _Raw(f"[{r}, {g}, {b}]")}
    if locked:
        props["isLocked"] = True
    fid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return {"type": "Feature", "id": fid, "geometry": geometry, "properties": props}


def _dump(obj: Any, indent: int | None, level: int = 0) -> str:
    if isinstance(obj, _Raw):
        return str(obj)
    if isinstance(obj, (dict, list)):
        items = list(obj.items()) if isinstance(obj, dict) else list(obj)
        if not items:
            return "{}" if isinstance(obj, dict) else "[]"
        open_, close = ("{", "}") if isinstance(obj, dict) else ("[", "]")
        if isinstance(obj, dict):
            parts = [
                json.dumps(k, ensure_ascii=False)
                + (":" if indent is None else ": ")
                + _dump(v, indent, level + 1)
                for k, v in items
            ]
        else:
            parts = [_dump(v, indent, level + 1) for v in items]
        if indent is None:
            return open_ + ",".join(parts) + close
        pad, end = "\n" + " " * indent * (level + 1), "\n" + " " * indent * level
        return open_ + ",".join(pad + p for p in parts) + end + close
    return json.dumps(obj, ensure_ascii=False)


def dumps_qupath(
    features: Sequence[dict[str, Any]], *, pretty: bool = False, feature_collection: bool = True
) -> str:
    """Features as QuPath's export writes them: a FeatureCollection (or a bare array), compact or
    pretty (two-space indent, as Gson's pretty printing)."""
    obj: Any = (
        {"type": "FeatureCollection", "features": list(features)}
        if feature_collection
        else list(features)
    )
    return _dump(obj, 2 if pretty else None)


def write_qupath_features(
    features: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    pretty: bool = False,
    feature_collection: bool = True,
) -> Path:
    """Write features as a QuPath export: ``.gz`` names are gzipped (as QuPath's *GZIP* choice)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    data = dumps_qupath(features, pretty=pretty, feature_collection=feature_collection).encode(
        "utf-8"
    )
    p.write_bytes(_gzip.compress(data, mtime=0) if p.name.lower().endswith(".gz") else data)
    return p


def _in_boxes(xy: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    m = np.zeros(len(xy), bool)
    for x, y, w, h in boxes:
        m |= (xy[:, 0] >= x) & (xy[:, 0] <= x + w) & (xy[:, 1] >= y) & (xy[:, 1] <= y + h)
    return m


def qupath_annotation_features(
    slide: SyntheticSlide,
    regions: Sequence[Box],
    rng: np.random.Generator | None = None,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    area_box: Box | str | None = "slide",
    lock_regions: bool = True,
) -> list[dict[str, Any]]:
    """The features of :func:`write_qupath_annotations` (regions first, then the point sets,
    then the area polygons), to extend before writing."""
    rng = rng if rng is not None else np.random.default_rng(0)
    feats = [
        qupath_feature(rectangle_json(r, origin), "Region*", rng, locked=lock_regions)
        for r in regions
    ]
    cells = slide.cells
    inside = _in_boxes(cells[:, :2], regions) if len(cells) else np.zeros(0, bool)
    kinds = np.asarray(slide.model.cells.kind) if len(cells) else np.zeros(0, int)
    immune = np.isin(kinds, [KIND_NAMES.index(k) for k in IMMUNE_KINDS])
    groups = {
        "Tumor": inside & (cells[:, 2] == TC),
        "Stroma": inside & (cells[:, 2] != TC) & ~immune,
        "Immune cells": inside & (cells[:, 2] != TC) & immune,
    }
    for name, m in groups.items():
        xy = cells[m, :2]
        if len(xy):
            geom = shapely.points(xy[0]) if len(xy) == 1 else shapely.multipoints(xy)
            feats.append(qupath_feature(geometry_json(geom, origin), name, rng))
    if area_box is not None:
        W, H = slide.size
        x, y, w, h = (
            (0.0, 0.0, float(W), float(H))
            if area_box == "slide"
            else tuple(float(v) for v in area_box)
        )
        ca = shapely.clip_by_rect(slide.cancer_area, x, y, x + w, y + h)
        for poly in getattr(ca, "geoms", None) or ([ca] if not ca.is_empty else []):
            if poly.geom_type == "Polygon" and poly.area > 0:
                feats.append(
                    qupath_feature(
                        geometry_json(shapely.set_precision(poly, 0.01), origin), "Tumor", rng
                    )
                )
        rest = shapely.set_precision(
            shapely.difference(shapely.box(x, y, x + w, y + h), slide.cancer_area), 0.01
        )
        if not rest.is_empty and rest.geom_type in ("Polygon", "MultiPolygon"):
            feats.append(qupath_feature(geometry_json(rest, origin), "Stroma", rng))
    return feats


def write_qupath_annotations(
    slide: SyntheticSlide,
    path: str | os.PathLike[str],
    regions: Sequence[Box],
    rng: np.random.Generator | None = None,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    area_box: Box | str | None = "slide",
    lock_regions: bool = True,
    pretty: bool = False,
) -> Path:
    """Write ``slide``'s ground truth as a QuPath GeoJSON export of a pathologist's annotations.

    Parameters
    ----------
    slide
        a :class:`SyntheticSlide` (``make_synthetic_slide`` / ``write_synthetic_slide``).
    path
        the file; QuPath's default name is ``<slide stem>.geojson`` (``.geojson.gz``: gzipped).
    regions
        ``(x, y, w, h)`` boxes in OpenSlide level-0 px: one ``Region*`` rectangle each (locked,
        with ``lock_regions``); every nucleus inside them (boundary included) is marked, one point
        set per class: ``Tumor`` (tumour cells), ``Immune cells`` (lymphocytes, plasma cells),
        ``Stroma`` (the other background cells).
    rng
        draws the object ids (UUIDs), so the same generator state gives the same bytes.
    origin
        subtracted from every coordinate: QuPath's frame (``Slide.bounds[:2]`` of a cropped slide).
    area_box
        where the areas are drawn: ``"slide"`` (all of it), a box, or None (no area polygons).
        ``Tumor`` polygons over the cancer area inside it, one ``Stroma`` polygon over the rest
        (its holes are the cancer area), as OCELOT labels everything outside the cancer area
        background.
    pretty
        QuPath's *Pretty JSON* option.
    """
    feats = qupath_annotation_features(
        slide, regions, rng, origin=origin, area_box=area_box, lock_regions=lock_regions
    )
    return write_qupath_features(feats, path, pretty=pretty)
