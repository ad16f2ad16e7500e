"""QuPath annotation exports (GeoJSON) read as OCELOT-style labels.

A pathologist marks, in QuPath, where the labels are complete and what is there:

* **regions**: rectangles or polygons classified ``Region*`` (QuPath's built-in region class):
  inside them *every* nucleus is marked. Outside them nothing is known about cells (the
  cell mask is 0 there: unknown, not "no cell").
* **cells**: point annotations (QuPath's Points tool: one ``MultiPoint`` per point set, a
  ``Point`` when it holds one), classified by the class map's ``tumour`` / ``background_cell``
  names (default ``Tumor`` → tumour cell; ``Stroma``, ``Immune cells``, ``Necrosis``,
  ``Other`` and unclassified → background cell). A point class the map does not know is an
  error that lists the names.
* **areas**: polygons classified ``cancer_area`` (default ``Tumor``) → cancer area (2); every
  other classified polygon → background area (1) (or only the ``background_area`` names, when
  the map lists them). Where both overlap, cancer area wins, so one large background polygon
  with tumour polygons drawn on top is enough. Everything else is unknown (255), as in the
  OCELOT release.
* ``ignore`` (default ``Ignore*``): points dropped; polygons cut out of the regions (cells
  there unknown) and left unknown in the tissue label.

Coordinates are level-0 px **in QuPath's frame** (the image as QuPath opened it: OpenSlide's
``openslide.bounds-x/y`` crop where a slide has one); :func:`read_slide_annotations` adds the
origin back (``Slide.bounds[:2]``, the one home of that offset) so everything here is in
OpenSlide's level-0 frame, like the tile boxes.

The file may be what *File → Export objects as GeoJSON* writes (a FeatureCollection, a single
Feature or an array of Features; plain, ``.gz`` or ``.zip``). Only ``objectType`` ``annotation``
is read; detections, cells and tiles are counted and skipped, lines are skipped with a note.
Every problem is one :class:`~wsi_ocelot.errors.DatasetError` or
:class:`~wsi_ocelot.errors.ConfigError` line naming the file, the problem and the fix.

The rasterisers test **pixel centres** (boundary included) against the geometry, as the
synthetic dataset does: output px ``(r, c)`` of a level-0 box ``(x, y, w, h)`` rendered at
``size`` px is the point ``(x + (c + 0.5) w / size, y + (r + 0.5) h / size)``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_ocelot.config import from_dict, load_yaml
from wsi_ocelot.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

#: QuPath's name of "no classification" (``PathClass.NULL_CLASS``); use it in a class map.
UNCLASSIFIED = "Unclassified"
#: Tissue label values (OCELOT): background, cancer area, unknown.
BG, CA, UNKNOWN = 1, 2, 255
#: Cell classes (OCELOT): background cell, tumour cell.
BC, TC = 1, 2

_EXPORT_FIX = "export the annotations again from QuPath (File > Export objects as GeoJSON, or exportObjectsToGeoJson in a script)"
_REGION_FIX = (
    "mark where every nucleus is labelled with a rectangle classified Region* (QuPath's built-in region class; "
    "or a class listed under 'region' in --class-map)"
)


# --------------------------------------------------------------------------- class map


def _names(value: Any, key: str, source: str | os.PathLike[str] | None) -> tuple[str, ...]:
    if (
        isinstance(value, str)
        or not isinstance(value, (list, tuple))
        or not all(isinstance(v, str) for v in value)
    ):
        raise ConfigError(
            source,
            f"class map '{key}' must be a list of QuPath class names, got {value!r}",
            f"write e.g. '{key}: [Tumor]' (QuPath's names, case as in QuPath; '{UNCLASSIFIED}' = no class)",
        )
    return tuple(value)


@dataclass(frozen=True)
class ClassMap:
    """Which QuPath class names play which role. Names are matched exactly (QuPath's classes
    are case-sensitive); a derived class is its names joined by ``": "`` (``"Tumor: Positive"``);
    ``"Unclassified"`` stands for no classification.

    Attributes
    ----------
    tumour, background_cell
        point classes → tumour cell (2) / background cell (1).
    cancer_area
        polygon classes → cancer area (2).
    background_area
        polygon classes → background area (1); ``None`` (default): every other classified
        polygon.
    region
        polygon classes that mark where every nucleus is labelled.
    ignore
        points dropped; polygons cut out of regions and unknown in the tissue label.
    """

    tumour: tuple[str, ...] = ("Tumor",)
    background_cell: tuple[str, ...] = ("Stroma", "Immune cells", "Necrosis", "Other", UNCLASSIFIED)
    cancer_area: tuple[str, ...] = ("Tumor",)
    background_area: tuple[str, ...] | None = None
    region: tuple[str, ...] = ("Region*",)
    ignore: tuple[str, ...] = ("Ignore*",)

    def __post_init__(self) -> None:
        for key in ("tumour", "background_cell", "cancer_area", "region", "ignore"):
            object.__setattr__(self, key, _names(getattr(self, key), key, None))
        if self.background_area is not None:
            object.__setattr__(
                self, "background_area", _names(self.background_area, "background_area", None)
            )
        if not self.region:
            raise ConfigError(
                None,
                "class map 'region' is empty",
                "list the class of the rectangles that mark where every nucleus is labelled, e.g. [Region*]",
            )
        clashes = [
            ("tumour", "background_cell", set(self.tumour) & set(self.background_cell)),
            (
                "cancer_area",
                "background_area",
                set(self.cancer_area) & set(self.background_area or ()),
            ),
            (
                "region",
                "an area or ignore",
                set(self.region)
                & (set(self.cancer_area) | set(self.background_area or ()) | set(self.ignore)),
            ),
            (
                "ignore",
                "a cell or area class",
                set(self.ignore)
                & (set(self.tumour) | set(self.background_cell) | set(self.cancer_area)),
            ),
        ]
        for a, b, both in clashes:
            if both:
                raise ConfigError(
                    None,
                    f"class name(s) {', '.join(map(repr, sorted(both)))} are both {a} and {b} in the class map",
                    "give each QuPath class one role per geometry (points: tumour/background_cell; polygons: cancer_area/background_area/region)",
                )

    def point_role(self, name: str) -> int | str | None:
        """``TC``/``BC`` for a point class, ``"ignore"``, ``"region"`` or None (unmapped)."""
        if name in self.tumour:
            return TC
        if name in self.background_cell:
            return BC
        if name in self.ignore:
            return "ignore"
        if name in self.region:
            return "region"
        return None

    def polygon_role(self, name: str) -> str | None:
        """``"region"``, ``"ignore"``, ``"cancer_area"``, ``"background_area"``, ``"unused"``
        (unclassified, with the default map) or None (unmapped)."""
        if name in self.region:
            return "region"
        if name in self.ignore:
            return "ignore"
        if name in self.cancer_area:
            return "cancer_area"
        if self.background_area is None:
            return "unused" if name == UNCLASSIFIED else "background_area"
        return "background_area" if name in self.background_area else None

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if v is not None else None) for k, v in asdict(self).items()}


def load_class_map(path: str | os.PathLike[str]) -> ClassMap:
    """A :class:`ClassMap` from YAML: the keys at the top level or under ``class_map:``;
    keys not given keep their defaults; an unknown key is an error listing the allowed ones."""
    data = load_yaml(path)
    if isinstance(data.get("class_map"), dict):
        data = data["class_map"]
    for key, value in data.items():
        if (
            key
            in {"tumour", "background_cell", "cancer_area", "background_area", "region", "ignore"}
            and value is not None
        ):
            _names(value, key, path)
    return from_dict(ClassMap, data, source=path)


# --------------------------------------------------------------------------- reading GeoJSON


@dataclass(frozen=True)
class Annotation:
    """One QuPath annotation as exported. ``feature`` is its position in the file (0-based);
    ``class_name`` is ``"Unclassified"`` when it has none; ``geometry`` is in QuPath's frame."""

    feature: int
    id: str | None
    name: str | None
    class_name: str
    geometry: BaseGeometry


def _load_json(path: Path) -> Any:
    lower = path.name.lower()
    try:
        if lower.endswith(".gz"):
            raw = gzip.decompress(path.read_bytes())
        elif lower.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.namelist() if m.lower().endswith((".geojson", ".json"))]
                if len(members) != 1:
                    raise DatasetError(
                        path,
                        f"the zip holds {len(members)} .geojson/.json files, expected one",
                        _EXPORT_FIX,
                    )
                raw = zf.read(members[0])
        else:
            raw = path.read_bytes()
        return json.loads(raw.decode("utf-8-sig"))
    except FileNotFoundError as err:
        raise DatasetError(
            path, "annotation file not found", "pass the GeoJSON QuPath exported for this slide"
        ) from err
    except (OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(
            path,
            f"not a readable GeoJSON file ({str(err).splitlines()[0] if str(err) else type(err).__name__})",
            _EXPORT_FIX,
        ) from err


def _class_name(cls: Any, path: Path, where: str) -> str:
    """QuPath's classification: absent → Unclassified, a string, or ``{"name"}`` /
    ``{"names": [...]}`` (a derived class, written as its parts since QuPath 0.4)."""
    if cls is None:
        return UNCLASSIFIED
    if isinstance(cls, str):
        return cls or UNCLASSIFIED
    if isinstance(cls, dict):
        names = cls.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return ": ".join(names)
        name = cls.get("name")
        if isinstance(name, str):
            return name or UNCLASSIFIED
    raise DatasetError(path, f"{where}: classification {cls!r} has no name", _EXPORT_FIX)


def read_qupath_geojson(path: str | os.PathLike[str]) -> tuple[list[Annotation], Counter[str]]:
    """The annotations of a QuPath GeoJSON export and a count of the objects skipped.

    Returns ``(annotations, skipped)``: ``skipped`` counts objects that are not annotations by
    their ``objectType`` (``detection``, ``cell``, ``tile``, ...) and annotations without a
    geometry (``"no geometry"``). Geometries are in QuPath's frame, unchanged."""
    p = Path(path)
    data = _load_json(p)
    feats: object  # checked to be a list below
    if isinstance(data, list):
        feats = data
    elif isinstance(data, dict) and (data.get("type") == "FeatureCollection" or "features" in data):
        feats = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    else:
        raise DatasetError(
            p,
            "the top level is not a FeatureCollection, a Feature or an array of Features",
            _EXPORT_FIX,
        )
    if not isinstance(feats, list):
        raise DatasetError(p, "'features' is not an array", _EXPORT_FIX)
    out: list[Annotation] = []
    skipped: Counter[str] = Counter()
    for i, f in enumerate(feats):
        where = f"feature {i + 1}"
        if not isinstance(f, dict):
            raise DatasetError(p, f"{where} is not a JSON object", _EXPORT_FIX)
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            raise DatasetError(p, f"{where}: 'properties' is not an object", _EXPORT_FIX)
        otype = props.get("objectType", props.get("object_type", props.get("type", "annotation")))
        if otype not in ("annotation", "PathAnnotationObject"):
            skipped[str(otype)] += 1
            continue
        fid = f.get("id") if isinstance(f.get("id"), str) else None
        if fid:
            where += f" (id {fid})"
        gj = f.get("geometry")
        if gj is None:
            skipped["no geometry"] += 1
            continue
        try:
            geom = shape(gj)
            coords = shapely.get_coordinates(geom)
        except (
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            IndexError,
            shapely.errors.GEOSException,
        ) as err:
            raise DatasetError(p, f"{where}: geometry cannot be read ({err})", _EXPORT_FIX) from err
        if not np.isfinite(coords).all():
            raise DatasetError(p, f"{where}: geometry has non-finite coordinates", _EXPORT_FIX)
        name = props.get("name") if isinstance(props.get("name"), str) else None
        out.append(
            Annotation(i, fid, name, _class_name(props.get("classification"), p, where), geom)
        )
    return out, skipped


def _parts(geom: BaseGeometry) -> list[BaseGeometry]:
    """Simple parts (Point, LineString, Polygon) of any geometry, collections flattened."""
    if geom.is_empty:
        return []
    if geom.geom_type in ("Point", "LineString", "LinearRing", "Polygon"):
        return [geom]
    out: list[BaseGeometry] = []
    for g in shapely.get_parts(geom):
        out.extend(_parts(g))
    return out


def _polygonal(parts: list[BaseGeometry]) -> BaseGeometry:
    """The union of polygon parts, made valid, polygonal parts only (empty when none)."""
    if not parts:
        return shapely.Polygon()
    geom = shapely.union_all([p if p.is_valid else shapely.make_valid(p) for p in parts])
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polys = [g for g in _parts(geom) if g.geom_type == "Polygon" and g.area > 0]
    return shapely.union_all(polys) if polys else shapely.Polygon()


# --------------------------------------------------------------------------- one slide's labels


@dataclass(frozen=True)
class Region:
    """A region where every nucleus is marked. ``index`` counts the file's regions from 1 in
    file order; ``geometry`` is in OpenSlide's level-0 frame, clipped to the image, without
    the ``ignore`` areas."""

    index: int
    feature: int
    id: str | None
    name: str | None
    geometry: BaseGeometry

    @property
    def label(self) -> str:
        return f"region {self.index}" + (f" ({self.name!r})" if self.name else "")

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "id": self.id}


@dataclass(frozen=True)
class SlideAnnotations:
    """One slide's annotations in OpenSlide's level-0 frame.

    ``cells`` is ``(N, 3)`` float64 ``(x, y, class)`` with class 1 = BC, 2 = TC (every marked
    point, inside a region or not); the areas are shapely geometries (possibly empty);
    ``counts`` says what was read and what was skipped (for the log and metadata.json)."""

    path: Path
    regions: tuple[Region, ...]
    cells: np.ndarray
    cancer_area: BaseGeometry
    background_area: BaseGeometry
    ignore_area: BaseGeometry
    counts: dict[str, int] = field(default_factory=dict)

    def labelled_area(self, indices: set[int] | None = None) -> BaseGeometry:
        """The union of the regions (all, or those whose ``index`` is in ``indices``)."""
        geoms = [r.geometry for r in self.regions if indices is None or r.index in indices]
        return shapely.union_all(geoms) if geoms else shapely.Polygon()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _fmt_box(g: BaseGeometry) -> str:
    x0, y0, x1, y1 = g.bounds
    return f"x {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}"


def interpret_annotations(
    annotations: list[Annotation],
    class_map: ClassMap,
    path: str | os.PathLike[str],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    image_box: tuple[float, float, float, float] | None = None,
    slide_name: str = "the slide",
    skipped: Counter[str] | None = None,
) -> SlideAnnotations:
    """Give each annotation its role (:class:`ClassMap`) and move it to OpenSlide's frame.

    ``origin`` is added to every coordinate (QuPath's frame → OpenSlide's: ``bounds-x/y``);
    ``image_box`` ``(x, y, w, h)`` is the image as QuPath sees it, in OpenSlide's frame: a region
    partly outside it is clipped with a warning, one wholly outside it is an error. Errors: no
    region, class names the map does not know (all listed in one line)."""
    p = Path(path)
    ox, oy = float(origin[0]), float(origin[1])
    counts: Counter[str] = Counter()
    unmapped: dict[str, Counter[str]] = {}
    points: list[np.ndarray] = []
    areas: dict[str, list[BaseGeometry]] = {"cancer_area": [], "background_area": [], "ignore": []}
    raw_regions: list[tuple[Annotation, BaseGeometry]] = []

    for ann in annotations:
        parts = _parts(
            shapely.transform(ann.geometry, lambda xy: xy + (ox, oy))
            if (ox or oy)
            else ann.geometry
        )
        pts = [g for g in parts if g.geom_type == "Point"]
        polys = [g for g in parts if g.geom_type == "Polygon"]
        n_lines = sum(1 for g in parts if g.geom_type in ("LineString", "LinearRing"))
        if n_lines:
            counts["lines"] += n_lines
        if pts:
            role = class_map.point_role(ann.class_name)
            if role is None:
                unmapped.setdefault(ann.class_name, Counter())["point"] += len(pts)
            elif role in ("ignore", "region"):
                counts[f"points_{role}"] += len(pts)
            else:
                xy = shapely.get_coordinates(pts)
                points.append(np.column_stack([xy, np.full(len(xy), float(role))]))
        if polys:
            role = class_map.polygon_role(ann.class_name)
            geom = _polygonal(polys)
            if role is None:
                unmapped.setdefault(ann.class_name, Counter())["polygon"] += 1
            elif geom.is_empty:
                counts["polygons_empty"] += 1
            elif role == "unused":
                counts["polygons_unclassified"] += 1
            elif role == "region":
                raw_regions.append((ann, geom))
            else:
                areas[role].append(geom)

    if unmapped:
        listed = ", ".join(
            f"{name!r} ({', '.join(_plural(n, kind) for kind, n in c.items())})"
            for name, c in sorted(unmapped.items())
        )
        raise DatasetError(
            p,
            f"QuPath class name(s) not in the class map: {listed}",
            "list each in a YAML passed with --class-map: points under tumour or background_cell, polygons under "
            "cancer_area or background_area, or either under ignore (defaults: tumour [Tumor]; background_cell "
            f"[Stroma, Immune cells, Necrosis, Other, {UNCLASSIFIED}]; cancer_area [Tumor])",
        )
    if not raw_regions:
        raise DatasetError(
            p,
            f"no region annotation (a polygon or rectangle classified {' or '.join(class_map.region)})",
            _REGION_FIX,
        )

    ignore_area = shapely.union_all(areas["ignore"]) if areas["ignore"] else shapely.Polygon()
    image = (
        shapely.box(
            image_box[0], image_box[1], image_box[0] + image_box[2], image_box[1] + image_box[3]
        )
        if image_box
        else None
    )
    regions: list[Region] = []
    for k, (ann, geom) in enumerate(raw_regions, start=1):
        region = Region(k, ann.feature, ann.id, ann.name, geom)
        if image is not None:
            inside = shapely.intersection(geom, image)
            inside = _polygonal(_parts(inside))
            if inside.is_empty:
                crop_hint = (
                    "; if QuPath opened the slide uncropped (--no-crop), pass --no-qupath-crop"
                    if (ox or oy)
                    else ""
                )
                raise DatasetError(
                    p,
                    f"{region.label} ({_fmt_box(geom)}, OpenSlide level-0 px) lies outside the image of {slide_name} "
                    f"({_fmt_box(image)})",
                    f"pass the GeoJSON exported from this slide's image in QuPath (named <slide stem>.geojson){crop_hint}",
                )
            if inside.area < geom.area * (1 - 1e-9):
                log.warning(
                    "%s: %s extends outside the image of %s (%.0f%% of it outside); clipped to the image",
                    p,
                    region.label,
                    slide_name,
                    100 * (1 - inside.area / geom.area),
                )
                counts["regions_clipped"] += 1
            geom = inside
        if not ignore_area.is_empty:
            geom = _polygonal(_parts(shapely.difference(geom, ignore_area)))
            if geom.is_empty:
                log.warning("%s: %s lies wholly inside an ignored area; skipped", p, region.label)
                continue
        regions.append(Region(k, ann.feature, ann.id, ann.name, geom))

    cells = np.concatenate(points) if points else np.zeros((0, 3))
    if len(cells) and not ignore_area.is_empty:
        keep = ~shapely.intersects_xy(ignore_area, cells[:, 0], cells[:, 1])
        if not keep.all():
            counts["points_in_ignored_area"] += int((~keep).sum())
        cells = cells[keep]
    if skipped:
        for otype, n in skipped.items():
            counts[f"skipped_{otype.replace(' ', '_')}"] += n
    counts["regions"] = len(regions)
    counts["points_tumour"] = int((cells[:, 2] == TC).sum()) if len(cells) else 0
    counts["points_background"] = int((cells[:, 2] == BC).sum()) if len(cells) else 0
    return SlideAnnotations(
        path=p,
        regions=tuple(regions),
        cells=cells,
        cancer_area=shapely.union_all(areas["cancer_area"])
        if areas["cancer_area"]
        else shapely.Polygon(),
        background_area=shapely.union_all(areas["background_area"])
        if areas["background_area"]
        else shapely.Polygon(),
        ignore_area=ignore_area,
        counts=dict(counts),
    )


def read_slide_annotations(
    path: str | os.PathLike[str],
    class_map: ClassMap | None = None,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    image_box: tuple[float, float, float, float] | None = None,
    slide_name: str = "the slide",
) -> SlideAnnotations:
    """Read a QuPath export and interpret it (:func:`read_qupath_geojson` +
    :func:`interpret_annotations`); what was skipped goes to the log."""
    annotations, skipped = read_qupath_geojson(path)
    result = interpret_annotations(
        annotations,
        class_map or ClassMap(),
        path,
        origin=origin,
        image_box=image_box,
        slide_name=slide_name,
        skipped=skipped,
    )
    c = result.counts
    notes = [f"{n} {otype}{'s' if n != 1 else ''}" for otype, n in sorted(skipped.items())]
    if notes:
        log.info("%s: skipped %s (only annotations are read)", path, ", ".join(notes))
    if c.get("lines"):
        log.info(
            "%s: %d line annotation(s) skipped (lines mark nothing for training)", path, c["lines"]
        )
    if c.get("polygons_unclassified"):
        log.info(
            "%s: %d unclassified polygon(s) not used (classify them: %s for cancer area, any other class for background area)",
            path,
            c["polygons_unclassified"],
            "/".join(class_map.cancer_area if class_map else ("Tumor",)),
        )
    if c.get("points_region"):
        log.info("%s: %d point(s) classified as a region class ignored", path, c["points_region"])
    return result


# --------------------------------------------------------------------------- rasterising


def pixel_centres(
    box: tuple[float, float, float, float] | np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 x (columns) and y (rows) of the pixel centres of ``box = (x, y, w, h)`` rendered
    at ``size × size`` px."""
    x, y, w, h = (float(v) for v in box)
    c = np.arange(size) + 0.5
    return x + c * (w / size), y + c * (h / size)


def rasterise(
    geom: BaseGeometry, box: tuple[float, float, float, float] | np.ndarray, size: int
) -> np.ndarray:
    """``bool (size, size)``: True where a pixel centre of ``box`` lies in ``geom`` (boundary
    included)."""
    x, y, w, h = (float(v) for v in box)
    if geom.is_empty:
        return np.zeros((size, size), bool)
    frame = shapely.box(x, y, x + w, y + h)
    if geom.covers(frame):
        return np.ones((size, size), bool)
    g = shapely.clip_by_rect(geom, x - 1, y - 1, x + w + 1, y + h + 1)
    if g.is_empty:
        return np.zeros((size, size), bool)
    shapely.prepare(g)
    cx, cy = pixel_centres(box, size)
    xx, yy = np.meshgrid(cx, cy)
    return shapely.intersects_xy(g, xx, yy)


def tissue_label(
    ann: SlideAnnotations, box: tuple[float, float, float, float] | np.ndarray, size: int
) -> np.ndarray:
    """``uint8 (size, size)`` OCELOT tissue label of a level-0 box: 2 in the cancer area,
    1 in the background area (cancer area wins where they overlap), 255 elsewhere and in the
    ignored areas."""
    label = np.full((size, size), UNKNOWN, np.uint8)
    label[rasterise(ann.background_area, box, size)] = BG
    label[rasterise(ann.cancer_area, box, size)] = CA
    if not ann.ignore_area.is_empty:
        label[rasterise(ann.ignore_area, box, size)] = UNKNOWN
    return label


def cells_in_box(
    cells: np.ndarray,
    labelled: BaseGeometry,
    box: tuple[float, float, float, float] | np.ndarray,
    size: int,
) -> np.ndarray:
    """The marked cells inside ``labelled`` and the half-open box ``[x, x + w) × [y, y + h)``,
    as ``int (k, 3)`` ``(x, y, class)`` in output px of the box rendered at ``size`` (floor,
    as the OCELOT CSVs hold integers)."""
    x, y, w, h = (float(v) for v in box)
    if not len(cells) or labelled.is_empty:
        return np.zeros((0, 3), np.int64)
    m = (cells[:, 0] >= x) & (cells[:, 0] < x + w) & (cells[:, 1] >= y) & (cells[:, 1] < y + h)
    c = cells[m]
    if len(c):
        c = c[shapely.intersects_xy(labelled, c[:, 0], c[:, 1])]
    px = np.floor((c[:, 0] - x) * (size / w)).astype(np.int64)
    py = np.floor((c[:, 1] - y) * (size / h)).astype(np.int64)
    return np.column_stack(
        [np.clip(px, 0, size - 1), np.clip(py, 0, size - 1), c[:, 2].astype(np.int64)]
    )
