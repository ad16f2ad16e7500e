"""`wsi-ocelot tiles --annotations`: QuPath annotation exports in, an OCELOT-layout dataset out.

The annotations are written byte for byte as QuPath 0.4-0.7 exports them (File > Export objects
as GeoJSON: a compact FeatureCollection, a UUID per object, Region* rectangles as closed
5-point Polygons, one MultiPoint per point class, classification objects with QuPath's built-in
colours, isLocked only when locked) from a synthetic slide's ground truth, so the built dataset
can be checked against that truth: every marked cell in the right tile at the right cell-patch
pixel, the tissue label equal to the cancer-area polygons, the cell mask 1 exactly inside the
regions. Then the error cases, the QuPath frame of a cropped (MIRAX-like) slide, the splits, the
command line and the round trip through the dataset readers and the training Dataset.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_ocelot.cli import main
from wsi_ocelot.config import GeometryConfig
from wsi_ocelot.datasets.ocelot import (
    list_pairs,
    read_cell_csv,
    read_cell_mask,
    read_metadata,
    read_tissue_png,
)
from wsi_ocelot.datasets.qupath import (
    ClassMap,
    load_class_map,
    read_qupath_geojson,
    read_slide_annotations,
)
from wsi_ocelot.errors import ConfigError, DatasetError
from wsi_ocelot.slide import open_slide
from wsi_ocelot.synthetic import make_synthetic_slide
from wsi_ocelot.synthetic.qupath_export import (
    dumps_qupath,
    geometry_json,
    qupath_annotation_features,
    qupath_feature,
    rectangle_json,
    write_qupath_annotations,
    write_qupath_features,
)
from wsi_ocelot.tiling.annotated import (
    AnnotatedTilingConfig,
    SplitRule,
    build_annotated_dataset,
    region_cell_boxes,
)

#: 128 px cell tiles at 0.5 µm/px: 256 level-0 px on the 0.25 µm/px slide, contexts of 1024 px.
GEO = GeometryConfig(
    cell_mpp=0.5, tissue_mpp=2.0, tile_size=128, context_factor=4, cell_margin=16, tissue_margin=16
)
T = GEO.tile_size
#: Two regions inside the 2048² slide (2 × 2 and 3 × 2 tiles) and one across its bottom-right corner.
REGIONS = [(300.0, 300.0, 480.0, 400.0), (1100.0, 900.0, 600.0, 450.0)]
EDGE_REGION = (1850.0, 1700.0, 400.0, 500.0)


@pytest.fixture(scope="module")
def truth():
    """The ground truth of conftest's ``synth_025`` (same generator arguments: same slide)."""
    return make_synthetic_slide(mpp=0.25, size=(2048, 2048), seed=11)


def _cfg(**kw) -> AnnotatedTilingConfig:
    return AnnotatedTilingConfig(geometry=GEO, **kw)


def _write(path: Path, feats) -> Path:
    return write_qupath_features(feats, path)


def _region(box, rng, name=None):
    return qupath_feature(rectangle_json(box), "Region*", rng, locked=True, name=name)


# --------------------------------------------------------------------------- the export itself


def test_the_export_is_what_qupath_writes(truth, tmp_path):
    rng = np.random.default_rng(1)
    path = write_qupath_annotations(truth, tmp_path / "synth_025.geojson", REGIONS, rng)
    text = path.read_text()
    # Gson's compact form: no spaces between tokens, except inside QuPath's pre-formatted coordinates / colours
    assert text.startswith('{"type":"FeatureCollection","features":[{"type":"Feature","id":"')
    assert '"classification":{"name":"Region*","color":[0, 0, 180]},"isLocked":true}' in text
    assert (
        '"coordinates":[[[300, 300],[780, 300],[780, 700],[300, 700],[300, 300]]]' in text
    )  # JTS's rectangle ring
    assert not re.search(r"\d\.\d*0[,\]]", text)  # at most two decimals, no trailing zeros
    data = json.loads(text)
    feats = data["features"]
    for f in feats:
        assert list(f) == ["type", "id", "geometry", "properties"]
        assert uuid.UUID(f["id"]).version == 4
        props = f["properties"]
        assert (
            list(props)[:2] == ["objectType", "classification"]
            and props["objectType"] == "annotation"
        )
        assert set(props["classification"]) == {"name", "color"}
        assert props.get("isLocked", True) is True  # written only when locked
    by_class: dict[str, list[str]] = {}
    for f in feats:
        by_class.setdefault(f["properties"]["classification"]["name"], []).append(
            f["geometry"]["type"]
        )
    assert by_class["Region*"] == ["Polygon", "Polygon"]
    for cls in ("Tumor", "Stroma", "Immune cells"):  # one point set per class
        assert by_class[cls].count("MultiPoint") == 1
    assert {"Polygon", "MultiPolygon"} & set(by_class["Tumor"]) and set(by_class["Stroma"]) & {
        "Polygon",
        "MultiPolygon",
    }
    # the background polygon has the cancer area cut out: a polygon with holes
    stroma = next(
        f
        for f in feats
        if f["properties"]["classification"]["name"] == "Stroma"
        and f["geometry"]["type"] != "MultiPoint"
    )
    rings = (
        stroma["geometry"]["coordinates"]
        if stroma["geometry"]["type"] == "Polygon"
        else stroma["geometry"]["coordinates"][0]
    )
    assert len(rings) > 1
    # the same bytes from the same generator state; QuPath's pretty form parses to the same objects
    again = write_qupath_annotations(
        truth, tmp_path / "again.geojson", REGIONS, np.random.default_rng(1)
    )
    assert again.read_bytes() == path.read_bytes()
    pretty = write_qupath_annotations(
        truth, tmp_path / "pretty.geojson", REGIONS, np.random.default_rng(1), pretty=True
    )
    assert pretty.read_text().startswith(
        '{\n  "type": "FeatureCollection",\n  "features": [\n    {\n      "type": "Feature",'
    )
    assert json.loads(pretty.read_text()) == data


# --------------------------------------------------------------------------- the dataset against the truth


def _expected_cells(truth, region_geom, box):
    x, y, w, h = box
    c = truth.cells
    m = (c[:, 0] >= x) & (c[:, 0] < x + w) & (c[:, 1] >= y) & (c[:, 1] < y + h)
    c = c[m]
    c = c[shapely.intersects_xy(region_geom, c[:, 0], c[:, 1])]
    return np.column_stack(
        [np.floor((c[:, 0] - x) * T / w), np.floor((c[:, 1] - y) * T / h), c[:, 2]]
    )


def _box(entry, which):
    b = entry[which]
    return (b["x_start"], b["y_start"], b["x_end"] - b["x_start"], b["y_end"] - b["y_start"])


def _centres(box, size=T):
    x, y, w, h = box
    c = np.arange(size) + 0.5
    return np.meshgrid(x + c * w / size, y + c * h / size)


@pytest.fixture(scope="module")
def built(truth, synth_025, tmp_path_factory):
    """synth_025 annotated with two regions inside it and one across its corner, plus marked cells
    outside every region, a detection and a line (ignored), split by region so both splits exist."""
    root = tmp_path_factory.mktemp("qupath")
    rng = np.random.default_rng(7)
    feats = qupath_annotation_features(truth, [*REGIONS, EDGE_REGION], rng)
    outside = truth.cells[(truth.cells[:, 0] > 1000) & (truth.cells[:, 0] < 1090)][
        :5, :2
    ]  # between the regions
    assert len(outside) >= 2
    feats.append(qupath_feature(geometry_json(shapely.multipoints(outside)), "Tumor", rng))
    feats.append(qupath_feature(geometry_json(shapely.Point(50, 60)), "Immune cells", rng))
    feats.append(
        qupath_feature(
            geometry_json(shapely.Point(400, 400)), "Tumor", rng, object_type="detection"
        )
    )
    feats.append(
        qupath_feature({"type": "LineString", "coordinates": [[10, 10], [90, 40]]}, None, rng)
    )
    ann = _write(root / "ann" / "synth_025.geojson", feats)
    result = build_annotated_dataset(
        [synth_025],
        ann.parent,
        root / "ds",
        _cfg(split=SplitRule(by_region=True, val_fraction=0.34)),
    )
    return root / "ds", result, outside


def test_every_marked_cell_lands_in_its_tile(truth, built):
    root, result, outside = built
    meta = read_metadata(root)
    image = shapely.box(0, 0, 2048, 2048)
    regions = {
        i + 1: shapely.intersection(shapely.box(x, y, x + w, y + h), image)
        for i, (x, y, w, h) in enumerate([*REGIONS, EDGE_REGION])
    }
    seen = 0
    for pid, entry in meta.items():
        split = entry["subset"]
        same_split = shapely.union_all(
            [
                g
                for i, g in regions.items()
                if any(e["region"]["index"] == i and e["subset"] == split for e in meta.values())
            ]
        )
        box = _box(entry, "cell")
        got = read_cell_csv(root / "annotations" / split / "cell" / f"{pid}.csv")
        want = _expected_cells(truth, same_split, box)
        assert len(got) == len(want), pid
        order = lambda a: a[np.lexsort((a[:, 2], a[:, 1], a[:, 0]))]  # noqa: E731
        np.testing.assert_allclose(order(got), order(want), atol=1)  # within 1 px (here: exactly)
        assert np.array_equal(order(got), order(want))
        seen += len(got)
    # every marked cell inside a region is written exactly once; those outside every region are not
    inside = shapely.intersects_xy(
        shapely.union_all(list(regions.values())), truth.cells[:, 0], truth.cells[:, 1]
    )
    assert seen == int(inside.sum()) > 50
    counts = result.counts["synth_025"]
    assert counts["points_outside_regions"] == len(outside) + 1
    assert counts["cells_written"] == seen and "cells_left_out" not in counts
    assert counts["skipped_detection"] == 1 and counts["lines"] == 1


def test_cell_mask_is_one_exactly_inside_the_regions(built):
    root, _, _ = built
    meta = read_metadata(root)
    for pid, entry in meta.items():
        split = entry["subset"]
        mask = read_cell_mask(root / "annotations" / split / "cell_mask" / f"{pid}.png")
        xx, yy = _centres(_box(entry, "cell"))
        want = np.zeros_like(mask)
        for i, (x, y, w, h) in enumerate([*REGIONS, EDGE_REGION], start=1):
            if any(e["region"]["index"] == i and e["subset"] == split for e in meta.values()):
                want |= (xx >= x) & (xx <= min(x + w, 2048)) & (yy >= y) & (yy <= min(y + h, 2048))
        assert np.array_equal(mask, want), pid
        assert entry["labelled_fraction"] == pytest.approx(want.mean(), abs=0.02)
    with Image.open(root / "annotations" / split / "cell_mask" / f"{pid}.png") as im:
        assert im.mode == "L" and set(np.unique(np.asarray(im))) <= {0, 1}


def test_tissue_label_matches_the_polygons(truth, built):
    root, _, _ = built
    meta = read_metadata(root)
    values: set[int] = set()
    for pid, entry in meta.items():
        label = read_tissue_png(root / "annotations" / entry["subset"] / "tissue" / f"{pid}.png")
        values |= set(np.unique(label).tolist())
        box = _box(entry, "tissue")
        assert box[2] == 4 * _box(entry, "cell")[2]  # the context: 4× the field of view, centred
        xx, yy = _centres(box)
        want = np.full(
            label.shape, 255, np.uint8
        )  # outside the annotated area (the slide): unknown
        want[(xx >= 0) & (xx <= 2048) & (yy >= 0) & (yy <= 2048)] = 1
        want[shapely.intersects_xy(truth.cancer_area, xx, yy)] = 2
        assert np.mean(label != want) < 0.002, pid
    assert values == {1, 2, 255}  # cancer area, background, and beyond the slide's edge: unknown


def test_metadata_and_round_trip(built, synth_025):
    root, result, _ = built
    data = json.loads((root / "metadata.json").read_text())
    gi = data["general_info"]
    assert gi["class_map"] == ClassMap().to_json() and gi["software"]["wsi_ocelot"]
    assert gi["annotations"]["synth_025"]["file"].endswith("synth_025.geojson")
    assert gi["geometry"]["tile_size"] == T and "by region" in gi["split_rule"]
    assert data["label_info"]["cell_mask"] == {"unknown": 0, "labelled": 1}
    assert set(result.splits) == {"train", "val", "test"} and result.splits[
        "train"
    ] == result.splits["val"] == ["synth_025"]
    for split in ("train", "val"):
        recs = list_pairs(root, split)
        assert recs and all(r.cell_mask is not None and r.organ is None for r in recs)
        for r in recs:
            e = data["sample_pairs"][r.id]
            assert e["slide_name"] == "synth_025" and e["subset"] == split and e["organ"] is None
            assert set(e["region"]) == {"index", "name", "id"} and uuid.UUID(e["region"]["id"])
            assert (
                r.offset == (0.5, 0.5)
                and r.cell_mpp == pytest.approx(0.5)
                and r.tissue_mpp == pytest.approx(2.0)
            )
    # ids grouped by split, as in the release: train first
    train_ids = [r.id for r in list_pairs(root, "train")]
    val_ids = [r.id for r in list_pairs(root, "val")]
    assert max(train_ids) < min(val_ids)
    # the images are what the slide shows there
    with open_slide(synth_025) as slide:
        e = data["sample_pairs"][train_ids[0]]
        want = slide.read_box(_box(e, "cell"), (T, T)).astype(int)
    with Image.open(root / "images" / "train" / "cell" / f"{train_ids[0]}.jpg") as im:
        assert np.abs(np.asarray(im).astype(int) - want).mean() < 4


def test_the_training_dataset_loads_a_sample(built):
    pytest.importorskip("torch")
    from training.data import OcelotDataset

    root, _, _ = built
    ds = OcelotDataset(root, "train")
    item = ds[0]
    assert tuple(item["cell"].shape) == (3, T, T) and tuple(item["tissue_label"].shape) == (T, T)
    assert ds.masked_pairs == len(ds)


def test_show_labels_draws_the_mask_and_the_cells(built, tmp_path):
    """training.show_labels: training/README.md's picture of a dataset; the area outside a pair's cell mask is
    dimmed, marked cells are drawn in their class colour."""
    from training.show_labels import BC_COLOUR, TC_COLOUR, main, render
    from wsi_ocelot.datasets.ocelot import list_pairs, read_cell_mask

    root, _, _ = built
    rec = next(
        r
        for r in list_pairs(root, "train")
        if r.cell_mask and not read_cell_mask(r.cell_mask).all()
    )
    size = 256
    img = np.asarray(render(root, "train", ids=[rec.id], size=size))
    cell = img[10 : 10 + size, 10 : 10 + size].astype(int)
    mask = (
        np.asarray(
            Image.fromarray(read_cell_mask(rec.cell_mask).astype(np.uint8) * 255).resize(
                (size, size)
            )
        )
        > 127
    )
    plain = np.asarray(Image.open(rec.cell_image).convert("RGB").resize((size, size))).astype(int)
    assert cell[~mask].mean() < 0.6 * plain[~mask].mean()  # dimmed outside the mask
    colours = {tuple(c) for c in cell.reshape(-1, 3)}
    assert TC_COLOUR in colours or BC_COLOUR in colours
    assert (
        main(
            [
                str(root),
                "--split",
                "train",
                "--pairs",
                "2",
                "--size",
                "64",
                "--out",
                str(tmp_path / "l.png"),
            ]
        )
        == 0
    )
    assert Image.open(tmp_path / "l.png").size == (2 * 64 + 30, 2 * (64 + 10) + 10)


# --------------------------------------------------------------------------- geometry details


def test_polygon_with_a_hole_and_ignored_areas(synth_025, tmp_path):
    rng = np.random.default_rng(2)
    region = (512.0, 512.0, 512.0, 512.0)
    donut = shapely.Polygon(
        [(600, 600), (900, 600), (900, 900), (600, 900)],
        [[(700, 700), (800, 700), (800, 800), (700, 800)]],
    )
    feats = [
        _region(region, rng, name="R1"),
        qupath_feature(geometry_json(donut), "Tumor", rng),
        qupath_feature(geometry_json(shapely.box(400, 400, 1200, 1200)), "Stroma", rng),
        qupath_feature(
            geometry_json(shapely.box(512, 512, 640, 576)), "Ignore*", rng
        ),  # a fold: cut out of the region
        qupath_feature(
            geometry_json(shapely.multipoints([(520, 530), (700, 600.5), (1100.25, 1000)])),
            "Tumor",
            rng,
        ),
        qupath_feature(
            geometry_json(shapely.Point(610.5, 700)), None, rng
        ),  # unclassified point: background cell
        qupath_feature(
            geometry_json(shapely.box(100, 100, 200, 200)), None, rng
        ),  # unclassified polygon: not used
    ]
    ann = _write(tmp_path / "synth_025.geojson", feats)
    build_annotated_dataset([synth_025], ann, tmp_path / "ds", _cfg(split=SplitRule(split="train")))
    meta = read_metadata(tmp_path / "ds")
    assert len(meta) == 4 and {e["region"]["name"] for e in meta.values()} == {"R1"}

    def value_at(kind, x, y):
        for pid, e in meta.items():
            box = _box(e, "tissue" if kind == "tissue" else "cell")
            if box[0] <= x < box[0] + box[2] and box[1] <= y < box[1] + box[3]:
                s = T / box[2]
                col, row = int((x - box[0]) * s), int((y - box[1]) * s)
                img = (read_tissue_png if kind == "tissue" else read_cell_mask)(
                    tmp_path
                    / "ds"
                    / "annotations"
                    / "train"
                    / ("tissue" if kind == "tissue" else "cell_mask")
                    / f"{pid}.png"
                )
                return img[row, col]
        raise AssertionError((x, y))

    assert value_at("tissue", 650, 650) == 2  # the tumour ring
    assert value_at("tissue", 750, 750) == 1  # its hole: the stroma polygon under it
    assert value_at("tissue", 450, 450) == 1  # stroma only
    assert value_at("tissue", 1300, 1300) == 255  # outside every polygon
    assert value_at("tissue", 560, 540) == 255  # the ignored area
    assert value_at("mask", 560, 540) == 0 and value_at("mask", 700, 700) == 1
    rows = np.concatenate(
        [
            read_cell_csv(tmp_path / "ds" / "annotations" / "train" / "cell" / f"{p}.csv")
            for p in meta
        ]
    )
    assert sorted(rows[:, 2].tolist()) == [
        1.0,
        2.0,
    ]  # the point in the fold and the one outside the region dropped


def test_region_grid():
    # a 480 × 400 rectangle: 2 × 2 tiles of 256, centred on it; a sliver of a polygon is skipped
    boxes, frac = region_cell_boxes(shapely.box(300, 300, 780, 700), 256, (0, 0, 2048, 2048))
    assert boxes.tolist() == [
        [284, 244, 256, 256],
        [540, 244, 256, 256],
        [284, 500, 256, 256],
        [540, 500, 256, 256],
    ]
    assert (frac > 0.25).all()
    tri = shapely.Polygon([(0, 0), (1000, 0), (0, 1000)])
    boxes, frac = region_cell_boxes(tri, 256, (0, 0, 2048, 2048), 0.05)
    assert (frac >= 0.05).all() and len(boxes) < 16
    # kept inside the image where it fits; a tiny region keeps its one tile
    boxes, _ = region_cell_boxes(shapely.box(2000, 10, 2048, 30), 256, (0, 0, 2048, 2048))
    assert boxes.tolist() == [[1792, 0, 256, 256]]


def test_region_partly_outside_is_clipped_with_a_warning(truth, synth_025, tmp_path, caplog):
    ann = write_qupath_annotations(
        truth,
        tmp_path / "a" / "synth_025.geojson",
        [EDGE_REGION],
        np.random.default_rng(3),
        area_box=None,
    )
    with caplog.at_level(logging.WARNING, logger="wsi_ocelot"):
        build_annotated_dataset(
            [synth_025], ann, tmp_path / "ds", _cfg(split=SplitRule(split="train"))
        )
    assert any(
        "region 1 extends outside the image" in r.getMessage() and "clipped" in r.getMessage()
        for r in caplog.records
    )
    meta = read_metadata(tmp_path / "ds")
    assert len(meta) == 2  # 198 × 348 px of the region left: 1 × 2 tiles
    for pid, e in meta.items():
        x, y, w, h = _box(e, "cell")
        assert x + w <= 2048 and y + h <= 2048  # the grid stays on the slide
        label = read_tissue_png(tmp_path / "ds" / "annotations" / "train" / "tissue" / f"{pid}.png")
        assert set(np.unique(label).tolist()) == {255}  # no area polygons: unknown everywhere


# --------------------------------------------------------------------------- QuPath's frame (OpenSlide bounds)


def test_cropped_slide_coordinates_are_moved_back(truth, synth_025, tmp_path, caplog):
    """A MIRAX-like slide: QuPath opens only openslide.bounds-*, so its coordinates start at
    (bounds-x, bounds-y); the dataset's boxes and cells are back in OpenSlide's frame."""
    origin = (256, 128)
    with open_slide(synth_025) as slide:
        slide.properties.update(
            {
                "openslide.bounds-x": "256",
                "openslide.bounds-y": "128",
                "openslide.bounds-width": "1536",
                "openslide.bounds-height": "1792",
            }
        )
        assert slide.bounds == (256, 128, 1536, 1792)
        ann = write_qupath_annotations(
            truth,
            tmp_path / "a" / "synth_025.geojson",
            [REGIONS[1]],
            np.random.default_rng(4),
            origin=origin,
        )
        text = ann.read_text()
        assert (
            "[[[844, 772],[1444, 772]" in text
        )  # QuPath's frame: level-0 px minus the bounds origin
        build_annotated_dataset([slide], ann, tmp_path / "ds", _cfg(split=SplitRule(split="train")))
        meta = read_metadata(tmp_path / "ds")
        region = shapely.box(1100, 900, 1700, 1350)
        n = 0
        for pid, e in meta.items():
            got = read_cell_csv(tmp_path / "ds" / "annotations" / "train" / "cell" / f"{pid}.csv")
            want = _expected_cells(truth, region, _box(e, "cell"))
            assert len(got) == len(want) and np.array_equal(
                got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])].astype(np.float32)
            )
            n += len(got)
        assert n == int(shapely.intersects_xy(region, truth.cells[:, 0], truth.cells[:, 1]).sum())

        # a region beyond QuPath's image (the cropped bounds) is clipped to it
        ann2 = write_qupath_annotations(
            truth,
            tmp_path / "b" / "synth_025.geojson",
            [(1700, 1000, 200, 200)],
            np.random.default_rng(4),
            origin=origin,
            area_box=None,
        )
        with caplog.at_level(logging.WARNING, logger="wsi_ocelot"):
            build_annotated_dataset(
                [slide], ann2, tmp_path / "ds2", _cfg(split=SplitRule(split="train"))
            )
        assert any("extends outside" in r.getMessage() for r in caplog.records)
        for e in read_metadata(tmp_path / "ds2").values():
            assert _box(e, "cell")[0] + _box(e, "cell")[2] <= 256 + 1536

        # annotations made on the uncropped image: outside, with the --no-qupath-crop hint
        ann3 = write_qupath_annotations(
            truth,
            tmp_path / "c" / "synth_025.geojson",
            [(1850, 1000, 150, 150)],
            np.random.default_rng(4),
            area_box=None,
        )
        with pytest.raises(DatasetError, match="outside the image.*--no-qupath-crop"):
            build_annotated_dataset(
                [slide], ann3, tmp_path / "ds3", _cfg(split=SplitRule(split="train"))
            )
        build_annotated_dataset(
            [slide], ann3, tmp_path / "ds3", _cfg(split=SplitRule(split="train"), qupath_crop=False)
        )


# --------------------------------------------------------------------------- errors, one line each


def _one_line(err: Exception, *needles: str) -> str:
    text = str(err)
    assert "\n" not in text and "Fix:" in text, text
    for n in needles:
        assert n in text, text
    return text


def test_no_region_is_an_error(synth_025, tmp_path):
    rng = np.random.default_rng(5)
    ann = _write(
        tmp_path / "synth_025.geojson",
        [qupath_feature(geometry_json(shapely.multipoints([(10, 10), (20, 20)])), "Tumor", rng)],
    )
    with pytest.raises(DatasetError) as exc:
        build_annotated_dataset([synth_025], ann, tmp_path / "ds", _cfg())
    _one_line(exc.value, str(ann), "no region", "rectangle classified Region*")
    assert not (tmp_path / "ds").exists()  # nothing written before every slide is checked


def test_unmapped_class_names_are_listed(synth_025, tmp_path):
    rng = np.random.default_rng(6)
    feats = [
        _region((300, 300, 400, 400), rng),
        qupath_feature(
            geometry_json(shapely.multipoints([(310, 310), (320, 330), (400, 410)])),
            "Lymphocyte",
            rng,
        ),
        qupath_feature(geometry_json(shapely.Point(500, 500)), "Tumour", rng),
    ]
    derived = qupath_feature(geometry_json(shapely.Point(510, 520)), None, rng)
    derived["properties"]["classification"] = {
        "names": ["Tumor", "Positive"],
        "color": [200, 50, 50],
    }  # QuPath ≥ 0.4, derived class
    ann = _write(tmp_path / "ann" / "synth_025.geojson", [*feats, derived])
    with pytest.raises(DatasetError) as exc:
        build_annotated_dataset([synth_025], ann, tmp_path / "ds", _cfg())
    _one_line(
        exc.value,
        "'Lymphocyte' (3 points)",
        "'Tumour' (1 point)",
        "'Tumor: Positive' (1 point)",
        "--class-map",
    )
    # mapped in a class map, the same file builds; the map goes to metadata.json
    cmap = tmp_path / "classes.yaml"
    cmap.write_text(
        "class_map:\n  tumour: [Tumor, Tumour, 'Tumor: Positive']\n  background_cell: [Lymphocyte, Stroma]\n"
    )
    cm = load_class_map(cmap)
    assert cm.tumour == ("Tumor", "Tumour", "Tumor: Positive") and cm.cancer_area == ("Tumor",)
    build_annotated_dataset(
        [synth_025], ann, tmp_path / "ds", _cfg(class_map=cm, split=SplitRule(split="train"))
    )
    data = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    assert data["general_info"]["class_map"]["background_cell"] == ["Lymphocyte", "Stroma"]
    rows = np.concatenate(
        [
            read_cell_csv(p)
            for p in sorted((tmp_path / "ds" / "annotations" / "train" / "cell").glob("*.csv"))
        ]
    )
    assert sorted(rows[:, 2].tolist()) == [1, 1, 1, 2, 2]
    # a bad class map is one line too
    bad = tmp_path / "bad.yaml"
    bad.write_text("tumour: Tumor\nstroma: [Stroma]\n")
    with pytest.raises(ConfigError) as exc:
        load_class_map(bad)
    _one_line(exc.value, str(bad))
    # with background_area listed, a polygon class outside the map is an error too
    necrosis = _write(
        tmp_path / "n.geojson",
        [
            _region((300, 300, 400, 400), rng),
            qupath_feature(geometry_json(shapely.box(0, 0, 50, 50)), "Necrosis", rng),
        ],
    )
    with pytest.raises(DatasetError, match="'Necrosis' \\(1 polygon\\)"):
        read_slide_annotations(necrosis, ClassMap(background_area=("Stroma",)))
    assert not read_slide_annotations(
        necrosis
    ).background_area.is_empty  # by default: background area
    with pytest.raises(ConfigError, match="both tumour and background_cell"):
        ClassMap(tumour=("Tumor",), background_cell=("Tumor",))


def test_annotations_outside_the_slide_are_an_error(synth_025, tmp_path):
    rng = np.random.default_rng(7)
    ann = _write(tmp_path / "synth_025.geojson", [_region((5000, 5000, 300, 300), rng)])
    with pytest.raises(DatasetError) as exc:
        build_annotated_dataset([synth_025], ann, tmp_path / "ds", _cfg())
    _one_line(exc.value, "region 1", "outside the image of synth_025.tiff")


def test_a_folder_without_the_slide_is_an_error(synth_025, tmp_path):
    (tmp_path / "ann").mkdir()
    _write(
        tmp_path / "ann" / "other_slide.geojson",
        [_region((300, 300, 300, 300), np.random.default_rng(8))],
    )
    with pytest.raises(DatasetError) as exc:
        build_annotated_dataset([synth_025], tmp_path / "ann", tmp_path / "ds", _cfg())
    _one_line(exc.value, "no synth_025.geojson", "<slide stem>.geojson")


@pytest.mark.parametrize(
    "content, needle",
    [
        (
            b'{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Poly',
            "not a readable GeoJSON",
        ),
        (b'{"type": "Topology"}', "not a FeatureCollection"),
        (
            b'[{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[1,2]]},"properties":{}}]',
            "geometry cannot be read",
        ),
    ],
)
def test_a_broken_geojson_is_an_error(synth_025, tmp_path, content, needle):
    ann = tmp_path / "synth_025.geojson"
    ann.write_bytes(content)
    with pytest.raises(DatasetError) as exc:
        build_annotated_dataset([synth_025], ann, tmp_path / "ds", _cfg())
    _one_line(exc.value, str(ann), needle)


def test_other_top_levels_and_gzip(tmp_path):
    rng = np.random.default_rng(9)
    feats = [
        _region((10, 10, 100, 100), rng),
        qupath_feature(geometry_json(shapely.multipoints([(20, 20), (30, 30)])), "Tumor", rng),
    ]
    plain = _write(tmp_path / "a.geojson", feats)
    gz = _write(tmp_path / "a.geojson.gz", feats)
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()
    array = tmp_path / "b.json"
    array.write_text(
        dumps_qupath(feats, feature_collection=False)
    )  # QuPath without its FeatureCollection option
    single = tmp_path / "c.geojson"
    single.write_text(json.dumps(json.loads(plain.read_text())["features"][0]))
    for path, n in ((plain, 2), (gz, 2), (array, 2), (single, 1)):
        anns, skipped = read_qupath_geojson(path)
        assert len(anns) == n and not skipped
    got = read_slide_annotations(gz, image_box=(0, 0, 500, 500))
    assert len(got.regions) == 1 and got.cells[:, 2].tolist() == [2, 2]


# --------------------------------------------------------------------------- splits


def test_split_rule():
    regions = {f"s{i}": [1, 2] for i in range(6)}
    a = SplitRule().assign(regions)
    b = SplitRule().assign(dict(reversed(list(regions.items()))))
    assert a == b  # by a hash of the names, not their order
    val = {s for (s, _), sp in a.items() if sp == "val"}
    assert len(val) == 1  # round(6 × 0.2)
    assert all(a[(s, 1)] == a[(s, 2)] for s in regions)  # a slide's regions stay together
    named = SplitRule(val_slides=("s1",), test_slides=("s2.tiff",)).assign(
        regions, {s: {s, f"{s}.tiff"} for s in regions}
    )
    assert named[("s1", 1)] == "val" and named[("s2", 2)] == "test" and named[("s3", 1)] == "train"
    test_only = SplitRule(test_slides=("s2",)).assign(regions)
    assert (
        sum(sp == "val" for sp in test_only.values()) == 2 and test_only[("s2", 1)] == "test"
    )  # val still drawn from the rest
    assert set(SplitRule().assign({"one": [1, 2, 3]}).values()) == {"train"}
    by_region = SplitRule(by_region=True, val_fraction=0.34).assign({"one": [1, 2, 3]})
    assert sorted(by_region.values()) == ["train", "train", "val"]
    with pytest.raises(ConfigError, match="not one of this call's slides"):
        SplitRule(val_slides=("nope",)).assign(regions)
    with pytest.raises(ConfigError):
        SplitRule(split="train", val_slides=("s1",))


def test_two_slides_split_by_slide_and_append(truth, synth_025, synth_05, tmp_path, caplog):
    t05 = make_synthetic_slide(mpp=0.5, size=(1024, 1024), seed=12)
    ann = tmp_path / "ann"
    write_qupath_annotations(
        truth, ann / "synth_025.geojson", [REGIONS[0]], np.random.default_rng(10)
    )
    write_qupath_annotations(
        t05, ann / "synth_05.geojson", [(200, 200, 300, 250)], np.random.default_rng(11)
    )
    res = build_annotated_dataset([synth_025, synth_05], ann, tmp_path / "ds", _cfg())
    assert (
        sorted(res.splits["train"] + res.splits["val"]) == ["synth_025", "synth_05"]
        and len(res.splits["val"]) == 1
    )
    for split in ("train", "val"):
        assert {
            read_metadata(tmp_path / "ds")[r.id]["slide_name"]
            for r in list_pairs(tmp_path / "ds", split)
        } == set(res.splits[split])

    # one slide per call, the held-out slide added to the same dataset with --append
    first = build_annotated_dataset(
        [synth_025], ann, tmp_path / "ds2", _cfg(split=SplitRule(split="train"))
    )
    with pytest.raises(DatasetError, match="already holds a dataset.*--append"):
        build_annotated_dataset(
            [synth_05], ann, tmp_path / "ds2", _cfg(split=SplitRule(split="val"))
        )
    second = build_annotated_dataset(
        [synth_05], ann, tmp_path / "ds2", _cfg(split=SplitRule(split="val")), append=True
    )
    assert min(second.pairs) > max(first.pairs)
    meta = json.loads((tmp_path / "ds2" / "metadata.json").read_text())
    assert meta["general_info"]["splits"]["train"] == ["synth_025"] and meta["general_info"][
        "splits"
    ]["val"] == ["synth_05"]
    assert set(meta["general_info"]["annotations"]) == {"synth_025", "synth_05"}
    assert len(list_pairs(tmp_path / "ds2", "train")) == len(first.pairs) and len(
        list_pairs(tmp_path / "ds2", "val")
    ) == len(second.pairs)
    with pytest.raises(DatasetError, match="already in the dataset"):
        build_annotated_dataset(
            [synth_05], ann, tmp_path / "ds2", _cfg(split=SplitRule(split="test")), append=True
        )
    with pytest.raises(DatasetError, match="another geometry|geometry"):
        other = dataclasses.replace(GEO, tile_size=64, cell_margin=8, tissue_margin=8)
        build_annotated_dataset(
            [synth_025], ann, tmp_path / "ds2", AnnotatedTilingConfig(geometry=other), append=True
        )

    # one slide, split by slide: everything trains, and the log says why there is no val
    with caplog.at_level(logging.WARNING, logger="wsi_ocelot"):
        build_annotated_dataset([synth_025], ann, tmp_path / "ds3", _cfg())
    assert any(
        "no val split" in r.getMessage() and "--split-by-region" in r.getMessage()
        for r in caplog.records
    )


# --------------------------------------------------------------------------- the command line


def test_cli_builds_with_the_geometry_of_a_checkpoint(truth, synth_025, tmp_path, capsys):
    pytest.importorskip("torch")
    from wsi_ocelot.model import read_checkpoint_info
    from wsi_ocelot.weights import demo_path

    ann = write_qupath_annotations(
        truth, tmp_path / "ann" / "synth_025.geojson", [REGIONS[0]], np.random.default_rng(12)
    )
    out = tmp_path / "ds"
    code = main(
        [
            "tiles",
            str(synth_025),
            "--annotations",
            str(ann.parent),
            "--like",
            "demo",
            "--tile-size",
            "128",
            "--out",
            str(out),
            "--split",
            "train",
            "--offsets",
            "ocelot",
        ]
    )
    assert code == 0
    said = capsys.readouterr().out
    assert "wrote" in said and "train" in said
    gi = json.loads((out / "metadata.json").read_text())["general_info"]
    demo = read_checkpoint_info(demo_path()).geometry
    assert (
        gi["geometry"]["cell_mpp"] == demo.cell_mpp
        and gi["geometry"]["tile_size"] == 128
        and gi["geometry_from"] == "demo"
    )
    offs = {(r.offset) for r in list_pairs(out, "train")}
    assert offs <= {(a, b) for a in (0.125, 0.625) for b in (0.125, 0.625)}


def test_cli_errors_are_one_line(synth_025, tmp_path, capsys):
    rng = np.random.default_rng(13)
    ann = _write(
        tmp_path / "ann" / "synth_025.geojson",
        [qupath_feature(geometry_json(shapely.Point(5, 5)), "Tumor", rng)],
    )
    for argv, needle in (
        (["--annotations", str(ann)], "no region"),
        (
            ["--annotations", str(ann), "--like", "demo", "--geometry", "g.yaml"],
            "--like and --geometry",
        ),
        (["--val-slides", "x"], "only apply with --annotations"),
        (["--annotations", str(ann), "--split", "val", "--val-slides", "x"], "--split"),
    ):
        code = main(["tiles", str(synth_025), "--out", str(tmp_path / "o"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len([ln for ln in err if ln.startswith("error:")]) == 1, err
        assert needle in err[-1] and "Fix:" in err[-1] and "Traceback" not in "\n".join(err)


def test_cell_mask_errors_name_the_file_and_the_fix(tmp_path):
    """A cell mask of another size than its cell image, or with a value other than 0/1, is one
    DatasetError naming the PNG (the check training and evaluation share)."""
    p = tmp_path / "001.png"
    Image.fromarray(np.ones((8, 6), np.uint8)).save(p)
    assert read_cell_mask(p, shape=(8, 6)).all()
    with pytest.raises(DatasetError) as err:
        read_cell_mask(p, shape=(8, 8))
    assert err.value.one_line() == (
        f"{p}: cell mask is 6×8 px, the cell image 8×8. "
        "Fix: use the mask that belongs to this cell image (same size, cell-patch px)"
    )
    Image.fromarray(np.full((8, 6), 7, np.uint8)).save(p)
    with pytest.raises(DatasetError, match=r"001\.png: cell mask holds value\(s\) \[7\]"):
        read_cell_mask(p)
